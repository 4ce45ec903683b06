"""One handler per subscribable event type: store a delivery for each active subscription
that follows the type, in the consumer's transaction (the Kafka offset is committed after)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from services.webhooks import repository
from shared.consumer import Delivery, Handler
from shared.db import staging_of, transaction_time
from shared.webhooks import SUBSCRIBABLE_TYPES, WebhookSettings


@dataclass(slots=True)
class Followers:
    """The transaction's state (``Staging.state``): who follows which type, read once per batch."""

    by_type: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)  # [(subscription id, created_at)]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


async def prefetch(session: AsyncSession, deliveries: list[Delivery]) -> None:  # noqa: ARG001
    """Once per batch, in its transaction: who follows which type (a subscription made or
    paused before this commit is seen by it)."""
    followers: dict[str, list[tuple[str, datetime]]] = {}
    for row in await repository.subscriptions(session):
        if row.status == "active":
            for event_type in row.event_types:
                followers.setdefault(event_type, []).append((row.id, _utc(row.created_at)))
    staging_of(session).state(Followers).by_type = followers


def bind(settings: WebhookSettings) -> dict[str, Handler]:
    window = timedelta(hours=settings.webhooks_retry_hours)

    async def queue_deliveries(session: AsyncSession, delivery: Delivery) -> None:
        followers = staging_of(session).state(Followers).by_type.get(delivery.event.type, ())
        if not followers:
            return
        now = transaction_time(session)
        published = (datetime.fromtimestamp(delivery.timestamp_ms / 1000, timezone.utc)
                     if delivery.timestamp_ms else now)
        key = delivery.key.decode("utf-8", "replace") if delivery.key else (delivery.event.subject or delivery.event.id)
        payload = delivery.value if delivery.value is not None else delivery.event.to_bytes()
        for subscription_id, since in followers:
            if published < since:
                continue  # a subscription receives the events published after it was made
            repository.add_delivery(
                session, subscription_id=subscription_id, event_id=delivery.event.id, event_type=delivery.event.type,
                key=key[:320], partition=delivery.partition, payload=payload, status="pending", attempts=0,
                next_attempt_at=now, expires_at=now + window, published_at=published, created_at=now,
            )

    return {event_type: queue_deliveries for event_type in SUBSCRIBABLE_TYPES}
