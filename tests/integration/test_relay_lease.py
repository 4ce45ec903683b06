"""One publisher per outbox table: the lease (``shared.lease``) on real databases, both backends.

Processes relaying one outbox under load, kill -9 and broker restarts are in
``test_relay_lease_processes.py``; here the lease's rules, one statement at a time.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from pipeline_store.models import PipelineOutbox
from shared.db import Database, SqliteWrites
from shared.events import LEAD_CAPTURED, LeadCaptured, make_event, utcnow
from shared.lease import OutboxLease, lease_table
from shared.outbox import stage_event
from tests.support import make_settings

pytestmark = pytest.mark.timeout(120)

OUTBOX = PipelineOutbox.__table__
LEASE = lease_table(OUTBOX)


@pytest.fixture
async def open_store(database_factory):
    """Opens the one migrated pipeline store again and again: each a process's own engines."""
    url = await database_factory("pipeline")
    opened: list[Database] = []

    def open_one() -> Database:
        opened.append(Database(url))
        return opened[-1]

    try:
        yield open_one
    finally:
        for db in opened:
            await db.dispose()


def lease_of(db: Database, tmp_path, **timing) -> OutboxLease:  # noqa: ANN001, ANN003
    settings = make_settings("127.0.0.1:1", tmp_path, **timing)
    return OutboxLease(db, OUTBOX, settings)


def takeovers(previous: str) -> float:
    return REGISTRY.get_sample_value("leadstream_relay_lease_takeovers_total",
                                     {"outbox": "pipeline_outbox", "from": previous}) or 0.0


async def test_one_holder_at_a_time_and_a_released_lease_is_taken_at_once(open_store, tmp_path):
    a, b = lease_of(open_store(), tmp_path), lease_of(open_store(), tmp_path)
    free_before = takeovers("free")
    assert await a.refresh() == "acquired" and a.held
    assert await b.refresh() is None and not b.held  # held by a: b only writes rows
    assert await a.refresh() is None and a.held  # renewed
    assert await b.refresh() is None and not b.held
    await a.release()
    assert not a.held and a.epoch is None
    assert await b.refresh() == "acquired" and b.held
    assert b.epoch == 2  # the fencing epoch grows at every change of holder
    assert takeovers("free") == free_before + 2
    assert REGISTRY.get_sample_value("leadstream_relay_lease_holder", {"outbox": "pipeline_outbox"}) == 1.0


async def test_racing_relays_take_a_free_lease_once(open_store, tmp_path):
    leases = [lease_of(open_store(), tmp_path) for _ in range(4)]
    changes = await asyncio.gather(*(lease.refresh() for lease in leases))
    assert changes.count("acquired") == 1 and changes.count(None) == 3
    assert sum(lease.held for lease in leases) == 1


async def test_a_holder_that_stops_renewing_stops_acting_before_another_takes_over(open_store, tmp_path):
    # a holder's own clock keeps it valid for lease - renew period (2.1 s) after its renewal
    # began: wide enough that a refresh on a loaded machine (CI saw more than 0.7 s) is still held
    timing = {"outbox_lease_s": 3.0, "outbox_lease_renew_s": 0.9}
    a, b = lease_of(open_store(), tmp_path, **timing), lease_of(open_store(), tmp_path, **timing)
    expired_before = takeovers("expired")
    assert await a.refresh() == "acquired"
    old_fence = a.fence()
    await asyncio.sleep(2.25)  # a is paused: no renewal
    assert not a.held  # its own clock: valid for lease - renew period after the renewal began
    assert await b.refresh() is None  # the lease itself has not expired yet
    await asyncio.sleep(1.2)
    assert await b.refresh() == "acquired" and b.held
    assert takeovers("expired") == expired_before + 1
    assert await a.refresh() == "lost" and a.epoch is None
    async with b.db.reader() as session:
        assert (await session.execute(select(func.count()).select_from(LEASE).where(old_fence))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(LEASE).where(b.fence()))).scalar_one() == 1


async def test_a_renewal_that_fails_suspends_the_holder_until_one_succeeds(open_store, tmp_path):
    a = lease_of(open_store(), tmp_path)
    assert await a.refresh() == "acquired"
    a.suspend()  # what the relay does when a renewal raises (the database is away)
    assert not a.held and a.epoch is not None
    assert await a.refresh() is None and a.held  # nobody took it meanwhile: renewed, same epoch


