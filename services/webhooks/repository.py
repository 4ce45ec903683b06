"""All SQL of the webhooks process."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import in_chunks, stage_insert, update_many
from pipeline_store.models import WebhookDelivery, WebhookProcessedEvent, WebhookSubscription

DELIVERIES = WebhookDelivery.__table__
D = DELIVERIES.c


async def subscriptions(session: AsyncSession) -> list[WebhookSubscription]:
    """Every subscription (active and paused), as the process's view of them."""
    return list((await session.execute(select(WebhookSubscription))).scalars())


def add_delivery(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, DELIVERIES, row)


async def pending_heads(session: AsyncSession, subscription_id: str, partitions: Collection[int], *,
                        scan: int) -> list[tuple[int, str, datetime]]:
    """The first ``scan`` pending deliveries of the subscription in id order (its sending
    order) on ``partitions``: ``(id, key, next_attempt_at)``. The first row of each key is
    that key's head, the only one that may be sent."""
    if not partitions:
        return []
    rows = await session.execute(
        select(D.id, D.key, D.next_attempt_at)
        .where(D.subscription_id == subscription_id, D.status == "pending", D.partition.in_(sorted(partitions)))
        .order_by(D.id).limit(scan)
    )
    return [tuple(r) for r in rows]


async def deliveries(session: AsyncSession, ids: Sequence[int]) -> list:
    """What sending needs of these deliveries (still pending ones only)."""
    out = []
    for chunk in in_chunks(list(ids)):
        rows = await session.execute(
            select(D.id, D.event_id, D.key, D.payload, D.attempts, D.expires_at, D.published_at)
            .where(D.id.in_(chunk), D.status == "pending")
        )
        out.extend(rows)
    return sorted(out, key=lambda r: r.id)


async def record(session: AsyncSession, outcomes: list[dict]) -> None:
    """Each outcome ``{"_key": id, column: value …}`` written (one executemany per shape)."""
    shapes: dict[tuple[str, ...], list[dict]] = {}
    for row in outcomes:
        shapes.setdefault(tuple(sorted(row)), []).append(row)
    for rows in shapes.values():
        await update_many(session, DELIVERIES, "id", rows)


async def forget_before(session: AsyncSession, before: datetime) -> tuple[int, int]:
    """Delivered deliveries and inbox rows older than ``before`` removed (dead ones stay)."""
    done = await session.execute(delete(WebhookDelivery).where(WebhookDelivery.status == "delivered",
                                                               WebhookDelivery.created_at < before))
    seen = await session.execute(delete(WebhookProcessedEvent).where(WebhookProcessedEvent.processed_at < before))
    return done.rowcount or 0, seen.rowcount or 0
