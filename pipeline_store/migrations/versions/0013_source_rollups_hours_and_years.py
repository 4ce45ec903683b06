"""source rollups: an hour grain and a year grain (``hour`` joins the key)

Every difference is kept in its hour's, day's, month's and year's rows, so a sources answer
reads whole years from year rows and a date-time bound's partial day from hour rows (the
raw rows only for its partial hours). The rollups are derived data: the tables are made
again with the ``hour`` column in their key and filled from the raw rows (contacts,
opportunities, credits) by ``pipeline_store.source_rollups.rebuild``, as ``leadstream
rescore`` does (minutes for millions of contacts; nothing to do in an empty store). It calls
the code's ``rebuild`` of the day it runs: a later migration that changes these tables or the
raw rows ``rebuild`` reads must give this one a copy of the rebuild it needs.

Downgrading keeps the day and month rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 06:00:00
"""
from collections.abc import Coroutine
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


class _Session:
    """What ``rebuild`` asks of an ``AsyncSession``, over the migration's connection: each
    call answers at once, so the coroutine runs to its end without an event loop."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection
        self.info: dict = {}  # the unit of work's staging (shared.db.staging_of)

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


def upgrade() -> None:
    op.drop_table('qualify_days_rollups')
    op.drop_table('source_rollups')
    _create('', hour=True)
    bind = op.get_bind()
    if bind.execute(sa.text('SELECT 1 FROM contacts LIMIT 1')).first() is not None:
        from pipeline_store.source_rollups import rebuild

        _run(rebuild(_Session(bind)))  # type: ignore[arg-type]


def downgrade() -> None:
    _create('_0012', hour=False)
    key = ('model', 'grain', 'day', *_TOUCH)
    for table, values in (('source_rollups', _METRICS), ('qualify_days_rollups', ('bucket', 'weight', 'days'))):
        columns = ', '.join((*key, *values))
        op.execute(f"INSERT INTO {table}_0012 ({columns}) SELECT {columns} FROM {table} WHERE grain IN ('d', 'm')")
        op.drop_table(table)
        op.rename_table(f'{table}_0012', table)
