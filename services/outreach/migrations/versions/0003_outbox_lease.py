"""the lease of outreach_outbox: one relay publishes it at a time

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 12:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    lease = op.create_table('outreach_outbox_lease',
    sa.Column('outbox', sa.String(length=200), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=True),
    sa.Column('epoch', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('renewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('outbox')
    )
    # the one row relays take, renew and release with conditional UPDATEs (shared/lease.py)
    op.bulk_insert(lease, [{'outbox': 'outreach_outbox', 'epoch': 0}])


def downgrade() -> None:
    op.drop_table('outreach_outbox_lease')
