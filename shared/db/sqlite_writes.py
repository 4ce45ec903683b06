"""The SQLite group commit: the write path of a SQLite file's ``Database`` (``SqliteWrites``,
behind ``shared.db.unit_of_work.WritePath`` as the plain path is), one optional piece. Units of
work read in a snapshot and stage their rows; a batch writer writes a whole transaction of
them in one hand-off to a thread of its own; updates that may wait go with its next
transaction; another thread copies the write-ahead log back into the database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import structlog
from sqlalchemy import Table, exc, insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.bulk import update_statement
from shared.db.compiled import driver_parameters
from shared.db.engine import WAL_AUTOCHECKPOINT_PAGES, sqlite_pragmas
from shared.db.staging import adopt, staging_of

if TYPE_CHECKING:
    from shared.db.unit_of_work import Database, OnlyIf, Work

T = TypeVar("T")

log = structlog.get_logger("db")


class WalCheckpointer:
    """Copies a SQLite file's write-ahead log back into the database from a thread of its own.

    By default SQLite does that inside the commit that takes the log past 1,000 pages: under
    capture's stream of group commits about one commit in fifteen stalled for 20-30 ms writing
    ~4 MB back, and every request waiting on it with it. Here a ``PASSIVE`` checkpoint (it
    never blocks a writer or a reader) runs ``INTERVAL_S`` after a commit, so commits only
    append to the log; SQLite's own checkpoint stays as the safety net at ``FALLBACK_PAGES``
    (~40 MB of log), for a thread that falls behind or another process's writes. Durability is
    the log's, unchanged."""

    INTERVAL_S = 0.1
    FALLBACK_PAGES = WAL_AUTOCHECKPOINT_PAGES

    def __init__(self, path: str) -> None:
        self.path = path
        self.checkpoints = 0
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def written(self) -> None:
        """A commit appended to the log (from the batch writer's thread or the event loop's)."""
        if self._thread is None:
            with self._started:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
                    self._thread.start()
        self._dirty.set()

    def _run(self) -> None:
        connection = None
        try:
            while not self._stop.is_set():
                self._dirty.wait()
                if self._stop.wait(self.INTERVAL_S):  # let a few more commits append first
                    return
                self._dirty.clear()
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, timeout=5, isolation_level=None,
                                                     check_same_thread=False)
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as error:
                    # a locked or vanished file: the writer's own checkpoint covers for it
                    log.debug("background checkpoint failed", path=self.path, error=repr(error))
                    if connection is not None:
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class SqliteBatchWriter:
    """Writes a whole transaction of bulk inserts in one hand-off to a thread of its own:
    ``BEGIN IMMEDIATE``, one executemany per table, ``COMMIT``.

    Through SQLAlchemy's aiosqlite adapter the same transaction takes about eleven trips to
    aiosqlite's thread (a cursor opened and closed around each statement, the begin, the
    commit, the pool's reset). Each trip is a wake-up of the event loop, and a group commit
    is a serial path: every wake-up waits behind the requests ready to run, while those
    requests wait for the commit. The SQL and its parameters are still SQLAlchemy's (the
    compiled statements and the column types' bind processors, as ``insert_many``), and
    errors are raised as SQLAlchemy's (``IntegrityError`` …)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-batch-writer")
        self._connection: sqlite3.Connection | None = None
        self._deferred: list[tuple[str, list[tuple]]] = []
        self.busy_timeout_ms = 30000  # as the engines': how long a write waits for another's lock
        self.checkpointer = WalCheckpointer(path)
        self._closed = False

    def defer(self, statement: tuple[str, list[tuple]]) -> None:
        """Write ``statement`` at the start of the next transaction (``write`` or ``flush``):
        for writes worth no transaction of their own, that may wait a moment and may even be
        lost without harm (the outbox's marks of published rows: a lost one only means the
        row is published again)."""
        self._deferred.append(statement)

    @property
    def pending(self) -> bool:
        return bool(self._deferred)

    async def flush(self) -> None:
        """Write what was deferred, if anything."""
        if self._deferred:
            await self.write([])

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                         check_same_thread=False)
            sqlite_pragmas(connection, self.busy_timeout_ms)
            self._connection = connection
        return self._connection

    def _write(self, statements: list[tuple[str, list[tuple]]]) -> list[int | None]:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            last_ids = []
            for sql, values in statements:
                connection.executemany(sql, values)
                # an executemany INSERT numbers its rows one after another (this transaction
                # holds the write lock), so the last rowid gives all of them
                last_ids.append(connection.execute("SELECT last_insert_rowid()").fetchone()[0]
                                if sql.startswith("INSERT") else None)
            connection.execute("COMMIT")
            self.checkpointer.written()
            return last_ids
        except BaseException:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    # the connection is unusable: the next write opens another one
                    self._close()
            raise

    async def write(self, statements: list[tuple[str, list[tuple]]]) -> list[int | None]:
        """Write what was deferred and ``statements`` in one transaction; the last rowid of
        each of ``statements`` that is an INSERT (else ``None``)."""
        deferred, self._deferred = self._deferred, []
        try:
            last_ids = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._write, deferred + statements)
        except BaseException as error:
            if statements:
                # the transaction may have failed for its own statements: the deferred go with
                # the next; a flush that fails on them alone drops them (see ``defer``)
                self._deferred[:0] = deferred
            if isinstance(error, sqlite3.Error):
                raise exc.DBAPIError.instance(
                    "; ".join(sql for sql, _ in statements), None, error, sqlite3.Error
                ) from error
            raise
        return last_ids[len(deferred):]

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def disconnect(self) -> None:
        """Close the connection (the next write opens another, e.g. with a new busy timeout).

        Always in the writer's thread, after the writes handed to it before: checked here, the
        connection a write in flight was still opening (with the old busy timeout) looked absent
        and stayed open for the writes after. A closed writer has no connection left."""
        if self._closed:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)

    async def close(self) -> None:
        """Close the connection and the writer's thread; closing again does nothing (a
        database disposed twice)."""
        if self._closed:
            return
        await self.disconnect()
        self._closed = True
        self._executor.shutdown(wait=False)
        self.checkpointer.stop()


def staged_statements(session: AsyncSession, dialect) -> list[tuple[Table, list[dict], tuple]] | None:  # noqa: ANN001
    """Each table's rows staged with ``stage_insert`` in this unit of work and the driver's
    statement for them, or ``None`` if it holds anything else to write (ORM objects,
    ``before_inserts`` writes, rows SQLAlchemy must complete itself)."""
    staging = staging_of(session)
    if session.new or session.dirty or session.deleted or staging.before_inserts:
        return None
    statements, memo = [], {}
    for table, rows in staging.inserts.items():
        if rows:
            bound = driver_parameters(dialect, "insert", table, rows, lambda table=table: insert(table), memo)
            if bound is None:
                return None
            statements.append((table, rows, bound))
    return statements


class SqliteWrites:
    """The write path of a SQLite file (``shared.db.unit_of_work.WritePath``): snapshot units
    of work, group commits written by the batch writer, deferred updates, the checkpointer."""

    tells_inserts = True

    def __init__(self, db: Database, path: str) -> None:
        self.db = db
        self.batch_writer = SqliteBatchWriter(path)

    async def before_unit_of_work(self) -> None:
        await self.batch_writer.flush()  # deferred writes come before any later one

    def after_unit_of_work(self) -> None:
        self.batch_writer.checkpointer.written()

    @asynccontextmanager
    async def snapshot_unit_of_work(self) -> AsyncIterator[AsyncSession]:
        async with self.db.staging() as reading:
            async with reading.begin():
                yield reading
                if reading.new or reading.dirty or reading.deleted:
                    raise RuntimeError("a snapshot unit of work writes only what it stages (stage_insert, "
                                       "before_inserts), never ORM objects")
                staged = staging_of(reading)
        async with self.db.unit_of_work() as writing:
            adopt(writing, staged)
            for check in staged.take_checks():
                await check(writing)

    async def commit_batch(self, work: Work[T]) -> T:
        async with self.db.staging() as session:
            result = await work(session)
            if await self._write_staged(session):
                return result
        # anything but staged inserts goes through a unit of work
        async with self.db.unit_of_work() as session:
            return await work(session)

    async def _write_staged(self, session: AsyncSession) -> bool:
        """Write what ``session`` (a staging one) staged in one transaction of the batch
        writer; ``False`` (nothing written) when only a unit of work can write it."""
        statements = staged_statements(session, self.db.engine.dialect)
        if statements is None:
            return False
        if statements:
            async with self.db.write_lock:
                last_ids = await self.batch_writer.write([bound for _, _, bound in statements])
            for (table, rows, _), last_id in zip(statements, last_ids):
                self.db.tell_inserted(table, rows, last_id - len(rows) + 1)
        return True

    async def update_later(self, table: Table, key: str, keys: Sequence, values: dict,
                           only_if: OnlyIf | None = None) -> None:
        condition, params = only_if if only_if is not None else (None, {})

        def statement():  # noqa: ANN202
            plain = update_statement(table, key)
            return plain if condition is None else plain.where(condition)

        bound = driver_parameters(self.db.engine.dialect, "update", table,
                                  [{**values, **params, "_key": k} for k in keys], statement, {})
        if bound is not None:
            self.batch_writer.defer(bound)
            return
        from shared.db.unit_of_work import update_now  # (it imports this module)

        await update_now(self.db, table, key, keys, values, only_if)  # as the plain path

    async def flush(self) -> None:
        # Under the lock even when nothing waits: a transaction in flight took the deferred
        # writes with it, and a caller reading right after this (the relay, for pending rows)
        # must find them written. Checked before the lock, a relay found the marks of rows it
        # had just published unwritten and published those rows again.
        async with self.db.write_lock:
            if self.batch_writer.pending:
                await self.batch_writer.flush()

    async def close(self) -> None:
        try:
            await self.flush()
        except exc.SQLAlchemyError:
            pass  # deferred marks of published outbox rows: those rows are published again
        await self.batch_writer.close()
