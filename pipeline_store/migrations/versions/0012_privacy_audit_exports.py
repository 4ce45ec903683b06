"""erasure_audit.kind: access requests (exports) are audited beside erasures

Rows already there are erasures (server default 'erasure'); an export has no erasure, so
erasure_id becomes nullable. Downgrading deletes the export rows: the old table cannot hold them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 23:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('erasure_audit') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='erasure'))
        batch.alter_column('erasure_id', existing_type=sa.String(length=36), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM erasure_audit WHERE kind <> 'erasure' OR erasure_id IS NULL")
    with op.batch_alter_table('erasure_audit') as batch:
        batch.alter_column('erasure_id', existing_type=sa.String(length=36), nullable=False)
        batch.drop_column('kind')
