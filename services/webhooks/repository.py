"""All SQL of the webhooks process."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import stage_insert, update_many
from pipeline_store.models import WebhookDelivery, WebhookProcessedEvent, WebhookSubscription

DELIVERIES = WebhookDelivery.__table__
D = DELIVERIES.c


async def subscriptions(session: AsyncSession) -> list[WebhookSubscription]:
    """Every subscription (active and paused), as the process's view of them."""
    return list((await session.execute(select(WebhookSubscription))).scalars())


def add_delivery(session: AsyncSession, **row) -> None:  # noqa: ANN003
    stage_insert(session, DELIVERIES, row)


async def pending(session: AsyncSession, subscription_id: str, partitions: Collection[int], *, scan: int) -> list:
    """The first ``scan`` pending deliveries of the subscription in id order (its sending
    order) on ``partitions``, with what sending needs. The first row of each key is that
    key's head, the only one that may be sent."""
    if not partitions:
        return []
    rows = await session.execute(
        select(D.id, D.event_id, D.key, D.payload, D.attempts, D.next_attempt_at, D.expires_at, D.published_at)
        .where(D.subscription_id == subscription_id, D.status == "pending", D.partition.in_(sorted(partitions)))
        .order_by(D.id).limit(scan)
    )
    return list(rows)


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
