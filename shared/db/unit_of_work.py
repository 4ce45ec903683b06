"""``Database``: a service's engines and its units of work (the edge owns the transaction;
services and repositories only add, stage and flush)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from sqlalchemy import Table, bindparam, exc, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.bulk import insert_many
from shared.db.compiled import driver_parameters
from shared.db.engine import is_sqlite, server_engine, sqlite_engine, sqlite_file
from shared.db.sqlite_writes import SqliteBatchWriter, staged_statements


async def flush_inserts(session: AsyncSession) -> list[Table]:
    """Write what the unit of work staged; the tables that staged rows went to."""
    writes = session.info.pop("before_inserts", None)
    pending = session.info.pop("bulk_inserts", None)
    if writes or pending:
        await session.flush()  # ORM objects first: staged rows may refer to them
    for write in (writes or {}).values():
        await write(session)
    for table, rows in (pending or {}).items():
        await insert_many(session, table, rows)
    return [table for table, rows in (pending or {}).items() if rows]


class InsertListener(Protocol):
    """Told of the rows inserted into a table (``Database.listen``), e.g. an outbox's relay."""

    def inserted(self, rows: list[dict], first_id: int) -> None:
        """``rows`` were committed, in order, with the integer keys ``first_id``, ``first_id + 1`` …"""

    def inserted_unseen(self) -> None:
        """Rows were committed that ``inserted`` was not told of."""


class Database:
    """One database of a service: a writer engine and (on SQLite) a separate reader engine."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        if self.sqlite:
            self.engine = sqlite_engine(url, immediate=True)
            self.read_engine = sqlite_engine(url, immediate=False)
        else:
            self.engine = server_engine(url, pool_size=pool_size, echo=echo)
            self.read_engine = self.engine
        # SQLite has one writer at a time; queueing this process's writers here avoids the
        # busy handler's sleeps (up to 100 ms each) when two of our own connections collide.
        self._write_lock = asyncio.Lock() if self.sqlite else None
        path = sqlite_file(url)
        self.batch_writer = SqliteBatchWriter(path) if path else None
        self._listeners: dict[Table, InsertListener] = {}
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._staging_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A transaction committed once on success, rolled back on any error.

        The edge (route, handler) owns it; services and repositories only add and flush.
        """
        if self._write_lock is None:
            async with self._sessions() as session:
                async with session.begin():
                    yield session
                    written = await flush_inserts(session)
        else:
            async with self._write_lock:
                if self.batch_writer is not None:
                    await self.batch_writer.flush()  # deferred writes come before any later one
                async with self._sessions() as session:
                    async with session.begin():
                        yield session
                        written = await flush_inserts(session)
                if self.batch_writer is not None:
                    self.batch_writer.checkpointer.written()
        for table in written:
            if table in self._listeners:
                self._listeners[table].inserted_unseen()

    @asynccontextmanager
    async def snapshot_unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that reads without holding SQLite's write lock.

        SQLite has one writer at a time, and ``unit_of_work`` takes the write lock when it
        begins (``BEGIN IMMEDIATE``), so processes whose transactions compute for long (a
        qualification worker's batch: about a second) would run one after the other.
        Here the work reads in a snapshot (a deferred transaction of the read engine) and
        only stages its writes (``stage_insert``, ``before_inserts``); then one transaction
        of the writer engine takes the lock, runs the checks the work registered
        (``check_before_write``: has anything it read changed since?) and writes. The
        processes compute at once and take turns only to write. A check that finds the
        snapshot stale raises ``WriteConflict`` and nothing is written: the caller runs the
        work again. On PostgreSQL (row locks: the work reads ``FOR UPDATE``) it is
        ``unit_of_work``, and the checks are not needed; so it is on an in-memory SQLite
        database, which only one connection sees.
        """
        if not self.sqlite or self.batch_writer is None:
            async with self.unit_of_work() as session:
                yield session
            return
        async with self._staging_sessions() as reading:
            async with reading.begin():
                yield reading
                if reading.new or reading.dirty or reading.deleted:
                    raise RuntimeError("a snapshot unit of work writes only what it stages (stage_insert, "
                                       "before_inserts), never ORM objects")
                staged = dict(reading.info)
        async with self.unit_of_work() as writing:
            writing.info.update(staged)
            for check in writing.info.pop("write_checks", {}).values():
                await check(writing)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (never blocks writers on SQLite's WAL)."""
        async with self._read_sessions() as session:
            async with session.begin():
                yield session

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[AsyncSession]:
        """A session that reads what is committed and never writes: nothing in it is flushed,
        and it ends rolled back. Units of work stage inserts in it for ``write_staged``."""
        async with self._staging_sessions() as session:
            yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def listen(self, table: Table, listener: InsertListener) -> None:
        """Tell ``listener`` of every row this process commits into ``table`` (a table whose
        integer primary key SQLite assigns: its rowid, as an outbox's)."""
        self._listeners[table] = listener

    async def write_staged(self, session: AsyncSession) -> bool:
        """Write what ``session`` (a staging one) staged in one transaction of the batch
        writer; ``False`` (nothing written) when only a unit of work can write it."""
        statements = staged_statements(session, self.engine.dialect)
        if statements is None:
            return False
        if statements:
            async with self._write_lock:
                last_ids = await self.batch_writer.write([bound for _, _, bound in statements])
            for (table, rows, _), last_id in zip(statements, last_ids):
                if table in self._listeners:
                    self._listeners[table].inserted(rows, last_id - len(rows) + 1)
        return True

    async def update_later(self, table: Table, key: str, keys: Sequence, values: dict) -> None:
        """``UPDATE table SET values WHERE key IN keys``, for an update that may wait and may
        even be lost without harm (see ``SqliteBatchWriter.defer``): on SQLite it goes with the
        batch writer's next transaction (``flush`` before reading what it changes), elsewhere
        in a transaction of its own."""
        if not keys:
            return
        if self.batch_writer is not None:
            bound = driver_parameters(self.engine.dialect, "update", table, [{**values, "_key": k} for k in keys],
                                       lambda: update(table).where(table.c[key] == bindparam("_key")), {})
            if bound is not None:
                self.batch_writer.defer(bound)
                return
        async with self.unit_of_work() as session:
            await session.execute(update(table).where(table.c[key].in_(keys)).values(**values))

    async def flush(self) -> None:
        """Write what the batch writer deferred (``update_later``)."""
        if self.batch_writer is not None and self.batch_writer.pending:
            async with self._write_lock:
                await self.batch_writer.flush()

    async def dispose(self) -> None:
        if self.batch_writer is not None:
            try:
                await self.flush()
            except exc.SQLAlchemyError:
                pass  # deferred marks of published outbox rows: those rows are published again
            await self.batch_writer.close()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
