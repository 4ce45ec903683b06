"""All SQL of the outreach service."""

from __future__ import annotations

from collections.abc import Collection

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import OutreachProspect, OutreachTouch, OutreachWebhookSecret
from shared.db import prefetch_rows, prefetched, stage_insert, staged_rows
from shared.secrets import SecretBox, UndecryptableSecret

log = structlog.get_logger("outreach")

TOUCHES = OutreachTouch.__table__
PROSPECTS = OutreachProspect.__table__


async def touch_event_ids_by_external_id(session: AsyncSession, external_ids: Collection[str]) -> dict[str, str]:
    """``external_id -> event_id`` of the touches stored (or being stored in this unit of
    work) with one of these ids."""
    if not external_ids:
        return {}
    found = {
        row["external_id"]: row["event_id"]
        for row in staged_rows(session, TOUCHES)
        if row["external_id"] in external_ids
    }
    known = prefetched(session, TOUCHES.c.external_id)
    unknown = [external_id for external_id in external_ids if external_id not in known]
    stored = {external_id: known[external_id]["event_id"] for external_id in external_ids if known.get(external_id)}
    if unknown:
        rows = await session.execute(
            select(TOUCHES.c.external_id, TOUCHES.c.event_id).where(TOUCHES.c.external_id.in_(unknown))
        )
        stored |= dict(rows.all())
    return found | stored


async def prefetch_external_ids(session: AsyncSession, external_ids: Collection[str]) -> None:
    """A group commit's external ids in one query; ``touch_event_ids_by_external_id`` answers from it."""
    await prefetch_rows(session, TOUCHES.c.external_id, external_ids, TOUCHES.c.event_id)


def add_touch(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, TOUCHES, row)


def add_prospect(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, PROSPECTS, row)


async def active_webhook_secrets(session: AsyncSession, integration: str, box: SecretBox) -> list[str]:
    """The integration's active secrets, decrypted (a row no configured key opens is left out:
    its signatures are refused, as a revoked secret's)."""
    rows = await session.execute(
        select(OutreachWebhookSecret.id, OutreachWebhookSecret.secret)
        .where(OutreachWebhookSecret.integration == integration, OutreachWebhookSecret.revoked_at.is_(None))
        .order_by(OutreachWebhookSecret.created_at.desc())
    )
    secrets = []
    for secret_id, stored in rows:
        try:
            secrets.append(box.decrypt(stored))
        except UndecryptableSecret as exc:
            log.error("webhook secret not readable", secret_id=secret_id, integration=integration, error=str(exc))
    return secrets
