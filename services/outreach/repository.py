"""All SQL of the outreach service."""

from __future__ import annotations

from collections.abc import Collection

import structlog
from sqlalchemy import select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import (
    OutreachOutbox, OutreachProspect, OutreachSuppression, OutreachTouch, OutreachWebhookSecret,
)
from shared.db import in_chunks, prefetch_rows, prefetched, stage_insert, staged_rows
from shared.outbox import erase_rows
from shared.privacy import scrub
from shared.secrets import SecretBox, UndecryptableSecret

log = structlog.get_logger("outreach")

TOUCHES = OutreachTouch.__table__
PROSPECTS = OutreachProspect.__table__
SUPPRESSIONS = OutreachSuppression.__table__


async def touch_event_ids_by_external_key(session: AsyncSession, external_keys: Collection[str]) -> dict[str, str]:
    """``external_key -> event_id`` of the touches stored (or being stored in this unit of
    work) with one of these keys (``services.outreach.external_keys``)."""
    if not external_keys:
        return {}
    found = {
        row["external_key"]: row["event_id"]
        for row in staged_rows(session, TOUCHES)
        if row["external_key"] in external_keys
    }
    known = prefetched(session, TOUCHES.c.external_key)
    unknown = [key for key in external_keys if key not in known]
    stored = {key: known[key]["event_id"] for key in external_keys if known.get(key)}
    for chunk in in_chunks(unknown):
        rows = await session.execute(
            select(TOUCHES.c.external_key, TOUCHES.c.event_id).where(TOUCHES.c.external_key.in_(chunk))
        )
        stored |= dict(rows.all())
    return found | stored


async def prefetch_external_keys(session: AsyncSession, external_keys: Collection[str]) -> None:
    """A group commit's external keys in one query; ``touch_event_ids_by_external_key`` answers from it."""
    await prefetch_rows(session, TOUCHES.c.external_key, external_keys, TOUCHES.c.event_id)


async def prefetch(session: AsyncSession, hints: Collection[tuple[str | None, tuple[str, ...]]]) -> None:
    """A group commit's lookups in one query each: external keys already stored, and which
    subjects (keyed hashes) of its facts are suppressed (``hints``: ``(external_key, subjects)``)."""
    external_keys = [external_key for external_key, _ in hints if external_key]
    if external_keys:
        await prefetch_external_keys(session, external_keys)
    await prefetch_rows(session, SUPPRESSIONS.c.subject, [s for _, subjects in hints for s in subjects])


async def suppressed(session: AsyncSession, subjects: Collection[str]) -> set[str]:
    """Which of ``subjects`` are on the suppression list (erased people)."""
    known = prefetched(session, SUPPRESSIONS.c.subject)
    found = {s for s in subjects if known.get(s) is not None}
    unknown = [s for s in set(subjects) if s not in known]
    for start in range(0, len(unknown), 500):
        rows = await session.execute(
            select(SUPPRESSIONS.c.subject).where(SUPPRESSIONS.c.subject.in_(unknown[start:start + 500])))
        found.update(rows.scalars())
    return found


async def contact_keys(session: AsyncSession) -> list[str]:
    """Every identity outreach holds (an erasure finds its subject among their hashes)."""
    query = union(select(PROSPECTS.c.contact_key), select(TOUCHES.c.contact_key))
    return list((await session.execute(query)).scalars())


async def erase(session: AsyncSession, contact_keys: list[str], subject: str) -> int:
    """Remove the personal fields of the prospects and touches of these identities, and of
    their outbox rows; channel, outcome, sequence and times stay, filed under ``subject``."""
    if not contact_keys:
        return 0
    erased = 0
    for table in (PROSPECTS, TOUCHES):
        rows = (await session.execute(
            select(table.c.event_id, table.c.payload).where(table.c.contact_key.in_(contact_keys))
        )).all()
        # the key is a hash of the id within its source: as linkable as the id, it goes too
        extra = {"external_id": None, "external_key": None} if table is TOUCHES else {}
        for event_id, payload in rows:
            await session.execute(update(table).where(table.c.event_id == event_id).values(
                email="", contact_key=subject, payload=scrub(payload), **extra))
        erased += len(rows)
    outbox = OutreachOutbox.__table__
    await erase_rows(session, OutreachOutbox, outbox.c.key.in_(contact_keys), key=subject)
    return erased


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
