"""touches.channel_rules_version: the channels.yaml version that classified an inbound touch

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 16:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # touches classified before the rules were a file have none (the code they were
    # classified by is the shipped file's first version, 2026-12-02.1)
    with op.batch_alter_table('touches') as batch:
        batch.add_column(sa.Column('channel_rules_version', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('touches') as batch:
        batch.drop_column('channel_rules_version')
