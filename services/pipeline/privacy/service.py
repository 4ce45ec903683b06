"""Privacy use cases over the pipeline store: the access export, audited."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import ErasureAudit

from services.pipeline import repository as pipeline_repository
from services.pipeline import service as pipeline
from services.pipeline.privacy import repository
from services.pipeline.privacy.schemas import DisclosedEvent, PrivacyExport
from shared.db import transaction_time
from shared.errors import ProblemError
from shared.identity import normalise_email

if TYPE_CHECKING:
    from shared.db import Database

NOT_FOUND = "The pipeline store holds no contact with this email address."
# the stores an export reads, as its audit row names them
EXPORT_STORES = "pipeline"


async def audited_export(db: Database, email: str, actor: str) -> PrivacyExport:
    """The export of ``email`` (``404`` without a contact), audited as ``actor``'s access request.

    The read runs in a reader; then one audit row (``exported`` or ``not_found``) is written in
    its own short unit of work, so the read holds no write lock. The row is committed before the
    answer leaves: an export the store could not audit is not answered (the error propagates).
    API and command both call this, so neither can answer unaudited."""
    try:
        async with db.reader() as session:
            document = await export(session, email)
    except ProblemError as problem:
        if problem.status == 404:
            await _audit_export(db, actor, "not_found")
        raise
    await _audit_export(db, actor, "exported")
    return document


async def _audit_export(db: Database, actor: str, outcome: str) -> None:
    async with db.unit_of_work() as session:
        repository.add(session, ErasureAudit(kind="export", actor=actor, outcome=outcome, stores=EXPORT_STORES,
                                             at=transaction_time(session)))


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
