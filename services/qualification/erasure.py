"""Erasure in the pipeline store: one person's personal data removed, their facts kept.

The contact moves to a new pseudonymous id (derived from the erasure's id, which nothing
outside the store can tie to the person: the old id and the opportunity's were derived from
the email), without names, email, phone, title, LinkedIn URL, firmographics or account link.
Its touches, scores, stage changes, opportunity and attribution credits follow it with their
motion, channel, campaign, stages, scores, amounts and dates, so every analytics figure stays
the same; their payloads keep only what ``shared.privacy.scrub`` keeps, and sales' free text
(reasons) goes. The transitions' idempotency records, the person's webhook deliveries and outbox rows are
erased, and ``contact.erased`` (keyed by the old contact id and naming it alone; its event id of the
contact and this erasure) tells downstream systems to erase their copies. See docs/privacy.md.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import (
    AttributionCredit, ConsentEntry, Contact, Opportunity, PipelineOutbox, Score, StageChange, Touch,
    TransitionRequest, WebhookDelivery,
)
from services.qualification.domain import ids
from services.qualification.events import CHANGED_BY
from shared.db import transaction_time
from shared.events import CONTACT_ERASED, ContactErased, ErasureRequested, make_event
from shared.outbox import erase_rows, stage_event
from shared.privacy import PrivacyKey, lock_subjects, scrub

STORE = "pipeline"  # its name in erasure reports
SOURCE = "/leadstream/qualification"
_CONTACTS = Contact.__table__
_PERSONAL = {"email_as_typed": "", "first_name": None, "last_name": None, "title": None, "phone": None,
             "linkedin_url": None, "firmographics": {}, "account_domain": None}


def pseudonym(erasure_id: str, old_id: str) -> str:
    """The new id of what an erasure keeps (a contact, an opportunity, an event)."""
    return ids.derived_id("erased", erasure_id, old_id)


async def erase(privacy: PrivacyKey, session: AsyncSession, subject: str, request: ErasureRequested) -> int:
    """Erase every contact whose keyed hash is ``subject``; how many records were erased.
    The subject's lock first (``lock_subjects``): a batch creating the person either
    committed before (and is found here) or finds the subject erased when it writes."""
    await lock_subjects(session, [subject])
    emails = (await session.execute(select(_CONTACTS.c.id, _CONTACTS.c.email))).all()
    found = [(contact_id, email) for contact_id, email in emails if privacy.subject_of(email) == subject]
    records = 0
    for contact_id, email in found:
        records += await erase_contact(session, contact_id, email, subject, request.erasure_id)
    return records


async def erase_contact(session: AsyncSession, contact_id: str, email: str, subject: str, erasure_id: str) -> int:
    at = transaction_time(session)
    row = (await session.execute(select(_CONTACTS).where(_CONTACTS.c.id == contact_id).with_for_update())).first()
    if row is None:
        return 0
    new_id = pseudonym(erasure_id, contact_id)
    kept = dict(row._mapping) | _PERSONAL | {"id": new_id, "email": f"erased:{new_id}", "updated_at": at}
    await session.execute(insert(_CONTACTS).values(**kept))
    records = 1
    opportunities = (await session.execute(
        select(Opportunity.id, Opportunity.qualified_event_id).where(Opportunity.contact_id == contact_id)
    )).all()
    moved = {}
    for opportunity_id, qualified_event_id in opportunities:
        moved[opportunity_id] = pseudonym(erasure_id, opportunity_id)
        await session.execute(update(Opportunity).where(Opportunity.id == opportunity_id).values(
            id=moved[opportunity_id], contact_id=new_id, account_domain=None, close_reason=None,
            qualified_event_id=pseudonym(erasure_id, qualified_event_id)))
        records += 1
    for opportunity_id, new_opportunity_id in moved.items():
        # the credits name the opportunity and contact by the ids the email derives: they move too,
        # or the raw path of analytics (partial days, rebuilds, sales' later moves) loses them
        await session.execute(update(AttributionCredit).where(AttributionCredit.opportunity_id == opportunity_id)
                              .values(opportunity_id=new_opportunity_id, contact_id=new_id))
    await session.execute(update(AttributionCredit).where(AttributionCredit.contact_id == contact_id)
                          .values(contact_id=new_id))
    if moved:
        await session.execute(delete(TransitionRequest).where(TransitionRequest.opportunity_id.in_(list(moved))))
    changes = (await session.execute(
        select(StageChange.id, StageChange.opportunity_id, StageChange.event_id, StageChange.changed_by)
        .where(StageChange.contact_id == contact_id)
    )).all()
    for change_id, opportunity_id, event_id, changed_by in changes:
        values = {"contact_id": new_id, "opportunity_id": moved.get(opportunity_id, opportunity_id),
                  "event_id": pseudonym(erasure_id, event_id)}
        if changed_by != CHANGED_BY:
            values["reason"] = None  # sales' free text about the person
        await session.execute(update(StageChange).where(StageChange.id == change_id).values(**values))
        records += 1
    touches = (await session.execute(select(Touch.event_id, Touch.data).where(Touch.contact_id == contact_id))).all()
    for event_id, data in touches:
        await session.execute(update(Touch).where(Touch.event_id == event_id).values(
            contact_id=new_id, data=scrub(data)))
        records += 1
    await session.execute(update(Score).where(Score.contact_id == contact_id).values(contact_id=new_id))
    # the ledger keeps what was granted or withdrawn, when and through what; not the wording the client sent
    await session.execute(update(ConsentEntry).where(ConsentEntry.contact_id == contact_id).values(
        contact_id=new_id, text=None))
    await session.execute(delete(_CONTACTS).where(_CONTACTS.c.id == contact_id))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.key == email))
    await erase_rows(session, PipelineOutbox, PipelineOutbox.__table__.c.key == email, key=subject)
    stage_event(session, PipelineOutbox, contact_erased(contact_id, erasure_id, at), key=contact_id)
    return records


def contact_erased(contact_id: str, erasure_id: str, at: datetime):  # noqa: ANN201
    """``contact.erased``: the old id alone, so downstream systems find their copies; its event
    id is of this erasure (the same contact id erased again, after a new opt-in, is a new event)."""
    return make_event(CONTACT_ERASED, ContactErased(contact_id=contact_id, erased_at=at), source=SOURCE,
                      subject=contact_id, time=at, event_id=ids.contact_erased_id(contact_id, erasure_id))
