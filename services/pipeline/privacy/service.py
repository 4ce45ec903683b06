"""Privacy use cases over the pipeline store: the access export."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from services.pipeline import repository as pipeline_repository
from services.pipeline import service as pipeline
from services.pipeline.privacy import repository
from services.pipeline.privacy.schemas import DisclosedEvent, PrivacyExport
from shared.errors import ProblemError
from shared.identity import normalise_email

NOT_FOUND = "The pipeline store holds no contact with this email address."


async def export(session: AsyncSession, email: str) -> PrivacyExport:
    """Everything the store holds about the person whose address normalises as ``email``'s
    (``404`` without a contact). No answer repeats the address but the export itself."""
    key = normalise_email(email)
    contact_id = await repository.contact_id_by_email(session, key)
    found = await pipeline_repository.contact(session, contact_id) if contact_id is not None else None
    if found is None:
        raise ProblemError(404, NOT_FOUND)
    contact, account = found
    return PrivacyExport(
        email=key,
        exported_at=datetime.now(timezone.utc),
        contact=pipeline.contact_profile(contact, account),
        timeline=await pipeline.timeline(session, contact.id),
        scores=await pipeline.score_history(session, contact.id),
        stage_changes=await pipeline.stage_history(session, contact.id),
        opportunities=[pipeline.opportunity_view(o, e)
                       for o, e in await pipeline_repository.opportunities_of(session, contact_id=contact.id)],
        **await pipeline.consent_ledger(session, contact.id),
        webhook_deliveries=[DisclosedEvent(delivery_id=d.id, subscription_id=d.subscription_id, url=d.url,
                                           event_id=d.event_id, event_type=d.event_type, status=d.status,
                                           created_at=d.created_at, delivered_at=d.delivered_at)
                            for d in await repository.deliveries_of(session, key)],
    )
