"""What a unit of work holds until it commits: rows staged for one multi-row INSERT per table,
writes to run before them, checks to run before a snapshot's writes, rows prefetched by key
(``shared.db.bulk.prefetch_rows``), and the transaction's one "now"."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession


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
