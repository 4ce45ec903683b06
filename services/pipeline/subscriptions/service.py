"""Subscriptions use cases: plain async functions over a unit of work (the route owns it)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from services.pipeline.cursor import BadCursor, Position, decode_cursor, encode_cursor
from services.pipeline.subscriptions import repository
from services.pipeline.subscriptions.schemas import (
    DeliveryFilters,
    DeliveryOut,
    DeliveryPage,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
    SubscriptionPatch,
)
from services.pipeline.schemas import Page
from shared.auth import Principal
from shared.errors import ProblemError
from shared.secrets import SecretBox
from shared.signatures import new_webhook_secret
from pipeline_store.models import BIG_ID_RANGE, WebhookDelivery, WebhookSubscription
from shared.webhooks import TargetRefused, WebhookSettings, check_target

VALIDATION = "https://leadstream.dev/problems/validation"


def _invalid(field: str, message: str, where: str = "body", kind: str = "value_error") -> ProblemError:
    return ProblemError(422, "The request has invalid fields." if where == "body" else "The query has invalid "
                        "parameters.", type_=VALIDATION, errors=[{"field": field, "in": where, "message": message,
                                                                   "type": kind}])


async def checked_url(url: str, settings: WebhookSettings) -> str:
    """The URL if it may receive webhooks (form, scheme, addresses after DNS); else 422 naming ``url``.
    Runs before the unit of work opens: resolving a name can take a while."""
    try:
        await check_target(url, allow_http=settings.webhooks_allow_http, allow_private=settings.webhooks_allow_private)
    except TargetRefused as exc:
        raise _invalid("url", str(exc), kind="url_refused") from None
    return url


def _not_found(subscription_id: str) -> ProblemError:
    return ProblemError(404, f"No subscription with id {subscription_id!r}.")


def subscription_view(row: WebhookSubscription) -> SubscriptionOut:
    return SubscriptionOut(id=row.id, url=row.url, event_types=list(row.event_types), description=row.description,
                           status=row.status, created_at=row.created_at, updated_at=row.updated_at)


def delivery_view(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(id=str(row.id), event_id=row.event_id, event_type=row.event_type, status=row.status,
                       attempts=row.attempts, last_status=row.last_status, last_error=row.last_error,
                       next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
                       created_at=row.created_at, delivered_at=row.delivered_at)


async def create(session: AsyncSession, body: SubscriptionIn, caller: Principal, box: SecretBox) -> SubscriptionCreated:
    now = datetime.now(timezone.utc)
    secret = new_webhook_secret()
    row = WebhookSubscription(id=str(uuid.uuid4()), url=body.url, event_types=list(body.event_types),
                              description=body.description, status="active", secret=box.encrypt(secret),
                              created_by=caller.name, created_at=now, updated_at=now)
    repository.add_subscription(session, row)
    await session.flush()
    return SubscriptionCreated(**subscription_view(row).model_dump(), secret=secret)


async def get(session: AsyncSession, subscription_id: str) -> WebhookSubscription:
    row = await repository.subscription(session, subscription_id)
    if row is None:
        raise _not_found(subscription_id)
    return row


async def list_subscriptions(session: AsyncSession, params: Page) -> SubscriptionPage:
    position = _position(params.cursor, "subscriptions")
    rows = await repository.list_subscriptions(session, limit=params.limit, position=position)
    page, more = rows[: params.limit], len(rows) > params.limit
    last = page[-1] if more else None
    cursor = encode_cursor("subscriptions", "desc", last.created_at, last.id) if last else None
    return SubscriptionPage(items=[subscription_view(r) for r in page], next_cursor=cursor)


async def update(session: AsyncSession, subscription_id: str, patch: SubscriptionPatch) -> SubscriptionOut:
    row = await get(session, subscription_id)
    for name in patch.model_fields_set:
        value = getattr(patch, name)
        setattr(row, name, list(value) if name == "event_types" else value)
    row.updated_at = datetime.now(timezone.utc)
    await session.flush()
    return subscription_view(row)


async def delete(session: AsyncSession, subscription_id: str) -> None:
    if not await repository.delete_subscription(session, subscription_id):
        raise _not_found(subscription_id)


async def list_deliveries(session: AsyncSession, subscription_id: str, params: DeliveryFilters) -> DeliveryPage:
    await get(session, subscription_id)
    position = _position(params.cursor, "deliveries")
    before_id = int(position.id) if position is not None else None
    rows = await repository.list_deliveries(session, subscription_id, status=params.status, limit=params.limit,
                                            before_id=before_id)
    page, more = rows[: params.limit], len(rows) > params.limit
    last = page[-1] if more else None
    cursor = encode_cursor("deliveries", "desc", last.created_at, str(last.id)) if last else None
    return DeliveryPage(items=[delivery_view(r) for r in page], next_cursor=cursor)


async def retry(session: AsyncSession, subscription_id: str, delivery_id: int,
                settings: WebhookSettings) -> DeliveryOut:
    """A dead (or delivered) delivery sent again now, with a new retry window."""
    await get(session, subscription_id)
    row = await repository.delivery(session, subscription_id, delivery_id)
    if row is None:
        raise ProblemError(404, f"No delivery {delivery_id} of subscription {subscription_id!r}.")
    if row.status == "pending":
        raise ProblemError(409, "The delivery is still pending; it is retried on its own schedule.",
                           next_attempt_at=row.next_attempt_at.isoformat())
    now = datetime.now(timezone.utc)
    row.status, row.next_attempt_at = "pending", now
    row.expires_at = now + timedelta(hours=settings.webhooks_retry_hours)
    await session.flush()
    return delivery_view(row)


async def redrive(session: AsyncSession, subscription_id: str, settings: WebhookSettings) -> int:
    await get(session, subscription_id)
    now = datetime.now(timezone.utc)
    return await repository.requeue_dead(session, subscription_id, now=now,
                                         expires_at=now + timedelta(hours=settings.webhooks_retry_hours))


def _position(cursor: str | None, kind: str) -> Position | None:
    if cursor is None:
        return None
    try:
        position = decode_cursor(cursor, kind, "desc")
        if kind == "deliveries" and int(position.id) not in BIG_ID_RANGE:
            raise ValueError(position.id)  # a cursor this API issued names a delivery's id
        return position
    except (BadCursor, ValueError) as exc:
        raise _invalid("cursor", str(exc) if isinstance(exc, BadCursor) else "not a cursor this API issued",
                       where="query", kind="cursor_invalid") from None
