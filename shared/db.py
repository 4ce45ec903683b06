"""The async SQLAlchemy engine and the unit of work (SQLite with WAL, PostgreSQL via asyncpg)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import structlog
from sqlalchemy import Column, DateTime, Table, bindparam, event, exc, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = structlog.get_logger("db")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


T = TypeVar("T")


def _json_dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (payloads, reasons, firmographics) through orjson: several times faster than json.
JSON_CODEC = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _sqlite_pragmas(cursor, busy_timeout_ms: int = 30000) -> None:  # noqa: ANN001
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a process crash; only an OS crash may lose the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # a file database's own thread copies the log back (WalCheckpointer); this is the safety net
    cursor.execute(f"PRAGMA wal_autocheckpoint={WalCheckpointer.FALLBACK_PAGES}")


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, **JSON_CODEC)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Take transaction control from the driver so BEGIN IMMEDIATE below is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _sqlite_pragmas(cur)
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Writers take the write lock up front: a deferred transaction that upgrades to
        # a write can fail with SQLITE_BUSY at once instead of waiting for busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def in_chunks(values: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """``values`` in slices short enough for one ``IN (...)`` list or one request."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (PostgreSQL's drivers give one; SQLite's does not)."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_unique_violation(exc: BaseException) -> bool:
    """True for an ``IntegrityError`` of a duplicate key (PostgreSQL's SQLSTATE 23505,
    SQLite's UNIQUE or PRIMARY KEY constraint), not of another constraint."""
    code = sqlstate(exc)
    if code is not None:
        return code == "23505"
    orig = getattr(exc, "orig", None)
    return isinstance(orig, sqlite3.IntegrityError) and str(orig).startswith("UNIQUE constraint failed")


def transaction_time(session: AsyncSession) -> datetime:
    """One instant for everything a unit of work records as "now" (``recorded_at``,
    ``updated_at``, an outbox row's ``created_at``), as PostgreSQL's ``now()`` is the
    transaction's start: a batch's rows share it, and on SQLite its text is formatted once."""
    now = session.info.get("transaction_time")
    if now is None:
        now = session.info["transaction_time"] = datetime.now(timezone.utc)
    return now


def stage_insert(session: AsyncSession, table: Table, row: dict) -> None:
    """Queue a row for one multi-row INSERT per table when the unit of work commits.

    Far cheaper than ORM objects on hot paths (capture, outbox); rows keep their order.
    """
    session.info.setdefault("bulk_inserts", {}).setdefault(table, []).append(row)


def staged_rows(session: AsyncSession, table: Table) -> list[dict]:
    """Rows queued by ``stage_insert`` in this unit of work and not yet written."""
    return session.info.get("bulk_inserts", {}).get(table, [])


def _prefetch_slot(key_column: Column) -> str:
    return f"prefetched:{key_column.table.name}.{key_column.name}"


async def prefetch_rows(session: AsyncSession, key_column: Column, keys: Collection[str], *columns: Column) -> None:
    """Look many rows up by a unique column at once (one query per 500 keys) for the rest of
    the transaction: ``prefetched`` then answers ``key -> row`` (``None``: not stored)."""
    known: dict[str, dict | None] = dict.fromkeys(keys)
    for chunk in in_chunks(list(known)):
        rows = await session.execute(select(key_column, *columns).where(key_column.in_(chunk)))
        known |= {row[0]: dict(row._mapping) for row in rows}
    session.info[_prefetch_slot(key_column)] = known


def prefetched(session: AsyncSession, key_column: Column) -> dict[str, dict | None]:
    """What ``prefetch_rows`` found in this transaction by ``key_column`` (empty if it did not run)."""
    return session.info.get(_prefetch_slot(key_column), {})


class WriteConflict(Exception):
    """What a snapshot unit of work read has changed since (another process wrote it): the
    work must run again on a new snapshot. Transient (``shared.consumer.is_transient``)."""


def check_before_write(session: AsyncSession, name: str, check) -> None:  # noqa: ANN001
    """Run ``await check(writer)`` when a snapshot unit of work (``Database.snapshot_unit_of_work``)
    writes: under the write lock, before anything is written, in the writing transaction
    ``writer`` (which sees every commit). ``check`` raises ``WriteConflict`` if what the work
    read in its snapshot has changed since."""
    session.info.setdefault("write_checks", {})[name] = check


