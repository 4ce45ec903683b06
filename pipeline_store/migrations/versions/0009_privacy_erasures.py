"""privacy: erased subjects (keyed hashes), erasure requests with each store's progress, their audit,
and the inbox of the reports' consumer

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('erased_subjects',
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('erasure_id', sa.String(length=64), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('subject')
    )
    op.create_table('erasure_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sa.String(length=300), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_erasure_requests_subject', 'erasure_requests', ['subject'])
    op.create_index('ix_erasure_requests_requested_at', 'erasure_requests', ['requested_at'])
    op.create_table('erasure_stores',
    sa.Column('erasure_id', sa.String(length=36), nullable=False),
    sa.Column('store', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('records', sa.Integer(), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['erasure_id'], ['erasure_requests.id']),
    sa.PrimaryKeyConstraint('erasure_id', 'store')
    )
    op.create_table('erasure_audit',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('erasure_id', sa.String(length=36), nullable=False),
    sa.Column('actor', sa.String(length=300), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_erasure_audit_erasure_id', 'erasure_audit', ['erasure_id'])
    op.create_index('ix_erasure_audit_at', 'erasure_audit', ['at'])
    op.create_table('privacy_processed_events',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('offset', BIG_ID, nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )


def downgrade() -> None:
    op.drop_table('privacy_processed_events')
    op.drop_index('ix_erasure_audit_at', 'erasure_audit')
    op.drop_index('ix_erasure_audit_erasure_id', 'erasure_audit')
    op.drop_table('erasure_audit')
    op.drop_table('erasure_stores')
    op.drop_index('ix_erasure_requests_requested_at', 'erasure_requests')
    op.drop_index('ix_erasure_requests_subject', 'erasure_requests')
    op.drop_table('erasure_requests')
    op.drop_table('erased_subjects')
