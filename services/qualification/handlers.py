"""The qualification consumer's handlers: one function per event type, declared in ONE table.

A handler runs inside the consumer's unit of work (the edge owns the transaction, the
inbox row is written in the same one); it only maps the delivery to a use case.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from services.qualification import service
from services.qualification.service import Qualifier
from shared.consumer import Delivery, Handler
from shared.events import LEAD_CAPTURED, PROSPECT_ADDED, TOUCH_RECORDED


async def lead_captured(qualifier: Qualifier, session: AsyncSession, delivery: Delivery) -> None:
    await service.record_lead(session, qualifier, delivery.event, delivery.data)


async def prospect_added(qualifier: Qualifier, session: AsyncSession, delivery: Delivery) -> None:
    await service.record_prospect(session, qualifier, delivery.event, delivery.data)


async def touch_recorded(qualifier: Qualifier, session: AsyncSession, delivery: Delivery) -> None:
    await service.record_touch(session, qualifier, delivery.event, delivery.data)


HANDLERS: dict[str, Callable[[Qualifier, AsyncSession, Delivery], Awaitable[None]]] = {
    LEAD_CAPTURED: lead_captured,
    PROSPECT_ADDED: prospect_added,
    TOUCH_RECORDED: touch_recorded,
}


async def prefetch(session: AsyncSession, deliveries: list[Delivery], qualifier: Qualifier | None = None) -> None:
    """Before a batch: load its contacts, timelines and accounts (and whether the people it
    would create were erased) in a few queries."""
    await service.prefetch(session, [d.data for d in deliveries], qualifier.privacy if qualifier else None)


def bind(qualifier: Qualifier) -> dict[str, Handler]:
    """The table with the loaded policies bound in, as the inbox consumer calls it."""
    return {event_type: partial(handler, qualifier) for event_type, handler in HANDLERS.items()}