def before_inserts(session: AsyncSession, name: str, write) -> None:  # noqa: ANN001
    """Run ``await write(session)`` once when this unit of work commits, after the ORM flush
    and before the staged inserts: rows written with Core that staged rows may refer to."""
    session.info.setdefault("before_inserts", {})[name] = write


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


_PLANS: dict[tuple, tuple | None] = {}


def _plan(dialect, kind: str, table: Table, keys: tuple[str, ...], statement):  # noqa: ANN001, ANN202
    """``statement`` (an INSERT or UPDATE of ``table`` with parameters ``keys``) compiled once
    for ``dialect``: the driver's SQL, a getter of the parameters in order, and the types' bind
    processors by position. ``None`` when SQLAlchemy must build the parameters itself
    (Python-side column defaults, a named paramstyle, escaped names)."""
    slot = (dialect.name, dialect.driver, kind, table, keys)
    if slot not in _PLANS:
        compiled = statement().compile(dialect=dialect, column_keys=list(keys))
        prefetch = getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None)
        if prefetch or compiled.escaped_bind_names or not compiled.positional \
                or set(compiled.positiontup) != set(keys):
            _PLANS[slot] = None
        else:
            processors = compiled._bind_processors  # noqa: SLF001 - the types' own converters
            order = tuple(compiled.positiontup)
            converters = tuple((i, processors[k], _memoizable(dialect, table, k)) for i, k in enumerate(order)
                               if processors.get(k) is not None)
            get = itemgetter(*order) if len(order) > 1 else (lambda row, k=order[0]: (row[k],))
            _PLANS[slot] = (compiled.string, get, converters)
    return _PLANS[slot]


def _memoizable(dialect, table: Table, key: str) -> bool:  # noqa: ANN001
    """SQLite keeps datetimes as text formatted in Python (~3 µs each); a batch writes the
    same instants many times (a fact's time in its touch, score, stage change and contact)."""
    column = table.c.get(key)
    return dialect.name == "sqlite" and column is not None and isinstance(column.type, DateTime)


def _memoized(convert, memo: dict):  # noqa: ANN001, ANN202
    def run(value):  # noqa: ANN001, ANN202
        if type(value) is not datetime:
            return convert(value)
        key = (value, value.utcoffset())  # equal instants in other offsets are other texts
        text = memo.get(key)
        if text is None:
            text = memo[key] = convert(value)
        return text

    return run


def _driver_parameters(dialect, kind: str, table: Table, rows: list[dict], statement,
                       memo: dict) -> tuple[str, list[tuple]] | None:  # noqa: ANN001
    """The driver's SQL and parameter tuples for an executemany of ``rows``, or ``None`` when
    SQLAlchemy must build the parameters itself (see ``_plan``). ``memo`` lives for one
    transaction (formatted datetimes)."""
    plan = _plan(dialect, kind, table, tuple(rows[0]), statement)
    if plan is None:
        return None
    sql, get, converters = plan
    if not converters:
        return sql, [get(row) for row in rows]
    steps = [(i, _memoized(convert, memo) if memoizable else convert) for i, convert, memoizable in converters]
    values = []
    for row in rows:
        value = list(get(row))
        for i, convert in steps:
            value[i] = convert(value[i])
        values.append(tuple(value))
    return sql, values


async def _execute_many(session: AsyncSession, kind: str, table: Table, rows: list[dict],
                        statement) -> None:  # noqa: ANN001
    connection = await session.connection()
    bound = _driver_parameters(connection.dialect, kind, table, rows, statement,
                               session.info.setdefault("bind_memo", {}))
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


async def update_many(session: AsyncSession, table: Table, key: str, rows: list[dict]) -> None:
    """One executemany UPDATE of ``table``: each row sets its other keys where the column
    ``key`` equals the row's ``"_key"`` (as ``insert_many``, without per-row dictionaries)."""
    if rows:
        await _execute_many(session, "update", table, rows,
                            lambda: update(table).where(table.c[key] == bindparam("_key")))


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
    FALLBACK_PAGES = 10000

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
            _sqlite_pragmas(connection, self.busy_timeout_ms)
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
        """Close the connection (the next write opens another, e.g. with a new busy timeout)."""
        if self._connection is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)

    async def close(self) -> None:
        await self.disconnect()
        self._executor.shutdown(wait=False)
        self.checkpointer.stop()


