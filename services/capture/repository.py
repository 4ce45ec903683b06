"""All SQL of the capture service."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.capture.models import CaptureOutbox, CapturedLead, CaptureSuppression
from shared.db import before_inserts, prefetch_rows, prefetched, stage_insert, staged_rows
from shared.outbox import erase_rows
from shared.privacy import scrub

LEADS = CapturedLead.__table__
SUPPRESSIONS = CaptureSuppression.__table__


async def prefetch_idempotency_keys(session: AsyncSession, keys: Collection[str]) -> None:
    """A group commit's Idempotency-Keys in one query; ``lead_by_idempotency_key`` answers from it."""
    await prefetch_rows(session, LEADS.c.idempotency_key, keys, LEADS.c.event_id, LEADS.c.request_fingerprint)


async def lead_by_idempotency_key(session: AsyncSession, key: str) -> dict | None:
    """The lead stored (or being stored in this unit of work) under an Idempotency-Key."""
    for row in staged_rows(session, LEADS):
        if row.get("idempotency_key") == key:
            return row
    known = prefetched(session, LEADS.c.idempotency_key)
    if key in known:
        return known[key]
    found = (
        await session.execute(
            select(LEADS.c.event_id, LEADS.c.request_fingerprint).where(LEADS.c.idempotency_key == key)
        )
    ).first()
    return dict(found._mapping) if found else None


async def prefetch(session: AsyncSession, hints: Collection[tuple[str | None, str]]) -> None:
    """A group commit's lookups in one query each: its Idempotency-Keys and the subjects of
    its leads on the suppression list (``hints``: ``(idempotency_key, subject)`` pairs)."""
    keys = [key for key, _ in hints if key]
    if keys:
        await prefetch_idempotency_keys(session, keys)
    await prefetch_rows(session, SUPPRESSIONS.c.subject, [subject for _, subject in hints])


async def is_suppressed(session: AsyncSession, subject: str) -> bool:
    """Whether ``subject`` (a keyed hash) is on the suppression list."""
    known = prefetched(session, SUPPRESSIONS.c.subject)
    if subject in known:
        return known[subject] is not None
    found = await session.execute(select(SUPPRESSIONS.c.subject).where(SUPPRESSIONS.c.subject == subject))
    return found.first() is not None


def lift_suppression(session: AsyncSession, subject: str) -> None:
    """Remove ``subject`` from the suppression list when the unit of work commits."""
    async def lift(writer: AsyncSession) -> None:
        await writer.execute(delete(SUPPRESSIONS).where(SUPPRESSIONS.c.subject == subject))

    before_inserts(session, f"capture.lift.{subject}", lift)


async def contact_keys(session: AsyncSession) -> list[str]:
    """Every identity capture holds (an erasure finds its subject among their hashes)."""
    return list((await session.execute(select(LEADS.c.contact_key).distinct())).scalars())


async def erase_leads(session: AsyncSession, contact_keys: list[str], subject: str) -> int:
    """Remove the personal fields of every lead of these identities, and of their outbox
    rows; the lead's form, type, status and times stay, filed under ``subject``. Leads
    dropped while ``subject`` was suppressed (already filed under it) lose their
    idempotency records."""
    dropped = (await session.execute(update(LEADS).where(
        LEADS.c.contact_key == subject, LEADS.c.idempotency_key.is_not(None)
    ).values(idempotency_key=None, request_fingerprint=None))).rowcount or 0
    if not contact_keys:
        return dropped
    rows = (await session.execute(
        select(LEADS.c.event_id, LEADS.c.payload).where(LEADS.c.contact_key.in_(contact_keys))
    )).all()
    for event_id, payload in rows:
        await session.execute(update(LEADS).where(LEADS.c.event_id == event_id).values(
            email="", contact_key=subject, payload=scrub(payload), spam_reason=None, client_address=None,
            idempotency_key=None, request_fingerprint=None,
        ))
    outbox = CaptureOutbox.__table__
    await erase_rows(session, CaptureOutbox, outbox.c.key.in_(contact_keys), key=subject)
    return dropped + len(rows)


def add_lead(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, LEADS, row)
