"""attribution credits per opportunity and model; source rollups per day, model and key

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 15:40:00

After upgrading a store that already holds contacts, run ``leadstream rescore --policy
deploy/config/scoring.yaml``: it computes the credits and rebuilds the rollups (until then
the sources answer holds only what was applied after the upgrade).
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_KEY = ('model', 'grain', 'day', 'motion', 'channel', 'campaign', 'form_id', 'sequence')


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column('model', sa.String(length=20), nullable=False),
        sa.Column('grain', sa.String(length=1), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('motion', sa.String(length=10), nullable=False),
        sa.Column('channel', sa.String(length=40), nullable=False),
        sa.Column('campaign', sa.String(length=200), nullable=False),
        sa.Column('form_id', sa.String(length=200), nullable=False),
        sa.Column('sequence', sa.String(length=200), nullable=False),
    ]


def upgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mql_event_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_contacts_first_touch_at'), ['first_touch_at'], unique=False)

    op.create_table('attribution_credits',
    sa.Column('opportunity_id', sa.String(length=36), nullable=False),
    sa.Column('model', sa.String(length=20), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('contact_id', sa.String(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('motion', sa.String(length=10), nullable=False),
    sa.Column('channel', sa.String(length=40), nullable=True),
    sa.Column('campaign', sa.String(length=200), nullable=True),
    sa.Column('form_id', sa.String(length=200), nullable=True),
    sa.Column('sequence', sa.String(length=200), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('credit', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('opportunity_id', 'model', 'event_id')
    )
    with op.batch_alter_table('attribution_credits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attribution_credits_contact_id'), ['contact_id'], unique=False)

    metrics = ('contacts', 'leads', 'mql', 'sql', 'opportunities', 'won', 'qualified_opportunities',
               'pipeline_amount', 'pipeline_amounts', 'won_amount', 'won_amounts', 'estimated_pipeline_amount',
               'estimated_pipeline_amounts')
    op.create_table('source_rollups', *_key_columns(),
                    *(sa.Column(name, sa.Float(), nullable=False) for name in metrics),
                    sa.PrimaryKeyConstraint(*_KEY))
    op.create_table('qualify_days_rollups', *_key_columns(),
                    sa.Column('bucket', sa.Integer(), nullable=False),
                    sa.Column('weight', sa.Float(), nullable=False),
                    sa.Column('days', sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint(*_KEY, 'bucket'))


def downgrade() -> None:
    op.drop_table('qualify_days_rollups')
    op.drop_table('source_rollups')
    with op.batch_alter_table('attribution_credits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attribution_credits_contact_id'))
    op.drop_table('attribution_credits')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contacts_first_touch_at'))
        batch_op.drop_column('mql_event_id')