def staged_statements(session: AsyncSession, dialect) -> list[tuple[Table, list[dict], tuple]] | None:  # noqa: ANN001
    """Each table's rows staged with ``stage_insert`` in this unit of work and the driver's
    statement for them, or ``None`` if it holds anything else to write (ORM objects,
    ``before_inserts`` writes, rows SQLAlchemy must complete itself)."""
    if session.new or session.dirty or session.deleted or session.info.get("before_inserts"):
        return None
    statements, memo = [], {}
    for table, rows in session.info.get("bulk_inserts", {}).items():
        if rows:
            bound = _driver_parameters(dialect, "insert", table, rows, lambda table=table: insert(table), memo)
            if bound is None:
                return None
            statements.append((table, rows, bound))
    return statements


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
            self.engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            self.engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo, **JSON_CODEC
            )
            self.read_engine = self.engine
        # SQLite has one writer at a time; queueing this process's writers here avoids the
        # busy handler's sleeps (up to 100 ms each) when two of our own connections collide.
        self._write_lock = asyncio.Lock() if self.sqlite else None
        path = make_url(url).database if self.sqlite else None
        self.batch_writer = SqliteBatchWriter(path) if path and path != ":memory:" else None
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
            bound = _driver_parameters(self.engine.dialect, "update", table, [{**values, "_key": k} for k in keys],
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


# Loop passes a group commit lets run before it takes its batch. Capture, 32 connections, 10 s
# runs on SQLite: 0 → 3,300-3,450 leads/s (228-238 µs of main-thread CPU per lead), 2 → 3,620-3,800,
# 3 → 3,730-3,840 (204-209 µs), 4 → 3,810; a 1 ms linger instead: 3,400 (a timer adds latency
# when idle, a pass does not).
GATHER_YIELDS = 3


class GroupCommit:
    """Group commit: the units of work of many concurrent requests share one transaction.

    Each caller hands over ``work(session)`` and waits until the transaction holding its
    writes has committed, so an answer is still only given after its fact is stored; one
    commit then serves a whole batch (the durable-write cost is paid once per batch). If
    the batch fails, each unit of work is retried alone so one bad request fails alone.

    ``prepare(session, hints)``, if given, runs first in each transaction with the hints the
    batch's callers passed to ``submit`` (e.g. the idempotency keys to look up): one query
    for the batch instead of one per unit of work.

    On SQLite (``Database.batch_writer``) the units of work read in a snapshot and only stage
    inserts, and their rows are written in one hand-off to the batch writer's thread.
    """

    def __init__(self, db: Database, max_batch: int = 256, prepare=None) -> None:  # noqa: ANN001
        self.db, self.max_batch, self.prepare = db, max_batch, prepare
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def submit(self, work, hint=None):  # noqa: ANN001, ANN201
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((work, future, hint))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            for _ in range(GATHER_YIELDS):
                # Let the requests the loop already holds reach the queue: each pass runs what
                # is ready (a request parsed, a response sent and the next one read), so under
                # load a batch grows by what one commit would otherwise leave for the next; idle,
                # a pass costs microseconds.
                await asyncio.sleep(0)
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _work(self, session: AsyncSession, batch) -> list:  # noqa: ANN001
        hints = [hint for _, _, hint in batch if hint is not None]
        if self.prepare is not None and hints:
            await self.prepare(session, hints)
        return [await work(session) for work, _, _ in batch]

    async def _commit(self, batch) -> None:  # noqa: ANN001
        results = None
        try:
            if self.db.batch_writer is not None:
                # anything but staged inserts goes through a unit of work
                async with self.db.staging() as session:
                    staged = await self._work(session, batch)
                    if await self.db.write_staged(session):
                        results = staged
            if results is None:
                async with self.db.unit_of_work() as session:
                    results = await self._work(session, batch)
        except Exception:  # noqa: BLE001 - isolate the failing unit of work
            if len(batch) == 1:
                _, future, _ = batch[0]
                if not future.done():
                    future.set_exception(sys.exc_info()[1])
                return
            for item in batch:
                await self._commit([item])
            return
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

