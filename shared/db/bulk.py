"""Many rows at once: looked up by key in a few queries (``prefetch_rows``), written in one
executemany INSERT, UPDATE or adding upsert (``add_many``) with the parameters built by the
compiled-statement cache (``shared.db.compiled``)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import TypeVar

from sqlalchemy import Column, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.compiled import driver_parameters
from shared.db.staging import staging_of

T = TypeVar("T")


def in_chunks(values: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """``values`` in slices short enough for one ``IN (...)`` list or one request."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


async def prefetch_rows(session: AsyncSession, key_column: Column, keys: Collection[str], *columns: Column) -> None:
    """Look many rows up by a unique column at once (one query per 500 keys) for the rest of
    the transaction: ``prefetched`` then answers ``key -> row`` (``None``: not stored)."""
    known: dict[str, dict | None] = dict.fromkeys(keys)
    for chunk in in_chunks(list(known)):
        rows = await session.execute(select(key_column, *columns).where(key_column.in_(chunk)))
        names = tuple(rows.keys())
        known |= {row[0]: dict(zip(names, row)) for row in rows}
    staging_of(session).prefetched[key_column] = known


def prefetched(session: AsyncSession, key_column: Column) -> dict[str, dict | None]:
    """What ``prefetch_rows`` found in this transaction by ``key_column`` (empty if it did not run)."""
    return staging_of(session).prefetched.get(key_column, {})


async def _execute_many(session: AsyncSession, kind: str, table: Table, rows: list[dict],
                        statement) -> None:  # noqa: ANN001
    connection = await session.connection()
    bound = driver_parameters(connection.dialect, kind, table, rows, statement,
                              staging_of(session).bind_memo)
    if bound is None:
        await session.execute(statement(), rows)
        return
    await connection.exec_driver_sql(*bound)


async def insert_many(session: AsyncSession, table: Table, rows: list[dict]) -> None:
    """One executemany INSERT of ``rows`` (dicts with the same keys) into ``table``.

    The parameters go to the driver as tuples converted by the column types' own bind
    processors: the same values SQLAlchemy would send, without building its per-row
    parameter dictionaries (the largest cost of bulk writes on hot paths)."""
    if rows:
        await _execute_many(session, "insert", table, rows, lambda: insert(table))


async def insert_missing(session: AsyncSession, table: Table, rows: list[dict], *, key: str) -> None:
    """As ``insert_many``, skipping the rows whose unique ``key`` is already stored
    (``ON CONFLICT DO NOTHING``: another transaction may have inserted it meanwhile)."""
    if rows:
        connection = await session.connection()
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        await _execute_many(session, f"insert-missing:{key}", table, rows,
                            lambda: dialect.insert(table).on_conflict_do_nothing(index_elements=[key]))


def adding_upsert(dialect_name: str, table: Table, columns: Collection[str]):  # noqa: ANN201
    """``INSERT … ON CONFLICT (primary key) DO UPDATE SET c = c + excluded.c`` for each of
    ``columns`` not in the primary key: a row adds its values to the stored row's."""
    keys = [c.key for c in table.primary_key.columns]
    statement = (postgresql if dialect_name == "postgresql" else sqlite).insert(table)
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={name: table.c[name] + statement.excluded[name] for name in columns if name not in keys},
    )


async def add_many(session: AsyncSession, table: Table, rows: list[dict]) -> None:
    """One executemany upsert adding each row's non-key values to the stored row with its
    primary key (inserted when there is none): counters and sums that many writers move
    (rollups). Pass the rows in key order, so two writers lock rows in the same order."""
    if rows:
        name = (await session.connection()).dialect.name
        await _execute_many(session, "add", table, rows, lambda: adding_upsert(name, table, rows[0]))


def update_statement(table: Table, key: str):  # noqa: ANN201
    """``UPDATE table SET … WHERE key = :_key``: each row of ``update_many`` gives ``_key``."""
    return update(table).where(table.c[key] == bindparam("_key"))


async def update_many(session: AsyncSession, table: Table, key: str, rows: list[dict]) -> None:
    """One executemany UPDATE of ``table``: each row sets its other keys where the column
    ``key`` equals the row's ``"_key"`` (as ``insert_many``, without per-row dictionaries)."""
    if rows:
        await _execute_many(session, "update", table, rows, lambda: update_statement(table, key))
