"""All SQL of the outreach service."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import OutreachProspect, OutreachTouch, OutreachWebhookSecret
from shared.db import in_chunks, stage_insert, staged_rows

TOUCHES = OutreachTouch.__table__
PROSPECTS = OutreachProspect.__table__


async def touch_event_ids_by_external_id(session: AsyncSession, external_ids: Collection[str]) -> dict[str, str]:
    """``external_id -> event_id`` of the touches stored (or being stored in this unit of
    work) with one of these ids."""
    if not external_ids:
        return {}
    found = {
        row["external_id"]: row["event_id"] for row in staged_rows(session, TOUCHES) if row["external_id"] in external_ids
    }
    prefetched: dict[str, str | None] = session.info.get(PREFETCHED, {})
    unknown = [external_id for external_id in external_ids if external_id not in prefetched]
    stored = {external_id: prefetched[external_id] for external_id in external_ids if prefetched.get(external_id)}
    if unknown:
        rows = await session.execute(
            select(TOUCHES.c.external_id, TOUCHES.c.event_id).where(TOUCHES.c.external_id.in_(unknown))
        )
        stored |= dict(rows.all())
    return found | stored


PREFETCHED = "touch_external_ids"


async def prefetch_external_ids(session: AsyncSession, external_ids: Collection[str]) -> None:
    """Look up a group commit's external ids in one query: later lookups in the same
    transaction answer from it (``None``: not stored) and query only ids not asked here."""
    known: dict[str, str | None] = dict.fromkeys(external_ids)
    for chunk in in_chunks(list(known)):
        rows = await session.execute(
            select(TOUCHES.c.external_id, TOUCHES.c.event_id).where(TOUCHES.c.external_id.in_(chunk))
        )
        known |= dict(rows.all())
    session.info[PREFETCHED] = known


def add_touch(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, TOUCHES, row)


def add_prospect(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, PROSPECTS, row)


async def active_webhook_secrets(session: AsyncSession, integration: str) -> list[str]:
    rows = await session.execute(
        select(OutreachWebhookSecret.secret)
        .where(OutreachWebhookSecret.integration == integration, OutreachWebhookSecret.revoked_at.is_(None))
        .order_by(OutreachWebhookSecret.created_at.desc())
    )
    return list(rows.scalars())