async def test_a_missing_lease_row_is_made_again_and_then_taken(open_store, tmp_path):
    from sqlalchemy import delete

    db = open_store()
    async with db.unit_of_work() as session:
        await session.execute(delete(LEASE))
    a = lease_of(db, tmp_path)
    assert await a.refresh() is None
    assert await a.refresh() == "acquired"


async def _stage(db: Database, n: int) -> list[int]:
    async with db.unit_of_work() as session:
        for i in range(n):
            email = f"c{i}@acme.example"
            event = make_event(LEAD_CAPTURED, LeadCaptured(email=email, occurred_at=utcnow(), fields={}),
                               source="/test", subject=email)
            stage_event(session, PipelineOutbox, event, key=email)
    async with db.reader() as session:
        return list((await session.execute(select(OUTBOX.c.id).order_by(OUTBOX.c.id))).scalars())


async def _marked(db: Database) -> int:
    await db.flush()
    async with db.reader() as session:
        return (await session.execute(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.published_at.is_not(None))
        )).scalar_one()


async def test_marks_of_a_relay_that_lost_its_lease_are_not_written(open_store, tmp_path):
    """The holder's marks of sent rows carry its fence: written (on SQLite with the batch
    writer's next transaction) only if its epoch is still the lease's."""
    from datetime import datetime, timezone

    a_db, b_db = open_store(), open_store()
    a, b = lease_of(a_db, tmp_path), lease_of(b_db, tmp_path)
    ids = await _stage(a_db, 6)
    assert await a.refresh() == "acquired"
    marks = {"published_at": datetime.now(timezone.utc), "published_cluster": "c1"}
    await a_db.update_later(OUTBOX, "id", ids[:2], marks, only_if=a.fence_params())
    assert await _marked(a_db) == 2
    fence = a.fence_params()
    await a_db.update_later(OUTBOX, "id", ids[2:4], marks, only_if=fence)  # deferred on SQLite
    async with b_db.unit_of_work() as session:  # a is paused long enough for its lease to expire
        await session.execute(update(LEASE).values(expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    assert await b.refresh() == "acquired"
    # on SQLite a's marks were deferred and then met b's epoch: not written; on PostgreSQL
    # they were written at once, while a held the lease
    before = 2 if isinstance(a_db.writes, SqliteWrites) else 4
    assert await _marked(a_db) == before
    await a_db.update_later(OUTBOX, "id", ids[4:], marks, only_if=fence)
    assert await _marked(a_db) == before
    await b_db.update_later(OUTBOX, "id", ids[2:], marks, only_if=b.fence_params())
    assert await _marked(b_db) == 6


async def test_a_service_shows_its_lease_on_metrics_and_hands_it_over_when_it_stops(broker, database_factory,
                                                                                      tmp_path):
    from services.capture.app import create_app
    from tests.support import eventually, serve_app

    url = await database_factory("capture")
    settings = make_settings(broker.bootstrap, tmp_path, service="capture", capture_database_url=url)
    holder = 'leadstream_relay_lease_holder{outbox="capture_outbox"} 1.0'

    async def holds(client) -> bool:  # noqa: ANN001
        return holder in (await client.get("/metrics")).text

    app = create_app(settings)
    async with serve_app(app) as client:
        await eventually(lambda: holds(client), timeout=20)
        text = (await client.get("/metrics")).text
        assert 'leadstream_relay_lease_takeovers_total{from="free",outbox="capture_outbox"}' in text
        lease = app.state.runtime.relay.lease
        assert lease.held
    assert lease.epoch is None  # released at the clean stop

    def taken(previous: str) -> float:
        return REGISTRY.get_sample_value("leadstream_relay_lease_takeovers_total",
                                         {"outbox": "capture_outbox", "from": previous}) or 0.0

    free, expired = taken("free"), taken("expired")
    second = create_app(settings)
    async with serve_app(second) as client:
        await eventually(lambda: holds(client), timeout=20)
        assert second.state.runtime.relay.lease.epoch == 2
    assert (taken("free"), taken("expired")) == (free + 1, expired)  # released, not expired
