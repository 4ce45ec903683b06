"""An erasure in the pipeline store keeps every analytics figure, whichever path reads it,
and leaves nothing tied to the ids the person's email derives (SQLite and PostgreSQL, a store
built by Alembic).

A history is applied as the services apply it (``test_source_rollups``' qualification batches
and sales' transitions); then half the people are erased with the pipeline store's erasure
(``services.qualification.erasure.erase``, as its consumer runs it). Every sources answer —
each model, grouping, range (whole months, whole days and date-time bounds, which read the
contacts' credits) and motion filter — is the same before and after; the attribution credits
follow the opportunity to its pseudonymous id; a rebuild from the raw rows changes no rollup;
and a sale on an erased opportunity afterwards is credited as the raw rows say.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import delete, or_, select

from pipeline_store import models as store
from pipeline_store import source_rollups
from services.pipeline import repository as pipeline_repository
from services.pipeline import service as pipeline_service
from services.pipeline.analytics import Thresholds
from services.pipeline.schemas import SourcesQuery, TransitionIn
from services.qualification import erasure
from services.qualification.domain import ids
from shared.events import CONTACT_ERASED, OPPORTUNITY_QUALIFIED, ErasureRequested
from shared.privacy import PrivacyKey
from tests.integration.test_source_rollups import (
    _APPLY, EXPECTED, QUALIFIER, RANGES, SALES, TABLES, _apply, _check_report, _event, raw_rows, reference,
)

pytestmark = pytest.mark.timeout(600)

KEY = PrivacyKey("test-erasure-store")
GROUPINGS = ("motion", "channel", "campaign", "form", "sequence")
LEAD, PROSPECT, TOUCH = "lead", "prospect", "touch"
# eight people (p<i>@co<i % 3>.com), each with a few facts (minutes into March–April 2026) and
# a sale; several qualify on meetings booked or demo requests, some on partial days of RANGES
PEOPLE = [
    ([((LEAD, "demo_request", 1, True), 30), ((TOUCH, "meeting_booked", "cold_email", "s1"), 2000)],
     ("win", 40000)),
    ([((PROSPECT, None, None, True), 10), ((TOUCH, "replied", "cold_call", "s2"), 900),
      ((TOUCH, "meeting_booked", "social", "s1"), 3000)], ("accept", 2500.5)),
    ([((LEAD, "webinar", 2, True), 800), ((LEAD, "demo_request", 0, True), 1500)], ("none", None)),
    ([((PROSPECT, None, None, True), 2000), ((TOUCH, "meeting_booked", "cold_email", "s2"), 2100),
      ((LEAD, "pricing", 1, False), 1000)], ("accept", None)),
    ([((LEAD, "newsletter", 3, False), 5000)], ("none", None)),
    ([((LEAD, "demo_request", 2, True), 20000), ((TOUCH, "positive_reply", "cold_email", "s1"), 21000),
      ((TOUCH, "meeting_booked", "cold_call", "s1"), 22000)], ("lose", None)),
    ([((LEAD, "content_download", 1, True), 700), ((TOUCH, "meeting_booked", "cold_email", "s1"), 2500)],
     ("accept", 1000)),
    ([((PROSPECT, None, None, True), 100), ((TOUCH, "meeting_booked", "social", "s2"), 3100)], ("win", 2500.5)),
]
ERASED = [0, 1, 3, 6]  # two won or open deals, one lost, one never qualified stay


async def _answers(db) -> dict:  # noqa: ANN001
    out = {}
    thresholds = Thresholds()
    for model in source_rollups.MODELS:
        for start, end in RANGES:
            for motions in (None, ["outbound"]):
                for group_by in GROUPINGS:
                    query = SourcesQuery.model_validate({"from": start, "to": end, "group_by": group_by,
                                                         "motion": motions, "attribution": model})
                    async with db.reader() as session:
                        out[(model, str(start), str(end), str(motions), group_by)] = (
                            await pipeline_service.source_analytics(session, query, thresholds))
    return out


async def _rollups(db) -> dict:  # noqa: ANN001
    table = store.SourceRollup.__table__
    columns = [table.c[k] for k in source_rollups.KEY] + [table.c[m] for m in source_rollups.METRICS]
    n = len(source_rollups.KEY)
    async with db.reader() as session:
        return {tuple(r[:n]): tuple(round(x, 6) for x in r[n:]) for r in (await session.execute(select(*columns))).all()
                if any(abs(x) > 1e-9 for x in r[n:])}


async def _credits(db, opportunity_id: str) -> list[tuple]:  # noqa: ANN001
    async with db.reader() as session:
        return [(c.event_id, c.position, c.motion, c.channel, c.campaign,
                 *(getattr(c, column) for column in source_rollups.CREDIT_COLUMNS.values()))
                for c in await pipeline_repository.attribution_credits(session, opportunity_id)]


async def test_an_erasure_keeps_every_sources_answer_and_the_credits(pipeline_store):
    db = pipeline_store
    async with db.unit_of_work() as session:
        for table in TABLES:
            await session.execute(delete(table))
    await _apply(db, PEOPLE, random.Random(7), 3)
    emails = {i: f"p{i}@co{i % 3}.com" for i in range(len(PEOPLE))}
    old_contacts = {i: ids.contact_id(emails[i]) for i in ERASED}
    old_opportunities = {i: ids.opportunity_id(old_contacts[i]) for i in ERASED}
    credits_before = {i: await _credits(db, old_opportunities[i]) for i in ERASED}
    assert sum(bool(c) for c in credits_before.values()) >= 3, "the history qualifies too few of the erased"
    before, rollups_before = await _answers(db), await _rollups(db)

    erasure_ids = {}
    for i in ERASED:
        erasure_ids[i] = str(uuid.uuid4())
        request = ErasureRequested(erasure_id=erasure_ids[i], subject=KEY.subject_of(emails[i]),
                                   requested_at=datetime.now(timezone.utc))
        async with db.unit_of_work() as session:
            assert await erasure.erase(KEY, session, request.subject, request) > 0

    # nothing is left under the ids the email derives; the credits follow the opportunity
    old = list(old_contacts.values()) + list(old_opportunities.values())
    async with db.reader() as session:
        left = (await session.execute(select(store.AttributionCredit).where(or_(
            store.AttributionCredit.contact_id.in_(old), store.AttributionCredit.opportunity_id.in_(old))))).all()
    assert left == [], "credits kept under the ids derived from an erased email"
    for i in ERASED:
        new_opportunity = erasure.pseudonym(erasure_ids[i], old_opportunities[i])
        assert await _credits(db, new_opportunity) == credits_before[i]
        if credits_before[i]:
            async with db.reader() as session:
                (moved,) = (await session.execute(select(store.AttributionCredit.contact_id).where(
                    store.AttributionCredit.opportunity_id == new_opportunity).distinct())).scalars().all()
            assert moved == erasure.pseudonym(erasure_ids[i], old_contacts[i])

    after = await _answers(db)
    assert [k for k in before if before[k] != after[k]] == [], "an erasure changed a sources answer"
    assert await _rollups(db) == rollups_before
    async with db.unit_of_work() as session:
        await source_rollups.rebuild(session)
    assert await _rollups(db) == rollups_before, "a rebuild from the raw rows disagrees after the erasure"

    # sales win an erased person's open deal: the rollups credit it as the raw rows say
    (i,) = [i for i in ERASED if PEOPLE[i][1][0] == "accept" and credits_before[i]][:1]
    async with db.unit_of_work() as session:
        await pipeline_service.transition(session, erasure.pseudonym(erasure_ids[i], old_opportunities[i]),
                                          TransitionIn(to="customer", amount=Decimal("777")), SALES,
                                          expected_amounts=EXPECTED)
    thresholds = Thresholds()
    for model in source_rollups.MODELS:
        rows = await raw_rows(db, model)
        for start, end in RANGES:
            for group_by in GROUPINGS:
                query = SourcesQuery.model_validate({"from": start, "to": end, "group_by": group_by,
                                                     "attribution": model})
                async with db.reader() as session:
                    report = await pipeline_service.source_analytics(session, query, thresholds)
                _check_report(report, *reference(rows, model, group_by, start, end, None))


async def test_a_repeated_request_answers_the_erasure_unless_the_store_holds_the_person_again(pipeline_store):
    """The same request twice erases once; but if the store holds the person again without a
    new opt-in (a fact that slipped past the suppression), a repeated request is a new erasure
    rather than an answer that says completed while they are there."""
    from pipeline_store.models import ErasedSubject, ErasureRequest
    from services.pipeline.privacy.erasures import request_erasure
    from shared.privacy import remember
    from tests.integration.test_qualification_batch import T0, apply, lead

    email = "again@acme-robotics.io"
    async with pipeline_store.unit_of_work() as session:
        first = await request_erasure(session, KEY, email, "test")
    async with pipeline_store.unit_of_work() as session:
        assert (await request_erasure(session, KEY, email, "test")).erasure_id == first.erasure_id  # pending
        asked = select(ErasureRequest).where(ErasureRequest.id == first.erasure_id)
        (await session.execute(asked)).scalar_one().status = "completed"
        await remember(session, ErasedSubject, KEY.subject_of_email(email))
    async with pipeline_store.unit_of_work() as session:
        repeated = await request_erasure(session, KEY, email, "test")
    assert (repeated.erasure_id, repeated.new) == (first.erasure_id, False)
    await apply(pipeline_store, [lead(email, T0)])  # without the suppression check: held again
    async with pipeline_store.unit_of_work() as session:
        again = await request_erasure(session, KEY, email, "test")
    assert again.new and again.erasure_id != first.erasure_id


async def _outbox(db, event_type: str) -> list[str]:  # noqa: ANN001
    """The ids of the pipeline store's outbox rows of ``event_type`` not erased, oldest first."""
    async with db.reader() as session:
        rows = (await session.execute(select(store.PipelineOutbox.event_id, store.PipelineOutbox.value)
                                      .order_by(store.PipelineOutbox.id))).all()
    return [event_id for event_id, value in rows if value and orjson.loads(value)["type"] == event_type]


