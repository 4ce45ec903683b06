"""``Database``: a service's engines and its units of work (the edge owns the transaction;
use cases and repositories only add, stage and flush), and the interface through which its
writes reach the store (``WritePath``): the plain path here, the SQLite group commit in
``shared.db.sqlite_writes``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Protocol, TypeVar

from sqlalchemy import Table, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from shared.db.bulk import insert_many
from shared.db.engine import is_sqlite, server_engine, sqlite_engine, sqlite_file
from shared.db.sqlite_writes import SqliteWrites
from shared.db.staging import Staging

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]
OnlyIf = tuple[ColumnElement[bool], dict]  # a condition with named parameters, and their values


async def update_now(db: Database, table: Table, key: str, keys: Sequence, values: dict,
                     only_if: OnlyIf | None = None) -> None:
    """``Database.update_later`` in a unit of work of its own, now."""
    statement = update(table).where(table.c[key].in_(keys)).values(**values)
    condition, params = only_if if only_if is not None else (None, {})
    async with db.unit_of_work() as session:
        await session.execute(statement if condition is None else statement.where(condition), params)


async def flush_inserts(session: AsyncSession) -> list[Table]:
    """Write what the unit of work staged; the tables that staged rows went to."""
    staging = session.info.get(Staging)
    if staging is None:
        return []
    writes, pending = staging.take_writes()
    if writes or pending:
        await session.flush()  # ORM objects first: staged rows may refer to them
    for write in writes.values():
        await write(session)
    for table, rows in pending.items():
        await insert_many(session, table, rows)
    return [table for table, rows in pending.items() if rows]


class InsertListener(Protocol):
    """Told of the rows inserted into a table (``Database.listen``), e.g. an outbox's relay."""

    def inserted(self, rows: list[dict], first_id: int) -> None:
        """``rows`` were committed, in order, with the integer keys ``first_id``, ``first_id + 1`` …"""

    def inserted_unseen(self) -> None:
        """Rows were committed that ``inserted`` was not told of."""


class WritePath(Protocol):
    """How a ``Database``'s writes reach the store. Two implement it and give the same results:
    ``DirectWrites`` (every write in a unit of work: PostgreSQL, in-memory SQLite) and
    ``shared.db.sqlite_writes.SqliteWrites`` (a SQLite file's group commit: snapshot reads, a
    batch's staged rows in one hand-off to a writer thread, deferred updates, a checkpointer).
    Nothing else branches on which one a database has."""

    # whether ``Database.listen``'s listeners are told the rows themselves (``inserted``)
    tells_inserts: bool

    async def before_unit_of_work(self) -> None:
        """Under the write lock, before a unit of work begins (deferred writes go first)."""

    def after_unit_of_work(self) -> None:
        """A unit of work committed."""

    def snapshot_unit_of_work(self) -> AbstractAsyncContextManager[AsyncSession]:
        """See ``Database.snapshot_unit_of_work``."""

    async def commit_batch(self, work: Work[T]) -> T:
        """See ``Database.commit_batch``."""

    async def update_later(self, table: Table, key: str, keys: Sequence, values: dict,
                           only_if: OnlyIf | None = None) -> None:
        """See ``Database.update_later``."""

    async def flush(self) -> None:
        """Write what ``update_later`` deferred."""

    async def close(self) -> None:
        """Write what was deferred (if it can) and release what the path holds."""


