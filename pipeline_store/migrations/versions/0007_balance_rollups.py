"""motion balance rollups, filled from the contacts, opportunities and touches already stored

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

# The backfill computes what pipeline_store/rollups.py's ``contribution`` gives each stored
# contact, in SQL (a store of millions of contacts migrates in one pass per table).
_SQLITE = {
    'day': "date({})",
    'seconds': "CAST(strftime('%s', {}) AS INTEGER)",
}
_POSTGRESQL = {
    'day': "CAST(({}) AT TIME ZONE 'UTC' AS DATE)",
    'seconds': "CAST(floor(extract(epoch FROM {})) AS BIGINT)",
}


def _backfill() -> None:
    bind = op.get_bind()
    sql = _POSTGRESQL if bind.dialect.name == 'postgresql' else _SQLITE
    first = 'coalesce(c.first_touch_at, c.created_at)'
    day = sql['day'].format(first)
    entry = "coalesce(c.first_touch_motion, CASE WHEN c.motion = 'blended' THEN 'inbound' ELSE c.motion END)"
    opp = ("(SELECT contact_id, "
           "sum(CASE WHEN stage IN ('sql', 'opportunity', 'customer') THEN amount END) AS pipeline_amount, "
           "sum(CASE WHEN stage = 'customer' THEN amount END) AS won_amount "
           "FROM opportunities GROUP BY contact_id)")
    op.execute(
        "INSERT INTO balance_days (day, entry_motion, motion, channel, entrants, fit_ab, sql, won, pipeline_amount, "
        "won_amount) "
        f"SELECT {day}, {entry}, c.motion, coalesce(c.first_touch_channel, ''), count(*), "
        "sum(CASE WHEN c.fit_grade IN ('A', 'B') THEN 1 ELSE 0 END), "
        "sum(CASE WHEN c.sql_at IS NOT NULL OR c.opportunity_at IS NOT NULL OR c.customer_at IS NOT NULL "
        "THEN 1 ELSE 0 END), "
        "sum(CASE WHEN c.customer_at IS NOT NULL THEN 1 ELSE 0 END), "
        "coalesce(sum(o.pipeline_amount), 0), coalesce(sum(o.won_amount), 0) "
        f"FROM contacts c LEFT JOIN {opp} o ON o.contact_id = c.id "
        f"GROUP BY {day}, {entry}, c.motion, coalesce(c.first_touch_channel, '')"
    )
    days = (f"({sql['seconds'].format('c.sql_at')} - {sql['seconds'].format(first)}) / 86400")
    days = f"CASE WHEN {days} < 0 THEN 0 ELSE {days} END"
    op.execute(
        "INSERT INTO balance_days_to_sql (day, entry_motion, motion, days, contacts) "
        f"SELECT {day}, {entry}, c.motion, {days}, count(*) FROM contacts c WHERE c.sql_at IS NOT NULL "
        f"GROUP BY {day}, {entry}, c.motion, {days}"
    )
    touch_day = sql['day'].format('occurred_at')
    op.execute(
        "INSERT INTO balance_effort (day, motion, forms, touches) "
        f"SELECT {touch_day}, motion, "
        "sum(CASE WHEN event_type = 'io.leadstream.lead.captured.v1' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN event_type = 'io.leadstream.touch.recorded.v1' THEN 1 ELSE 0 END) "
        "FROM touches WHERE event_type IN ('io.leadstream.lead.captured.v1', 'io.leadstream.touch.recorded.v1') "
        f"GROUP BY {touch_day}, motion"
    )


def upgrade() -> None:
    op.create_table('balance_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('entry_motion', sa.String(length=10), nullable=False),
    sa.Column('motion', sa.String(length=10), nullable=False),
    sa.Column('channel', sa.String(length=40), nullable=False),
    sa.Column('entrants', BIG, nullable=False),
    sa.Column('fit_ab', BIG, nullable=False),
    sa.Column('sql', BIG, nullable=False),
    sa.Column('won', BIG, nullable=False),
    sa.Column('pipeline_amount', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('won_amount', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.PrimaryKeyConstraint('day', 'entry_motion', 'motion', 'channel')
    )
    op.create_table('balance_days_to_sql',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('entry_motion', sa.String(length=10), nullable=False),
    sa.Column('motion', sa.String(length=10), nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('contacts', BIG, nullable=False),
    sa.PrimaryKeyConstraint('day', 'entry_motion', 'motion', 'days')
    )
    op.create_table('balance_effort',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('motion', sa.String(length=10), nullable=False),
    sa.Column('forms', BIG, nullable=False),
    sa.Column('touches', BIG, nullable=False),
    sa.PrimaryKeyConstraint('day', 'motion')
    )
    # the answer's GROUP BY reads these in order, every counter in the index (bench/balance.py)
    op.create_index('ix_balance_days_grouped', 'balance_days', ['entry_motion', 'motion', 'channel', 'day',
                    'entrants', 'fit_ab', 'sql', 'won', 'pipeline_amount', 'won_amount'])
    op.create_index('ix_balance_days_to_sql_grouped', 'balance_days_to_sql',
                    ['entry_motion', 'motion', 'days', 'day', 'contacts'])
    _backfill()


def downgrade() -> None:
    op.drop_table('balance_effort')
    op.drop_table('balance_days_to_sql')
    op.drop_table('balance_days')
