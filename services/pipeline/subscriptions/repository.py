"""All SQL of the subscriptions API (the webhooks process has its own, services/webhooks)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.pipeline.cursor import Position
from services.pipeline.repository import after
from pipeline_store.models import BIG_ID_RANGE, WebhookDelivery, WebhookSubscription


async def subscription(session: AsyncSession, subscription_id: str) -> WebhookSubscription | None:
    return await session.get(WebhookSubscription, subscription_id)


def add_subscription(session: AsyncSession, row: WebhookSubscription) -> None:
    session.add(row)


async def list_subscriptions(session: AsyncSession, *, limit: int,
                             position: Position | None) -> list[WebhookSubscription]:
    """Newest first, ``limit + 1`` rows (one more tells there is a next page)."""
    query = select(WebhookSubscription)
    if position is not None:
        query = query.where(after(WebhookSubscription.created_at, WebhookSubscription.id, position, "desc"))
    query = query.order_by(WebhookSubscription.created_at.desc(), WebhookSubscription.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def delete_subscription(session: AsyncSession, subscription_id: str) -> bool:
    # deliveries first: SQLite enforces the cascade only with foreign keys on, and a copy made
    # without them must not keep deliveries of a subscription that is gone
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id))
    result = await session.execute(delete(WebhookSubscription).where(WebhookSubscription.id == subscription_id))
    return bool(result.rowcount)


async def list_deliveries(session: AsyncSession, subscription_id: str, *, status: str | None, limit: int,
                          before_id: int | None) -> list[WebhookDelivery]:
    """Newest first (by id), ``limit + 1`` rows."""
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    query = query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def delivery(session: AsyncSession, subscription_id: str, delivery_id: int) -> WebhookDelivery | None:
    if delivery_id not in BIG_ID_RANGE:
        return None  # no row has it, and the driver would refuse it (integer overflow) rather than find none
    row = await session.get(WebhookDelivery, delivery_id)
    return row if row is not None and row.subscription_id == subscription_id else None


async def requeue_dead(session: AsyncSession, subscription_id: str, *, now: datetime, expires_at: datetime) -> int:
    """Every dead delivery of the subscription pending again, due now, with a new retry window."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == subscription_id, WebhookDelivery.status == "dead")
        .values(status="pending", next_attempt_at=now, expires_at=expires_at)
    )
    return result.rowcount or 0


async def count_deliveries(session: AsyncSession, subscription_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(WebhookDelivery.status, func.count()).where(WebhookDelivery.subscription_id == subscription_id)
        .group_by(WebhookDelivery.status)
    )
    return {status: n for status, n in rows}
