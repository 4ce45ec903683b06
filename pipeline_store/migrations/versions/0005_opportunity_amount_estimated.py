"""opportunities.amount_estimated: the amount is scoring.yaml's expected amount, not sales'

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 15:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('opportunities') as batch:
        batch.add_column(sa.Column('amount_estimated', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('opportunities') as batch:
        batch.drop_column('amount_estimated')
