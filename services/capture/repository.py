"""All SQL of the capture service."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.capture.models import CapturedLead
from shared.db import in_chunks, stage_insert, staged_rows

LEADS = CapturedLead.__table__


PREFETCHED = "lead_idempotency_keys"


async def prefetch_idempotency_keys(session: AsyncSession, keys: Collection[str]) -> None:
    """Look up a group commit's Idempotency-Keys in one query: later lookups in the same
    transaction answer from it (``None``: not stored) and query only keys not asked here."""
    known: dict[str, dict | None] = dict.fromkeys(keys)
    for chunk in in_chunks(list(known)):
        rows = await session.execute(
            select(LEADS.c.idempotency_key, LEADS.c.event_id, LEADS.c.request_fingerprint)
            .where(LEADS.c.idempotency_key.in_(chunk))
        )
        known |= {row.idempotency_key: {"event_id": row.event_id, "request_fingerprint": row.request_fingerprint}
                  for row in rows}
    session.info[PREFETCHED] = known


async def lead_by_idempotency_key(session: AsyncSession, key: str) -> dict | None:
    """The lead stored (or being stored in this unit of work) under an Idempotency-Key."""
    for row in staged_rows(session, LEADS):
        if row.get("idempotency_key") == key:
            return row
    prefetched = session.info.get(PREFETCHED, {})
    if key in prefetched:
        return prefetched[key]
    found = (
        await session.execute(
            select(LEADS.c.event_id, LEADS.c.request_fingerprint).where(LEADS.c.idempotency_key == key)
        )
    ).first()
    return dict(found._mapping) if found else None


def add_lead(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, LEADS, row)
