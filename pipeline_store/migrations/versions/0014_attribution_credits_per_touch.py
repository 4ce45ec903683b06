"""attribution credits: one row per counting touch, each model's credit in its column

An opportunity's credits were one row per model and touch, each repeating the touch; they
become one row per (opportunity, touch) holding the touch once and ``credit_<model>`` per
model (NULL: the model does not credit the touch). The rows move: grouped by opportunity
and touch, each model's credit into its column, the touch's place in the counting order
kept (every model credits every counting touch, so their positions agree; otherwise the
touches are numbered again in that order). Downgrading makes a row per model and credited
touch again, each model's touches numbered in order.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

_MODELS = ('first', 'last', 'linear', 'position', 'time_decay', 'w_shaped')
_TOUCH = ('motion', 'channel', 'campaign', 'form_id', 'sequence', 'occurred_at')


def _touch_columns() -> list[sa.Column]:
    return [
        sa.Column('contact_id', sa.String(length=36), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('motion', sa.String(length=10), nullable=False),
        sa.Column('channel', sa.String(length=40), nullable=True),
        sa.Column('campaign', sa.String(length=200), nullable=True),
        sa.Column('form_id', sa.String(length=200), nullable=True),
        sa.Column('sequence', sa.String(length=200), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    ]


def _replace(new: str) -> None:
    """Drop ``attribution_credits`` (its index with it) and give ``new`` its name and index."""
    op.drop_table('attribution_credits')
    op.rename_table(new, 'attribution_credits')
    if op.get_bind().dialect.name == 'postgresql':  # the primary key's name follows the table's
        op.execute(f'ALTER TABLE attribution_credits RENAME CONSTRAINT {new}_pkey TO attribution_credits_pkey')
    with op.batch_alter_table('attribution_credits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attribution_credits_contact_id'), ['contact_id'], unique=False)


def upgrade() -> None:
    op.create_table('attribution_credits_0014',
                    sa.Column('opportunity_id', sa.String(length=36), nullable=False),
                    sa.Column('event_id', sa.String(length=64), nullable=False),
                    *_touch_columns(),
                    *(sa.Column(f'credit_{model}', sa.Float(), nullable=True) for model in _MODELS),
                    sa.PrimaryKeyConstraint('opportunity_id', 'event_id'))
    credits = ', '.join(f'credit_{model}' for model in _MODELS)
    pivot = ', '.join(f"MAX(CASE WHEN model = '{model}' THEN credit END) AS credit_{model}" for model in _MODELS)
    touch = ', '.join(_TOUCH)
    op.execute(
        f'INSERT INTO attribution_credits_0014 (opportunity_id, event_id, contact_id, position, {touch}, {credits}) '
        f'SELECT opportunity_id, event_id, contact_id, '
        f'ROW_NUMBER() OVER (PARTITION BY opportunity_id ORDER BY position, occurred_at, event_id) - 1, '
        f'{touch}, {credits} FROM ('
        f'SELECT opportunity_id, event_id, MAX(contact_id) AS contact_id, MIN(position) AS position, '
        f'{", ".join(f"MAX({name}) AS {name}" for name in _TOUCH)}, {pivot} '
        f'FROM attribution_credits GROUP BY opportunity_id, event_id) AS touches')
    _replace('attribution_credits_0014')


def downgrade() -> None:
    op.create_table('attribution_credits_0013',
                    sa.Column('opportunity_id', sa.String(length=36), nullable=False),
                    sa.Column('model', sa.String(length=20), nullable=False),
                    sa.Column('event_id', sa.String(length=64), nullable=False),
                    *_touch_columns(),
                    sa.Column('credit', sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint('opportunity_id', 'model', 'event_id'))
    touch = ', '.join(_TOUCH)
    for model in _MODELS:
        op.execute(
            f'INSERT INTO attribution_credits_0013 (opportunity_id, model, event_id, contact_id, position, {touch}, '
            f"credit) SELECT opportunity_id, '{model}', event_id, contact_id, "
            f'ROW_NUMBER() OVER (PARTITION BY opportunity_id ORDER BY position) - 1, {touch}, credit_{model} '
            f'FROM attribution_credits WHERE credit_{model} IS NOT NULL')
    _replace('attribution_credits_0013')
