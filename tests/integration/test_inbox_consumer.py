"""The generic inbox consumer (shared/consumer.py) against the real broker and real databases.

A tiny handler writes one ``accounts`` row per event, so the store counts effects exactly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from pipeline_store.models import Account, ProcessedEvent
from shared.broker import EmbeddedBroker, free_port
from shared.consumer import Delivery, InboxConsumer, PermanentError
from shared.db import Database
from shared.events import (
    CONTENT_TYPE, LEAD_CAPTURED, LEADS_CAPTURED, LeadCaptured, dlq_topic, make_event, utcnow,
)
from shared.kafka import KafkaGateway
from tests.support import eventually, make_settings, read_raw

pytestmark = pytest.mark.timeout(120)

HEADERS = [("content-type", CONTENT_TYPE.encode())]


async def record_account(session, delivery: Delivery) -> None:
    fields = delivery.data.fields
    if fields.get("poison") == "permanent":
        raise PermanentError("this lead can never be applied")
    if fields.get("poison") == "bug":
        raise RuntimeError("a bug in the handler")
    now = utcnow()
    session.add(Account(domain=delivery.event.id, company=delivery.data.email, firmographics={},
                        created_at=now, updated_at=now))


def lead(email: str, **fields: str):
    return make_event(LEAD_CAPTURED, LeadCaptured(email=email, occurred_at=utcnow(), fields=fields),
                      source="/test", subject=email)


def message(event) -> tuple:
    return (LEADS_CAPTURED, event.subject.encode(), event.to_bytes(), HEADERS)


class Harness:
    def __init__(self, broker: EmbeddedBroker, url: str, tmp_path) -> None:  # noqa: ANN001
        self.broker = broker
        self.settings = make_settings(broker.bootstrap, tmp_path, pipeline_database_url=url,
                                      consumer_batch_size=50)
        self.group_id = f"test-{uuid.uuid4().hex[:8]}"
        self.db = Database(url)
        self.kafka = KafkaGateway(self.settings, "test-producer")
        self.consumers: list[InboxConsumer] = []

    def consumer(self, name: str = "test") -> InboxConsumer:
        c = InboxConsumer(self.db, self.kafka, self.settings, topics=[LEADS_CAPTURED],
                          handlers={LEAD_CAPTURED: record_account}, name=name, inbox_model=ProcessedEvent,
                          group_id=self.group_id, client_id=f"{name}-{len(self.consumers)}",
                          max_backoff_s=0.5)
        self.consumers.append(c)
        return c

    async def produce(self, messages: list[tuple]) -> None:
        assert all(await self.kafka.send_many(messages))

    async def accounts(self) -> int:
        async with self.db.reader() as s:
            return (await s.execute(select(func.count()).select_from(Account))).scalar_one()

    async def inbox(self) -> int:
        async with self.db.reader() as s:
            return (await s.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one()


@pytest.fixture
async def harness(database_factory, tmp_path):
    url = await database_factory("pipeline")
    broker = EmbeddedBroker(port=free_port())
    await broker.astart()
    h = Harness(broker, url, tmp_path)
    await h.kafka.start()
    try:
        yield h
    finally:
        for c in h.consumers:
            await c.stop()
        await h.kafka.stop()
        await h.db.dispose()
        broker.stop()


async def test_applies_each_event_once_and_commits_after_the_effect(harness):
    events = [lead(f"p{i}@acme.example") for i in range(40)]
    await harness.produce([message(e) for e in events])
    c = harness.consumer()
    c.start()
    await eventually(lambda: _eq(harness.accounts, 40))
    # the same events again (an upstream retry, a replay): nothing changes
    await harness.produce([message(e) for e in events[:10]] + [message(lead("new@acme.example"))])
    await eventually(lambda: _eq(harness.accounts, 41))
    await eventually(lambda: _true(c.duplicates == 10))
    assert await harness.inbox() == 41
    # offsets were committed: a new member of the same group reads nothing again
    await c.stop()
    again = harness.consumer("again")
    again.start()
    await again.wait_assigned()
    await asyncio.sleep(1.0)
    assert again.consumed == 0
    assert await harness.accounts() == 41


async def test_poison_messages_go_to_the_dlq_and_the_partition_keeps_flowing(harness):
    key = b"same@acme.example"  # one key: one partition, so "the next event" is really behind them
    good_before, good_after = lead("same@acme.example"), lead("same@acme.example")
    unknown = {**orjson.loads(good_before.to_bytes()), "id": "u-1", "type": "io.leadstream.unknown.v1"}
    bad_data = {**orjson.loads(good_before.to_bytes()), "id": "b-1", "data": {"email": 42}}
    poison = [
        (LEADS_CAPTURED, key, b"{not json", [("x-trace", b"abc")]),
        (LEADS_CAPTURED, key, orjson.dumps(unknown), HEADERS),
        (LEADS_CAPTURED, key, orjson.dumps(bad_data), HEADERS),
        message(lead("same@acme.example", poison="permanent")),
        message(lead("same@acme.example", poison="bug")),
    ]
    await harness.produce([message(good_before), *poison, message(good_after)])
    c = harness.consumer()
    c.start()
    await eventually(lambda: _eq(harness.accounts, 2))
    dead = await read_raw(harness.broker.bootstrap, dlq_topic(LEADS_CAPTURED), expect=5, settle=0.3)
    assert len(dead) == 5
    assert sorted(r.value for r in dead) == sorted(m[2] for m in poison)  # the ORIGINAL values
    by_value = {r.value: dict(r.headers) for r in dead}
    first = by_value[b"{not json"]
    assert first["x-trace"] == b"abc"  # original headers kept
    assert first["dlq-original-topic"] == LEADS_CAPTURED.encode()
    assert first["dlq-exception"] == b"InvalidEvent"
    assert b"not JSON" in first["dlq-reason"]
    assert {h["dlq-exception"] for h in by_value.values()} >= {b"InvalidEvent", b"PermanentError", b"RuntimeError"}
    offsets = sorted(int(h["dlq-original-offset"]) for h in by_value.values())
    assert len(set(offsets)) == 5 and all(h["dlq-original-partition"] for h in by_value.values())
    assert all(r.key == key for r in dead)
    await eventually(lambda: _true(c.dead_lettered == 5))
    assert await harness.inbox() == 2


async def test_a_database_outage_is_retried_never_dead_lettered(harness, backend):
    c = harness.consumer()
    c.start()
    await c.wait_assigned()
    await harness.produce([message(lead("warmup@acme.example"))])
    await eventually(lambda: _eq(harness.accounts, 1))
    async with outage(harness.db, backend):
        await harness.produce([message(lead(f"during{i}@acme.example")) for i in range(5)])
        await eventually(lambda: _true(c.retries > 0), timeout=15)
        assert await _count_when_up(harness) == 1
    await eventually(lambda: _eq(harness.accounts, 6), timeout=20)
    assert c.dead_lettered == 0
    dead = await read_raw(harness.broker.bootstrap, dlq_topic(LEADS_CAPTURED), expect=1, timeout=1.0, settle=0)
    assert dead == []


async def test_two_members_one_leaving_mid_stream_lose_and_duplicate_nothing(harness):
    a, b = harness.consumer("a"), harness.consumer("b")
    a.start()
    b.start()
    await asyncio.gather(a.wait_assigned(), b.wait_assigned())
    await eventually(lambda: _true(len(a.assignment) + len(b.assignment) == harness.settings.kafka_partitions))
    total = 0
    for round_ in range(6):
        batch = [lead(f"m{round_}-{i}@acme{i % 13}.example") for i in range(100)]
        await harness.produce([message(e) for e in batch])
        total += len(batch)
        if round_ == 2:
            await b.stop()  # leaves mid-stream; its partitions move to a
        await asyncio.sleep(0.2)
    await eventually(lambda: _eq(harness.accounts, total), timeout=40)
    assert await harness.inbox() == total
    await asyncio.sleep(0.5)
    assert await harness.accounts() == total
    assert a.applied + b.applied == total


# ------------------------------------------------------------------ helpers


class outage:  # noqa: N801
    """The database is unavailable while inside: SQLite locked by another writer, PostgreSQL
    refusing connections and its open ones terminated."""

    def __init__(self, db: Database, backend: str) -> None:
        self.db, self.backend = db, backend
        self._lock: sqlite3.Connection | None = None

    async def __aenter__(self):  # noqa: ANN204
        if self.backend == "sqlite":
            # the service waits up to its busy timeout before failing; shorten it for the test
            from sqlalchemy import event

            @event.listens_for(self.db.engine.sync_engine, "connect")
            def _short_busy(dbapi_conn, _):  # noqa: ANN001
                dbapi_conn.cursor().execute("PRAGMA busy_timeout=100")

            await self.db.engine.dispose()
            batch_writer = getattr(self.db.writes, "batch_writer", None)
            if batch_writer is not None:  # its own connection (group commits, deferred marks)
                batch_writer.busy_timeout_ms = 100
                await batch_writer.disconnect()
            self._lock = sqlite3.connect(make_url(self.db.url).database, timeout=5, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
        else:
            await _pg_admin(self.db.url, allow=False)
        return self

    async def __aexit__(self, *exc) -> None:  # noqa: ANN002
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
        else:
            await _pg_admin(self.db.url, allow=True)


async def _pg_admin(url: str, *, allow: bool) -> None:
    import asyncpg

    target = make_url(url)
    conn = await asyncpg.connect(host=target.host, port=target.port or 5432, user=target.username, database="postgres")
    try:
        await conn.execute(f'ALTER DATABASE "{target.database}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
        if not allow:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                               "AND pid <> pg_backend_pid()", target.database)
    finally:
        await conn.close()


async def _count_when_up(harness: Harness) -> int:
    """Counting needs the database too: read it through a side door while it is 'down'."""
    if harness.db.sqlite:
        path = make_url(harness.db.url).database
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
        except sqlite3.OperationalError:
            return 1  # an exclusive lock blocks readers too: nothing could have been written
        finally:
            conn.close()
    return 1


async def _eq(get, expected):  # noqa: ANN001, ANN202
    return (await get()) == expected


async def _true(value):  # noqa: ANN001, ANN202
    return value


async def test_a_member_stopped_while_joining_ends_its_join_and_commits_nothing(harness):
    """``stop()`` during the join cancels it (``shared.kafka.abandon_join``) instead of waiting
    for the broker's answer; nothing was read, so a later member reads everything."""
    events = [lead(f"j{i}@acme.example") for i in range(5)]
    await harness.produce([message(e) for e in events])
    joining = harness.consumer("joining")
    joining.start()
    await eventually(lambda: _true(_coordination_task(joining) is not None))
    task = _coordination_task(joining)
    await joining.stop()
    assert task.cancelled() and joining.consumer is None and joining.consumed == 0
    later = harness.consumer("later")
    later.start()
    await eventually(lambda: _eq(harness.accounts, 5))


def _coordination_task(consumer: InboxConsumer):  # noqa: ANN202
    """The aiokafka coordination task of the member being started (a private attribute, as
    ``abandon_join`` reads it: an aiokafka that renames it fails here)."""
    joining = consumer.joining
    coordinator = getattr(joining, "_coordinator", None)
    return None if coordinator is None else coordinator._coordination_task  # noqa: SLF001
