"""The records' invariant (``services/qualification/records.py``): a fact about a contact
changes the contact's row. Every handler keeps it, even for a fact that changes nothing
else (an old touch arriving late); a fact stored without such a change is refused at
commit. On both backends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from pipeline_store.models import Contact, Touch
from services.qualification import handlers, records, repository
from services.qualification.records import UnchangedContact
from shared.consumer import Delivery
from shared.events import (
    LEAD_CAPTURED, PROSPECT_ADDED, TOUCH_RECORDED, LeadCaptured, ProspectAdded, TouchRecorded, make_event,
)
from tests.integration.test_qualification_batch import apply

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
EMAIL = "jo@acme-robotics.io"


def delivery(kind: str, data) -> Delivery:  # noqa: ANN001
    event = make_event(kind, data, source="/test", subject=EMAIL, time=data.occurred_at)
    return Delivery(event.topic, 0, 0, EMAIL.encode(), event, event.parsed_data(), 0)


# one fact of each type the handlers take, a day older than what the contact already has:
# it moves no activity time, no stage and no firmographic (they keep the latest value)
EARLIER = T0 - timedelta(days=1)
FACTS = {
    LEAD_CAPTURED: lambda: LeadCaptured(email=EMAIL, form_type="newsletter", occurred_at=EARLIER),
    PROSPECT_ADDED: lambda: ProspectAdded(email=EMAIL, occurred_at=EARLIER),
    TOUCH_RECORDED: lambda: TouchRecorded(email=EMAIL, channel="cold_email", outcome="sent", occurred_at=EARLIER),
}


def test_every_handler_has_a_fact_here():
    assert set(FACTS) == set(handlers.HANDLERS)


async def _row(db) -> tuple:  # noqa: ANN001
    async with db.reader() as session:
        return tuple((await session.execute(select(Contact.__table__))).one())


@pytest.mark.parametrize("kind", sorted(FACTS))
async def test_every_fact_changes_its_contacts_row(pipeline_store, kind):
    await apply(pipeline_store, [delivery(PROSPECT_ADDED, ProspectAdded(
        email=EMAIL, owner="sam", title="VP Sales", company="Acme Robotics", employees=250, occurred_at=T0))])
    await apply(pipeline_store, [delivery(TOUCH_RECORDED, TouchRecorded(
        email=EMAIL, channel="cold_email", outcome="opened", rep="sam", occurred_at=T0 + timedelta(hours=1)))])
    before = await _row(pipeline_store)
    await apply(pipeline_store, [delivery(kind, FACTS[kind]())])  # would raise UnchangedContact
    assert await _row(pipeline_store) != before


async def _touches(db) -> int:  # noqa: ANN001
    async with db.reader() as session:
        return (await session.execute(select(func.count()).select_from(Touch))).scalar_one()


def _touch_row(contact_id: str) -> dict:
    return {c.key: None for c in Touch.__table__.columns} | {
        "event_id": "a-touch", "contact_id": contact_id, "event_type": TOUCH_RECORDED, "motion": "outbound",
        "channel": "cold_email", "occurred_at": T0, "recorded_at": T0, "data": {}}


@pytest.mark.parametrize("holds_the_contact", [True, False])
async def test_a_fact_that_leaves_its_contacts_row_unchanged_is_refused(pipeline_store, holds_the_contact):
    await apply(pipeline_store, [delivery(PROSPECT_ADDED, ProspectAdded(email=EMAIL, occurred_at=T0))])
    before, touches = await _row(pipeline_store), await _touches(pipeline_store)
    with pytest.raises(UnchangedContact, match="touches row of contact"):
        async with pipeline_store.unit_of_work() as session:
            if holds_the_contact:
                contact = await repository.contact_by_email(session, EMAIL)  # held, and left as it is
            else:
                contact = await repository.contact_by_id(session, before[0])  # read, not held
            await repository.add_touch(session, _touch_row(contact.id))
    assert await _row(pipeline_store) == before and await _touches(pipeline_store) == touches  # nothing written


async def test_reasons_left_as_read_stay_json_when_another_contact_changes_them(pipeline_store):
    """One UPDATE writes the columns any contact of the batch changed, for every contact it
    writes back. A contact whose reasons were not replaced holds them as read (on SQLite, the
    stored text); when
    another contact's reasons change in the same batch, its own are written from that text, as
    JSON, never as a JSON string; an equal value assigned again is not a change."""
    other = "al@acme-robotics.io"
    for email in (EMAIL, other):
        await apply(pipeline_store, [Delivery("t", 0, 0, email.encode(), *(lambda e: (e, e.parsed_data()))(make_event(
            PROSPECT_ADDED, ProspectAdded(email=email, title="VP Sales", employees=250, occurred_at=T0),
            source="/test", subject=email, time=T0)), 0)])
    async with pipeline_store.reader() as session:
        stored = (await session.execute(select(Contact))).scalars()
        before = {c.email: (c.fit_reasons, c.engagement_reasons) for c in stored}
    assert all(isinstance(fit, list) and fit for fit, _ in before.values())
    async with pipeline_store.unit_of_work() as session:
        await repository.prefetch(session, {EMAIL, other}, set())
        changed = await repository.contact_by_email(session, EMAIL)
        left = await repository.contact_by_email(session, other)
        read = left.fit_reasons  # SQLite: the stored text, not decoded (asyncpg decodes JSON)
        records.replace_json(left, "fit_reasons", list(before[other][0]))  # equal: kept as read
        assert left.fit_reasons is read
        records.replace_json(changed, "fit_reasons", [{"rule": "fit.test", "points": 1.0}])
        left.owner = "sam"  # written back for another column
        changed.updated_at = left.updated_at = T0 + timedelta(hours=1)
    async with pipeline_store.reader() as session:
        after = {c.email: (c.fit_reasons, c.engagement_reasons, c.owner)
                 for c in (await session.execute(select(Contact))).scalars()}
    assert after[other] == (*before[other], "sam")
    assert after[EMAIL][0] == [{"rule": "fit.test", "points": 1.0}] and after[EMAIL][1] == before[EMAIL][1]
