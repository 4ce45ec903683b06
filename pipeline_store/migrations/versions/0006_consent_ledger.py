"""the consent ledger: per contact, each purpose granted or withdrawn and by which fact

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consent_ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('contact_id', sa.String(length=36), nullable=False),
    sa.Column('purpose', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=250), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cause_event_id', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cause_event_id', 'purpose', name='uq_consent_ledger_cause')
    )
    with op.batch_alter_table('consent_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_consent_ledger_contact', ['contact_id', 'occurred_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consent_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_ledger_contact')
    op.drop_table('consent_ledger')
