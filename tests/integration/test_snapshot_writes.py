"""Snapshot units of work: on SQLite, workers in several processes compute their batches at
once and take turns only to write; a batch whose snapshot went stale writes nothing and
runs again (``Database.snapshot_unit_of_work``, ``check_before_write``, ``WriteConflict``).

Real migrated stores, SQLite and PostgreSQL (where the same unit of work holds row locks
instead, and the checks are not needed); the consumer's own check against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import namedtuple
from datetime import timedelta

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update

from pipeline_store.models import Account, Contact, ErasedSubject, ProcessedEvent, Score, Touch
from services.qualification import erasure, handlers
from services.qualification.service import load_qualifier
from shared.consumer import Delivery, InboxConsumer, is_transient
from shared.privacy import PrivacyKey, remember
from shared.db import Database, WriteConflict, check_before_write, is_unique_violation, stage_insert
from shared.events import (
    LEAD_CAPTURED, LEADS_CAPTURED, OUTREACH_TOUCHES, TOUCH_RECORDED, ErasureRequested, LeadCaptured, TouchRecorded,
    make_event, new_event_id, utcnow,
)
from tests.integration.test_inbox_consumer import harness  # noqa: F401 - the fixture: a broker, a store, a gateway
from tests.integration.test_qualification_batch import T0, apply, lead, snapshot, stored_account
from tests.support import ROOT, eventually

pytestmark = pytest.mark.timeout(120)

TABLE = handlers.bind(load_qualifier(ROOT / "deploy/config/scoring.yaml"))


@pytest.fixture
def db(pipeline_store):
    return pipeline_store


def touch(email: str, at, outcome: str = "replied") -> Delivery:  # noqa: ANN001
    ev = make_event(TOUCH_RECORDED, TouchRecorded(email=email, channel="cold_email", outcome=outcome, rep="sam",
                                                  occurred_at=at), source="/test", subject=email, time=at)
    return Delivery(ev.topic, 0, 0, email.encode(), ev, ev.parsed_data(), 0)


async def apply_in_snapshot(db: Database, deliveries: list[Delivery], *, opened: asyncio.Event | None = None,
                            hold: asyncio.Event | None = None, table: dict = TABLE) -> None:
    """What the qualification worker does with a batch, in a snapshot unit of work;
    ``opened`` is set once the batch has read and applied, and the write waits for ``hold``."""
    async with db.snapshot_unit_of_work() as session:
        await handlers.prefetch(session, deliveries)
        for d in deliveries:
            await table[d.event.type](session, d)
        if opened is not None:
            opened.set()
        if hold is not None:
            try:
                await asyncio.wait_for(hold.wait(), 3.0)
            except TimeoutError:
                pass  # PostgreSQL: the other batch waits for this one's row locks


async def until_written(db: Database, deliveries: list[Delivery], **kw) -> int:  # noqa: ANN003
    """Apply, again on a new snapshot after each ``WriteConflict`` (the consumer's retry); the
    conflicts. On PostgreSQL the one conflict rows locked ``FOR UPDATE`` cannot prevent is
    two batches creating one contact (there is no row yet): the loser's duplicate key is a
    ``WriteConflict`` too, and its next attempt finds the contact."""
    conflicts = 0
    while True:
        try:
            await apply_in_snapshot(db, deliveries, **kw)
            return conflicts
        except WriteConflict:
            conflicts += 1
            kw = {k: v for k, v in kw.items() if k == "table"}


async def count(db: Database, model) -> int:  # noqa: ANN001
    async with db.reader() as session:
        return (await session.execute(select(func.count()).select_from(model))).scalar_one()


# ---------------------------------------------------------------------- the unit of work


async def test_checks_run_in_the_writing_transaction_and_a_conflict_writes_nothing(db):
    seen_by_check: list[int] = []
    now = utcnow()

    async def other_writer() -> None:
        async with db.unit_of_work() as session:
            stage_insert(session, Account.__table__, dict(domain="other.io", firmographics={}, created_at=now,
                                                          updated_at=now))

    async def check(writer) -> None:  # noqa: ANN001
        seen_by_check.append((await writer.execute(select(func.count()).select_from(Account))).scalar_one())
        raise WriteConflict("stale")

    with pytest.raises(WriteConflict) if db.sqlite else contextlib.nullcontext():
        async with db.snapshot_unit_of_work() as session:
            assert (await session.execute(select(func.count()).select_from(Account))).scalar_one() == 0
            await other_writer()  # commits after the snapshot began
            stage_insert(session, Account.__table__, dict(domain="mine.io", firmographics={}, created_at=now,
                                                          updated_at=now))
            check_before_write(session, "test", check)
    async with db.reader() as session:
        domains = (await session.execute(select(Account.domain))).scalars().all()
    if db.sqlite:
        assert seen_by_check == [1]  # the check saw the other writer's commit ...
        assert domains == ["other.io"]  # ... and nothing staged was written
    else:
        assert seen_by_check == []  # row locks instead of checks: the work is written as it is
        assert sorted(domains) == ["mine.io", "other.io"]
    assert is_transient(WriteConflict("stale"))  # the consumer retries it, never dead-letters it


async def test_a_snapshot_unit_of_work_refuses_orm_objects_on_sqlite(db):
    if not db.sqlite:
        pytest.skip("PostgreSQL's snapshot unit of work is the ordinary one")
    now = utcnow()
    with pytest.raises(RuntimeError, match="never ORM objects"):
        async with db.snapshot_unit_of_work() as session:
            session.add(Account(domain="orm.io", firmographics={}, created_at=now, updated_at=now))
    assert await count(db, Account) == 0


# ---------------------------------------------------------------------- qualification's checks


async def test_two_batches_on_one_account_compute_at_once_on_both_backends(db):
    """Different contacts of one company: neither batch waits for the other to compute, and
    the account keeps both facts (SQLite included, unlike ``unit_of_work``)."""
    await apply(db, [lead("eve@acme-robotics.io", T0 - timedelta(days=1), company="Acme")])
    opened, second_done = asyncio.Event(), asyncio.Event()
    happened: list[str] = []

    async def first() -> None:
        await apply_in_snapshot(db, [lead("ada@acme-robotics.io", T0, industry="robotics")], opened=opened,
                                hold=second_done)
        happened.append("first committed")

    async def second() -> None:
        await opened.wait()
        await apply_in_snapshot(db, [lead("bob@acme-robotics.io", T0 + timedelta(minutes=1), country="DE")])
        happened.append("second committed")
        second_done.set()

    await asyncio.gather(first(), second())
    assert happened == ["second committed", "first committed"]
    account = await stored_account(db, "acme-robotics.io")
    assert (account.company, account.industry, account.country) == ("Acme", "robotics", "DE")
    assert await count(db, Contact) == 3


async def test_a_contact_written_since_the_snapshot_makes_the_batch_run_again(db, database_factory):
    """Another worker applies a touch to a contact while this batch holds it in its snapshot:
    the batch's write finds the row changed and writes nothing; run again, the store is what
    the two batches applied one after the other give."""
    email = "vp@acme-robotics.io"
    seed = [lead(email, T0, title="VP Sales", company="Acme Robotics", employees=250)]
    mine, theirs = [touch(email, T0 + timedelta(hours=1))], [touch(email, T0 + timedelta(hours=2), "positive_reply")]
    await apply(db, seed)
    opened, theirs_done = asyncio.Event(), asyncio.Event()

    async def other_worker() -> None:
        await opened.wait()
        await until_written(db, theirs)
        theirs_done.set()

    conflicts, _ = await asyncio.gather(until_written(db, mine, opened=opened, hold=theirs_done), other_worker())
    assert conflicts == (1 if db.sqlite else 0)  # PostgreSQL: the other worker waited for the row lock
    async with db.reader() as session:
        touches = (await session.execute(select(Touch.event_id))).scalars().all()
        scores = (await session.execute(select(Score.cause_event_id))).scalars().all()
    assert sorted(touches) == sorted(d.event.id for d in seed + mine + theirs)  # each once
    assert sorted(scores) == sorted(d.event.id for d in seed + mine + theirs)

    # the same facts applied one batch after the other, in the order they were committed
    order = [seed, theirs, mine] if db.sqlite else [seed, mine, theirs]
    sequential = Database(await database_factory("pipeline"))
    try:
        for batch in order:
            await apply(sequential, batch)
        expected, got = await snapshot(sequential), await snapshot(db)
    finally:
        await sequential.dispose()
    assert got == expected


async def test_a_contact_created_since_the_snapshot_makes_the_batch_run_again(db):
    """Two batches both create one new contact: one contact, both facts on its timeline."""
    email = "new@acme-robotics.io"
    opened, theirs_done = asyncio.Event(), asyncio.Event()

    async def other_worker() -> None:
        await opened.wait()
        await until_written(db, [lead(email, T0 + timedelta(minutes=5))])
        theirs_done.set()

    conflicts, _ = await asyncio.gather(
        until_written(db, [lead(email, T0)], opened=opened, hold=theirs_done), other_worker())
    assert conflicts == 1
    async with db.reader() as session:
        contacts = (await session.execute(select(Contact.id))).scalars().all()
        touches = (await session.execute(select(Touch.contact_id))).scalars().all()
    assert len(contacts) == 1 and touches == contacts * 2


async def test_a_person_erased_since_the_snapshot_is_not_created(db):
    """A lead about a new person, read before an erasure of that person committed and written
    after it (the erasure found nobody and was reported complete): the batch runs again and
    drops the fact, instead of bringing the person back unerased. On PostgreSQL both sides
    take the subject's advisory lock (``shared.privacy.lock_subjects``)."""
    key = PrivacyKey("test-snapshot-erasure")
    table = handlers.bind(dataclasses.replace(load_qualifier(ROOT / "deploy/config/scoring.yaml"), privacy=key))
    email = "gone@acme-robotics.io"
    opened, erased = asyncio.Event(), asyncio.Event()

    async def erase_meanwhile() -> None:
        await opened.wait()
        request = ErasureRequested(erasure_id=new_event_id(), subject=key.subject_of(email), requested_at=utcnow())
        async with db.unit_of_work() as session:
            assert await erasure.erase(key, session, request.subject, request) == 0
            await remember(session, ErasedSubject, request.subject, request)
        erased.set()

    conflicts, _ = await asyncio.gather(
        until_written(db, [lead(email, T0)], opened=opened, hold=erased, table=table), erase_meanwhile())
    assert conflicts == 1
    assert await count(db, Contact) == 0 and await count(db, Touch) == 0


async def test_a_stage_moved_by_sales_since_the_snapshot_is_not_overwritten(db):
    """Any change to the contact's row (here a sales transition's, written directly) is seen."""
    if not db.sqlite:
        pytest.skip("PostgreSQL: the batch holds the row FOR UPDATE; sales waits for it")
    email = "vp@acme-robotics.io"
    await apply(db, [lead(email, T0, title="VP Sales", company="Acme Robotics", employees=250)])
    opened, moved = asyncio.Event(), asyncio.Event()

    async def sales() -> None:
        await opened.wait()
        async with db.unit_of_work() as session:
            await session.execute(update(Contact).where(Contact.email == email)
                                  .values(stage="opportunity", updated_at=utcnow()))
        moved.set()

    conflicts, _ = await asyncio.gather(
        until_written(db, [touch(email, T0 + timedelta(hours=1))], opened=opened, hold=moved), sales())
    assert conflicts == 1
    async with db.reader() as session:
        stage = (await session.execute(select(Contact.stage))).scalar_one()
    assert stage == "opportunity"  # sales' move stands: qualification never moves a contact back


# ---------------------------------------------------------------------- the consumer's check

Record = namedtuple("Record", "topic partition offset key value headers timestamp")


async def stage_lead(session, delivery: Delivery) -> None:  # noqa: ANN001
    now = utcnow()
    stage_insert(session, Account.__table__, dict(domain=delivery.event.id, company=delivery.data.email,
                                                  firmographics={}, created_at=now, updated_at=now))


async def test_a_batch_another_member_applied_since_its_snapshot_is_deduplicated(harness):  # noqa: F811 - the imported fixture
    """A partition moved mid-batch: the old and the new member apply the same records at
    once. The one that writes second finds them in the inbox, writes nothing, and on its
    new snapshot counts them as duplicates: each effect once."""
    db = harness.db
    entered, other_done = asyncio.Event(), asyncio.Event()

    async def slow(session, delivery: Delivery) -> None:  # noqa: ANN001
        await stage_lead(session, delivery)
        entered.set()
        try:
            await asyncio.wait_for(other_done.wait(), 3.0)
        except TimeoutError:
            pass

    old, new = (InboxConsumer(db, harness.kafka, harness.settings, topics=[LEADS_CAPTURED],
                              handlers={LEAD_CAPTURED: handler}, name=name, group_id=harness.group_id,
                              inbox_model=ProcessedEvent, snapshot=True,
                              max_backoff_s=0.2)
                for name, handler in (("old", slow), ("new", stage_lead)))
    event = make_event(LEAD_CAPTURED, LeadCaptured(email="ada@acme.io", occurred_at=utcnow()), source="/test",
                       subject="ada@acme.io")
    record = Record(LEADS_CAPTURED, 0, 7, b"ada@acme.io", event.to_bytes(), [], 0)

    async def new_member() -> None:
        await entered.wait()
        outcome = await new._retrying(lambda: new._apply([new._prepare(record)]), "database")
        assert len(outcome.applied) == 1
        other_done.set()

    async def old_member():  # noqa: ANN202
        try:
            return await old._retrying(lambda: old._apply([old._prepare(record)]), "database")
        except sa_exc.IntegrityError:
            # PostgreSQL: nothing held the inbox row, so the unique keys caught the race
            # (the consumer then applies the batch one message per transaction)
            assert not db.sqlite
            return await old._apply([old._prepare(record)])

    outcome, _ = await asyncio.gather(old_member(), new_member())
    assert (len(outcome.applied), len(outcome.duplicates)) == (0, 1)
    assert old.retries == (1 if db.sqlite else 0)
    assert await count(db, Account) == 1 and await count(db, ProcessedEvent) == 1


async def test_members_of_a_group_get_the_same_partitions_of_both_topics(harness):  # noqa: F811 - the imported fixture
    """Range assignment: a contact's leads and touches (both keyed by its email) go to one
    member. Three members, as two would get matching partitions by round robin too."""
    members = [InboxConsumer(harness.db, harness.kafka, harness.settings, topics=[LEADS_CAPTURED, OUTREACH_TOUCHES],
                             handlers={LEAD_CAPTURED: stage_lead}, name="qualification", group_id=harness.group_id,
                             inbox_model=ProcessedEvent, client_id=f"m{n}")
               for n in range(3)]
    harness.consumers += members  # stopped by the fixture
    for member in members:
        member.start()

    async def settled() -> bool:
        parts = [m.assignment for m in members]
        return all(parts) and sum(len(p) for p in parts) == 8

    await eventually(settled, timeout=60)
    for member in members:
        by_topic = {t: {tp.partition for tp in member.assignment if tp.topic == t}
                    for t in (LEADS_CAPTURED, OUTREACH_TOUCHES)}
        assert by_topic[LEADS_CAPTURED] == by_topic[OUTREACH_TOUCHES], by_topic


async def test_only_a_duplicate_key_counts_as_a_unique_violation(db):
    """A duplicate key makes the batch run again (``WriteConflict``); any other violation
    would fail the same way again, so it stays an ``IntegrityError``."""
    now = utcnow()
    row = dict(domain="dup.io", firmographics={}, created_at=now, updated_at=now)
    async with db.unit_of_work() as session:
        stage_insert(session, Account.__table__, row)
    with pytest.raises(sa_exc.IntegrityError) as duplicate:
        async with db.unit_of_work() as session:
            stage_insert(session, Account.__table__, row)
    with pytest.raises(sa_exc.IntegrityError) as missing:
        async with db.unit_of_work() as session:
            stage_insert(session, Account.__table__, row | {"domain": "null.io", "created_at": None})
    assert is_unique_violation(duplicate.value)
    assert not is_unique_violation(missing.value)
    assert not is_unique_violation(ValueError("not a database error"))
