"""What a database error means: its SQLSTATE, a duplicate key, a stale snapshot, a failure
that goes away by itself."""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc


class WriteConflict(Exception):
    """What a snapshot unit of work read has changed since (another process wrote it): the
    work must run again on a new snapshot. Transient (``is_transient_db_error``)."""


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (PostgreSQL's drivers give one; SQLite's does not)."""
    orig = getattr(error, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_unique_violation(error: BaseException) -> bool:
    """True for an ``IntegrityError`` of a duplicate key (PostgreSQL's SQLSTATE 23505,
    SQLite's UNIQUE or PRIMARY KEY constraint), not of another constraint."""
    code = sqlstate(error)
    if code is not None:
        return code == "23505"
    orig = getattr(error, "orig", None)
    return isinstance(orig, sqlite3.IntegrityError) and str(orig).startswith("UNIQUE constraint failed")


# PostgreSQL SQLSTATEs worth retrying: connection trouble, serialization/deadlock,
# lock not available, operator intervention (shutdown, terminated backend), resources.
TRANSIENT_SQLSTATE_PREFIXES = ("08", "40001", "40P01", "55P03", "57", "53", "58")


def is_transient_db_error(error: BaseException) -> bool:
    """True for failures of the database (or the way to it) that go away by themselves: busy,
    down, connection lost, a stale snapshot (``WriteConflict``). Never a constraint or bad data."""
    if isinstance(error, (WriteConflict, exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                          exc.TimeoutError, TimeoutError, ConnectionError, OSError)):
        return True
    if isinstance(error, (exc.IntegrityError, exc.DataError, exc.ProgrammingError)):
        return False
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = sqlstate(error)
        if code and code.startswith(TRANSIENT_SQLSTATE_PREFIXES):
            return True
        text = str(error).lower()
        return any(s in text for s in ("connection", "not currently accepting", "database is locked", "shutdown"))
    name = type(error).__name__
    return "Connection" in name or "CannotConnectNow" in name