async def _qualify_once(db, email: str, start: int) -> None:  # noqa: ANN001
    """A demo request and a meeting booked (qualified), as qualification applies them."""
    for n, (kind, minute) in enumerate([(("lead", "demo_request", 1, True), start),
                                        (("touch", "meeting_booked", "cold_email", "s1"), start + 60)]):
        event, data = _event(email, kind, minute, start + n)
        async with db.snapshot_unit_of_work() as session:
            await _APPLY[event.type](session, QUALIFIER, event, data)


async def test_a_person_erased_qualified_again_and_erased_again_gets_new_events(pipeline_store):
    """Erased, back (a new opt-in recreates the contact under the id its email derives) and
    qualified again: a second ``opportunity.qualified`` with an id of its own (the first id is
    still in the outbox, and downstream consumers deduplicate by it); erased again: a second
    ``contact.erased`` with an id of its own, and the erasure completes."""
    db, email = pipeline_store, "again@co1.com"
    contact_id = ids.contact_id(email)
    qualified, erasure_ids = [], []
    for start in (100, 5000):
        await _qualify_once(db, email, start)
        qualified += await _outbox(db, OPPORTUNITY_QUALIFIED)  # the person's rows: erased below
        erasure_ids.append(str(uuid.uuid4()))
        request = ErasureRequested(erasure_id=erasure_ids[-1], subject=KEY.subject_of(email),
                                   requested_at=datetime.now(timezone.utc))
        async with db.unit_of_work() as session:
            assert await erasure.erase(KEY, session, request.subject, request) > 0
    assert len(set(qualified)) == 2, "the second qualification has no opportunity.qualified of its own"
    assert await _outbox(db, CONTACT_ERASED) == [ids.contact_erased_id(contact_id, e) for e in erasure_ids]
    # both opportunities are kept, each under its own erasure's pseudonym
    async with db.reader() as session:
        kept = (await session.execute(select(store.Opportunity.id, store.Opportunity.qualified_event_id))).all()
    assert sorted(kept) == sorted((erasure.pseudonym(e, ids.opportunity_id(contact_id)), erasure.pseudonym(e, q))
                                  for e, q in zip(erasure_ids, qualified))
