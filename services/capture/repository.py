"""All SQL of the capture service."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.capture.models import CapturedLead
from shared.db import prefetch_rows, prefetched, stage_insert, staged_rows

LEADS = CapturedLead.__table__


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


def add_lead(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, LEADS, row)
