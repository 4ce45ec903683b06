"""All SQL of the privacy API: finding a person in the pipeline store and what was sent of them;
the erasure requests, their stores' progress, and the audit of every request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import (
    Contact, ErasedSubject, ErasureAudit, ErasureRequest, ErasureStore, WebhookDelivery, WebhookSubscription,
)


async def contact_id_by_email(session: AsyncSession, email: str) -> str | None:
    """The id of the contact whose normalised email is ``email``."""
    return (await session.execute(select(Contact.id).where(Contact.email == email))).scalar_one_or_none()


async def deliveries_of(session: AsyncSession, key: str) -> Sequence[Any]:
    """The webhook deliveries of the events keyed by ``key`` (a contact's normalised email),
    with their subscription's URL, oldest first. The deliveries' index leads with the
    subscription, so the lookup names every subscription (there are few) and seeks the key
    in each."""
    stmt = (
        select(WebhookDelivery.id, WebhookDelivery.subscription_id, WebhookSubscription.url,
               WebhookDelivery.event_id, WebhookDelivery.event_type, WebhookDelivery.status,
               WebhookDelivery.created_at, WebhookDelivery.delivered_at)
        .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
        .where(WebhookDelivery.subscription_id.in_(select(WebhookSubscription.id).scalar_subquery()),
               WebhookDelivery.key == key)
        .order_by(WebhookDelivery.id)
    )
    return (await session.execute(stmt)).all()


# ---- erasure

async def latest_for(session: AsyncSession, subject: str) -> ErasureRequest | None:
    return (await session.execute(
        select(ErasureRequest).where(ErasureRequest.subject == subject)
        .order_by(ErasureRequest.requested_at.desc()).limit(1)
    )).scalar_one_or_none()


async def still_erased(session: AsyncSession, subject: str) -> bool:
    """Whether the store still holds ``subject`` as erased (no new opt-in lifted it since)."""
    found = await session.execute(select(ErasedSubject.subject).where(ErasedSubject.subject == subject))
    return found.first() is not None


async def request(session: AsyncSession, erasure_id: str, *, lock: bool = False) -> ErasureRequest | None:
    query = select(ErasureRequest).where(ErasureRequest.id == erasure_id)
    return (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()


async def stores(session: AsyncSession, erasure_id: str) -> Sequence[ErasureStore]:
    return (await session.execute(
        select(ErasureStore).where(ErasureStore.erasure_id == erasure_id).order_by(ErasureStore.store)
    )).scalars().all()


def add(session: AsyncSession, *rows: ErasureRequest | ErasureStore | ErasureAudit) -> None:
    session.add_all(rows)
