"""erasure_audit.stores: which stores a request was sent to, or reported done

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 23:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('erasure_audit') as batch:
        batch.add_column(sa.Column('stores', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('erasure_audit') as batch:
        batch.drop_column('stores')
