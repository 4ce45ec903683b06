"""What a unit of work holds until it commits, as one typed object attached to its session
(``staging_of``): rows staged for one multi-row INSERT per table, writes to run before them,
checks to run before a snapshot's writes, rows prefetched by key (``shared.db.bulk``), the
transaction's one "now", and the state repositories keep for the transaction (``state``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Column, Table
from sqlalchemy.ext.asyncio import AsyncSession

S = TypeVar("S")
SessionStep = Callable[[AsyncSession], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Staging:
    """The staging of one unit of work. A snapshot unit of work hands it from the session
    that read to the one that writes (``adopt``)."""

    # rows for one multi-row INSERT per table at commit, in order (``stage_insert``)
    inserts: dict[Table, list[dict]] = field(default_factory=dict)
    # Core writes run at commit before the inserts, by name (``before_inserts``)
    before_inserts: dict[str, SessionStep] = field(default_factory=dict)
    # run in the writing transaction of a snapshot unit of work, by name (``check_before_write``)
    write_checks: dict[str, SessionStep] = field(default_factory=dict)
    # key -> row (``None``: not stored), by the unique column looked up (``prefetch_rows``)
    prefetched: dict[Column, dict[str, dict | None]] = field(default_factory=dict)
    now: datetime | None = None  # ``transaction_time``
    bind_memo: dict = field(default_factory=dict)  # datetimes formatted once (``shared.db.compiled``)
    states: dict[type, Any] = field(default_factory=dict)

    def state(self, kind: type[S]) -> S:
        """The transaction's ``kind`` (a class made without arguments), made on first use:
        what a repository keeps of what it read and changed in this unit of work."""
        found = self.states.get(kind)
        if found is None:
            found = self.states[kind] = kind()
        return found

    def take_writes(self) -> tuple[dict[str, SessionStep], dict[Table, list[dict]]]:
        """The ``before_inserts`` writes and the staged rows, now left to the caller to write."""
        writes, inserts = self.before_inserts, self.inserts
        self.before_inserts, self.inserts = {}, {}
        return writes, inserts

    def take_checks(self) -> list[SessionStep]:
        checks, self.write_checks = self.write_checks, {}
        return list(checks.values())


def staging_of(session: AsyncSession) -> Staging:
    """The session's staging, attached on first use."""
    info = session.info
    staging = info.get(Staging)
    if staging is None:
        staging = info[Staging] = Staging()
    return staging


def adopt(session: AsyncSession, staging: Staging) -> None:
    """Make ``staging`` (another session's) this session's: it writes what that one staged."""
    session.info[Staging] = staging


def transaction_time(session: AsyncSession) -> datetime:
    """One instant for everything a unit of work records as "now" (``recorded_at``,
    ``updated_at``, an outbox row's ``created_at``), as PostgreSQL's ``now()`` is the
    transaction's start: a batch's rows share it, and on SQLite its text is formatted once."""
    staging = staging_of(session)
    if staging.now is None:
        staging.now = datetime.now(timezone.utc)
    return staging.now


def stage_insert(session: AsyncSession, table: Table, row: dict) -> None:
    """Queue a row for one multi-row INSERT per table when the unit of work commits.

    Far cheaper than ORM objects on hot paths (capture, outbox); rows keep their order.
    """
    inserts = staging_of(session).inserts
    rows = inserts.get(table)
    if rows is None:
        rows = inserts[table] = []
    rows.append(row)


def staged_rows(session: AsyncSession, table: Table) -> list[dict]:
    """Rows queued by ``stage_insert`` in this unit of work and not yet written."""
    return staging_of(session).inserts.get(table, [])


def check_before_write(session: AsyncSession, name: str, check: SessionStep) -> None:
    """Run ``await check(writer)`` when a snapshot unit of work (``Database.snapshot_unit_of_work``)
    writes: under the write lock, before anything is written, in the writing transaction
    ``writer`` (which sees every commit). ``check`` raises ``WriteConflict`` if what the work
    read in its snapshot has changed since. (Elsewhere checks are not needed, and not run.)"""
    staging_of(session).write_checks[name] = check


def before_inserts(session: AsyncSession, name: str, write: SessionStep) -> None:
    """Run ``await write(session)`` once when this unit of work commits, after the ORM flush
    and before the staged inserts: rows written with Core that staged rows may refer to."""
    staging_of(session).before_inserts[name] = write