class DirectWrites:
    """The plain write path: everything in a unit of work of the writer engine."""

    tells_inserts = False

    def __init__(self, db: Database) -> None:
        self.db = db

    async def before_unit_of_work(self) -> None:
        pass

    def after_unit_of_work(self) -> None:
        pass

    def snapshot_unit_of_work(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self.db.unit_of_work()

    async def commit_batch(self, work: Work[T]) -> T:
        async with self.db.unit_of_work() as session:
            return await work(session)

    async def update_later(self, table: Table, key: str, keys: Sequence, values: dict,
                           only_if: OnlyIf | None = None) -> None:
        await update_now(self.db, table, key, keys, values, only_if)

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Database:
    """One database of a service: a writer engine and (on SQLite) a separate reader engine.

    ``group_writes=False`` keeps a SQLite file on the plain write path (``DirectWrites``)
    instead of its group commit (``SqliteWrites``): the tests compare the two."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False, group_writes: bool = True) -> None:
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
        self.write_lock: AbstractAsyncContextManager = asyncio.Lock() if self.sqlite else nullcontext()
        self._listeners: dict[Table, InsertListener] = {}
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._staging_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)
        path = sqlite_file(url)
        self.writes: WritePath = SqliteWrites(self, path) if path and group_writes else DirectWrites(self)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A transaction committed once on success, rolled back on any error.

        The edge (route, handler) owns it; use cases and repositories only add and flush.
        """
        async with self.write_lock:
            await self.writes.before_unit_of_work()
            async with self._sessions() as session:
                async with session.begin():
                    yield session
                    written = await flush_inserts(session)
            self.writes.after_unit_of_work()
        self.tell_unseen(written)

    def snapshot_unit_of_work(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A unit of work that reads without holding SQLite's write lock.

        SQLite has one writer at a time, and ``unit_of_work`` takes the write lock when it
        begins (``BEGIN IMMEDIATE``), so processes whose transactions compute for long (a
        qualification worker's batch: about a second) would run one after the other.
        On a SQLite file (``SqliteWrites``) the work reads in a snapshot (a deferred
        transaction of the read engine) and only stages its writes (``stage_insert``,
        ``before_inserts``); then one transaction of the writer engine takes the lock, runs
        the checks the work registered (``check_before_write``: has anything it read changed
        since?) and writes. The processes compute at once and take turns only to write. A
        check that finds the snapshot stale raises ``WriteConflict`` and nothing is written:
        the caller runs the work again. On PostgreSQL (row locks: the work reads
        ``FOR UPDATE``) it is ``unit_of_work``, and the checks are not needed; so it is on an
        in-memory SQLite database, which only one connection sees.
        """
        return self.writes.snapshot_unit_of_work()

    async def commit_batch(self, work: Work[T]) -> T:
        """``await work(session)`` in one transaction, committed (a group commit's batch):
        in a unit of work, or, on a SQLite file, read in a snapshot with its staged rows
        written in one hand-off to the batch writer (and in a unit of work, run again, if it
        holds anything else to write). ``work`` may run twice: it must only read and stage."""
        return await self.writes.commit_batch(work)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (never blocks writers on SQLite's WAL)."""
        async with self._read_sessions() as session:
            async with session.begin():
                yield session

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[AsyncSession]:
        """A session that reads what is committed and never writes: nothing in it is flushed,
        and it ends rolled back. Units of work stage inserts in it for a write path to write."""
        async with self._staging_sessions() as session:
            yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def listen(self, table: Table, listener: InsertListener) -> bool:
        """Tell ``listener`` of every row this process commits into ``table`` (a table whose
        integer primary key SQLite assigns: its rowid, as an outbox's): the rows themselves
        where the write path knows them (``inserted``), else that rows were committed
        (``inserted_unseen``). ``False`` (and nothing registered) where the write path never
        knows the rows (``WritePath.tells_inserts``): then nobody could be told them."""
        if not self.writes.tells_inserts:
            return False
        self._listeners[table] = listener
        return True

    def tell_inserted(self, table: Table, rows: list[dict], first_id: int) -> None:
        listener = self._listeners.get(table)
        if listener is not None:
            listener.inserted(rows, first_id)

    def tell_unseen(self, tables: list[Table]) -> None:
        for table in tables:
            listener = self._listeners.get(table)
            if listener is not None:
                listener.inserted_unseen()

    async def update_later(self, table: Table, key: str, keys: Sequence, values: dict,
                           only_if: OnlyIf | None = None) -> None:
        """``UPDATE table SET values WHERE key IN keys``, for an update that may wait and may
        even be lost without harm (see ``SqliteBatchWriter.defer``): on a SQLite file it goes
        with the batch writer's next transaction (``flush`` before reading what it changes),
        elsewhere in a transaction of its own. ``only_if``: a condition (with named parameters,
        and their values) that must still hold when the update is written, e.g. an outbox
        lease's fence."""
        if keys:
            await self.writes.update_later(table, key, keys, values, only_if)

    async def flush(self) -> None:
        """Write what ``update_later`` deferred."""
        await self.writes.flush()

    async def dispose(self) -> None:
        await self.writes.close()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
