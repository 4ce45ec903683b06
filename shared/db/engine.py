"""Engines: SQLite with WAL and its pragmas (writers take the lock up front), PostgreSQL via
asyncpg; JSON columns through orjson."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

# SQLite's own checkpoint of the write-ahead log, kept as a safety net: a file database's own
# thread copies the log back (``shared.db.sqlite_writes.WalCheckpointer``), ~40 MB of log.
WAL_AUTOCHECKPOINT_PAGES = 10000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> str | None:
    """The path of a SQLite database's file; ``None`` for an in-memory one or another backend."""
    if not is_sqlite(url):
        return None
    path = make_url(url).database
    return path if path and path != ":memory:" else None


def json_text(value: object) -> str:
    """A JSON column's value as it is stored (the engines' serializer)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (payloads, reasons, firmographics) through orjson: several times faster than json.
JSON_CODEC = {"json_serializer": json_text, "json_deserializer": orjson.loads}


def sqlite_pragmas(cursor, busy_timeout_ms: int = 30000) -> None:  # noqa: ANN001
    """The pragmas of every SQLite connection of ours (the engines' and the batch writer's)."""
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a process crash; only an OS crash may lose the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    # what a write removes is overwritten with zeros, so an erased person's data is not left
    # in free space of the file (an update that moves a record frees its old copy)
    cursor.execute("PRAGMA secure_delete=ON")


def sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    """A SQLite engine; ``immediate``: its transactions take the write lock when they begin."""
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # looked up when called, so tracing's SQLAlchemy instrumentation sees every engine
    engine = sa_asyncio.create_async_engine(url, connect_args={"timeout": 30}, **JSON_CODEC)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Take transaction control from the driver so BEGIN IMMEDIATE below is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        sqlite_pragmas(cur)
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Writers take the write lock up front: a deferred transaction that upgrades to
        # a write can fail with SQLITE_BUSY at once instead of waiting for busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def broken_connection(context) -> None:  # noqa: ANN001
    """``handle_error``: asyncpg answers a connection that broke in the middle of an operation
    (terminated by the server, say) with ``InternalClientError`` ("cannot switch to state …;
    another operation is in progress"). SQLAlchemy does not take it for a disconnect, so the
    pool would hand that connection out again and the error would read as permanent (a
    consumer would dead-letter the message). Marked a disconnect, the connection is discarded
    and the error is transient (``connection_invalidated``): the work is retried."""
    if type(context.original_exception).__name__ == "InternalClientError":
        context.is_disconnect = True


def server_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """A PostgreSQL (or other server) engine with a pool of ``pool_size`` (and as many overflow)."""
    engine = sa_asyncio.create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo, **JSON_CODEC
    )
    event.listen(engine.sync_engine, "handle_error", broken_connection)
    return engine
