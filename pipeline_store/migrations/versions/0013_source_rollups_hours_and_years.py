"""source rollups: an hour grain and a year grain (``hour`` joins the key)

Every difference is kept in its hour's, day's, month's and year's rows, so a sources answer
reads whole years from year rows and a date-time bound's partial day from hour rows (the
raw rows only for its partial hours). The rollups are derived data: the tables are made
again with the ``hour`` column in their key and filled from the raw rows (contacts,
opportunities, credits) as ``pipeline_store.source_rollups.rebuild`` does, as ``leadstream
rescore`` does (minutes for millions of contacts; nothing to do in an empty store). It uses
the code's rollup arithmetic (``Rollups``, ``facts_of``, ``write``) and its readers of
contacts and opportunities of the day it runs, but reads the credits as they stand here
(one row per model and touch; 0014 makes them one row per touch): a later migration that
changes these tables or the raw rows read must give this one a copy of what it needs.

Downgrading keeps the day and month rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 06:00:00
"""
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_METRICS = ('contacts', 'leads', 'mql', 'sql', 'opportunities', 'won', 'qualified_opportunities',
            'pipeline_amount', 'pipeline_amounts', 'won_amount', 'won_amounts', 'estimated_pipeline_amount',
            'estimated_pipeline_amounts')
_TOUCH = ('motion', 'channel', 'campaign', 'form_id', 'sequence')


def _key_columns(hour: bool) -> list[sa.Column]:
    return [
        sa.Column('model', sa.String(length=20), nullable=False),
        sa.Column('grain', sa.String(length=1), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        *([sa.Column('hour', sa.Integer(), nullable=False)] if hour else []),
        sa.Column('motion', sa.String(length=10), nullable=False),
        sa.Column('channel', sa.String(length=40), nullable=False),
        sa.Column('campaign', sa.String(length=200), nullable=False),
        sa.Column('form_id', sa.String(length=200), nullable=False),
        sa.Column('sequence', sa.String(length=200), nullable=False),
    ]


def _create(suffix: str, hour: bool) -> None:
    key = ('model', 'grain', 'day', *(('hour',) if hour else ()), *_TOUCH)
    op.create_table(f'source_rollups{suffix}', *_key_columns(hour),
                    *(sa.Column(name, sa.Float(), nullable=False) for name in _METRICS),
                    sa.PrimaryKeyConstraint(*key))
    op.create_table(f'qualify_days_rollups{suffix}', *_key_columns(hour),
                    sa.Column('bucket', sa.Integer(), nullable=False),
                    sa.Column('weight', sa.Float(), nullable=False),
                    sa.Column('days', sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint(*key, 'bucket'))


class _Connection:
    """What ``rebuild``'s writes ask of an ``AsyncConnection`` (``shared.db.bulk``)."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection
        self.dialect = connection.dialect

    async def exec_driver_sql(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.exec_driver_sql(*args, **kwargs)


@dataclass(eq=False)
class _Session:
    """What ``rebuild`` asks of an ``AsyncSession``, over the migration's connection: each
    call answers at once, so the coroutine runs to its end without an event loop."""

    _connection: sa.Connection
    info: dict = field(default_factory=dict)  # for the unit of work's staging (shared.db.staging_of)

    async def connection(self) -> _Connection:
        return _Connection(self._connection)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.execute(*args, **kwargs)


def _run(coroutine: Coroutine) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the rollups rebuild waited on something other than the migration's connection")


# the credits as this revision stores them: one row per model and touch
_CREDITS = sa.table('attribution_credits', sa.column('contact_id', sa.String()), sa.column('model', sa.String()),
                    sa.column('position', sa.Integer()), sa.column('channel', sa.String()),
                    sa.column('campaign', sa.String()), sa.column('form_id', sa.String()),
                    sa.column('sequence', sa.String()), sa.column('credit', sa.Float()))


async def _credits_of(session: _Session, contact_ids: list[str]) -> dict[str, dict[str, list]]:
    """``source_rollups.credits_of`` over this revision's credits: by contact and model, in touch order."""
    from pipeline_store.source_rollups import key_text
    from shared.db import in_chunks

    out: dict[str, dict[str, list]] = {}
    for chunk in in_chunks(contact_ids):
        rows = await session.execute(
            sa.select(_CREDITS.c.contact_id, _CREDITS.c.model, _CREDITS.c.channel, _CREDITS.c.campaign,
                      _CREDITS.c.form_id, _CREDITS.c.sequence, _CREDITS.c.credit)
            .where(_CREDITS.c.contact_id.in_(chunk))
            .order_by(_CREDITS.c.contact_id, _CREDITS.c.model, _CREDITS.c.position))
        for contact_id, model, channel, campaign, form_id, sequence, credit in rows:
            touch = (key_text(channel), key_text(campaign), key_text(form_id), key_text(sequence))
            out.setdefault(contact_id, {}).setdefault(model, []).append((touch, credit))
    return out


async def _rebuild(session: _Session, page: int = 2000) -> None:
    """``source_rollups.rebuild`` into the empty rollups, reading this revision's credits."""
    from pipeline_store.models import Contact
    from pipeline_store.source_rollups import CONTACT_COLUMNS, Rollups, facts_of, opportunities_of, write

    contacts = Contact.__table__
    total, after = Rollups(), None
    while True:
        query = (sa.select(contacts.c.id, *(contacts.c[name] for name in CONTACT_COLUMNS))
                 .order_by(contacts.c.id).limit(page))
        if after is not None:
            query = query.where(contacts.c.id > after)
        rows = (await session.execute(query)).all()
        if not rows:
            break
        after = rows[-1][0]
        ids = [row[0] for row in rows]
        opportunities = await opportunities_of(session, ids)  # type: ignore[arg-type]
        credits = await _credits_of(session, ids)
        for row in rows:
            total.add(facts_of(row._mapping, opportunities.get(row[0], ()), credits.get(row[0])))
    await write(session, total)  # type: ignore[arg-type]


def upgrade() -> None:
    op.drop_table('qualify_days_rollups')
    op.drop_table('source_rollups')
    _create('', hour=True)
    bind = op.get_bind()
    if bind.execute(sa.text('SELECT 1 FROM contacts LIMIT 1')).first() is not None:
        _run(_rebuild(_Session(bind)))


def downgrade() -> None:
    _create('_0012', hour=False)
    key = ('model', 'grain', 'day', *_TOUCH)
    for table, values in (('source_rollups', _METRICS), ('qualify_days_rollups', ('bucket', 'weight', 'days'))):
        columns = ', '.join((*key, *values))
        op.execute(f"INSERT INTO {table}_0012 ({columns}) SELECT {columns} FROM {table} WHERE grain IN ('d', 'm')")
        op.drop_table(table)
        op.rename_table(f'{table}_0012', table)
