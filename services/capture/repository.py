"""All SQL of the capture service."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.capture.models import CapturedLead


async def lead_by_idempotency_key(session: AsyncSession, key: str) -> CapturedLead | None:
    return (await session.execute(select(CapturedLead).where(CapturedLead.idempotency_key == key))).scalar_one_or_none()


def add_lead(session: AsyncSession, lead: CapturedLead) -> None:
    session.add(lead)
