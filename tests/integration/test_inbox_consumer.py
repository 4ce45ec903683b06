"""The generic inbox consumer (shared/consumer.py) against the real broker and real databases.

A tiny handler writes one ``accounts`` row per event, so the store counts effects exactly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
import weakref

import orjson
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update
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
    retries = c.retries
    async with outage(harness.db, backend):
        await harness.produce([message(lead(f"during{i}@acme.example")) for i in range(5)])
        await eventually(lambda: _true(c.retries > retries), timeout=15)  # one during the outage
        assert await _count_when_up(harness) == 1
    await eventually(lambda: _eq(harness.accounts, 6), timeout=20)
    assert c.dead_lettered == 0
    dead = await read_raw(harness.broker.bootstrap, dlq_topic(LEADS_CAPTURED), expect=1, timeout=1.0, settle=0)
    assert dead == []


async def test_an_outage_waits_for_the_writes_in_flight_and_ends_with_the_busy_timeout_given_back(
        database_factory, backend):
    """The SQLite outage itself: it begins while a writer transaction of the service is open (a
    lease renewal) without freezing the event loop that transaction needs to end, and after it
    a write meeting another that holds the lock waits for it, as before (not the outage's 100 ms)."""
    if backend != "sqlite":
        pytest.skip("the SQLite outage's own mechanics")
    db = Database(await database_factory("pipeline"))

    async def holding_the_lock(seconds: float) -> None:
        async with db.engine.begin():  # BEGIN IMMEDIATE; its end is sent from the event loop
            await asyncio.sleep(seconds)

    async def meeting(write) -> None:  # noqa: ANN001
        holder = asyncio.create_task(holding_the_lock(0.3))
        await asyncio.sleep(0.05)
        await write()
        await holder

    async def unit_of_work() -> None:
        async with db.unit_of_work() as session:
            await session.execute(update(Account).where(Account.domain == "nobody").values(company="x"))

    try:
        await meeting(lambda: _outage_entered_and_left(db, backend))
        await meeting(unit_of_work)
        await meeting(lambda: db.writes.batch_writer.write([]))
    finally:
        await db.dispose()


async def _outage_entered_and_left(db: Database, backend: str) -> None:
    async with outage(db, backend):
        pass


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
    refusing connections and its open ones terminated.

    On SQLite the service's writes wait 30 s on a lock before failing: while inside, each
    connection the writer engine hands out and the batch writer's next one wait 100 ms; after,
    their own timeout again (a leftover 100 ms made writes that met after the outage fail: a
    relay's deferred marks dropped, their rows published twice). The lock is taken off the event
    loop, once the batch writer's writes in flight are done (one still opening its connection
    with 30 s waited that long on the lock, holding the write lock the consumer queued behind);
    taken on the loop, it froze the loop while a writer transaction of the service was open (a
    lease renewal), whose next statement the loop had to send, until it failed after 5 s."""

    SHORT_BUSY_MS = 100

    def __init__(self, db: Database, backend: str) -> None:
        self.db, self.backend = db, backend
        self._lock: sqlite3.Connection | None = None
        self._batch_writer = getattr(db.writes, "batch_writer", None)  # its own connection
        self._busy_ms: int | None = None

    async def __aenter__(self):  # noqa: ANN204
        if self.backend == "sqlite":
            await self._short_busy_timeout(True)
            try:
                self._lock = await asyncio.to_thread(self._take_lock, make_url(self.db.url).database)
            except BaseException:
                await self._short_busy_timeout(False)
                raise
        else:
            await _pg_admin(self.db.url, allow=False)
        return self

    async def __aexit__(self, *exc) -> None:  # noqa: ANN002
        if self._lock is not None:
            # the busy timeout first: no write that starts after the outage meets the short one
            try:
                await self._short_busy_timeout(False)
            finally:
                await asyncio.to_thread(self._release_lock, self._lock)
                self._lock = None
        else:
            await _pg_admin(self.db.url, allow=True)

    async def _short_busy_timeout(self, short: bool) -> None:
        engine = self.db.engine.sync_engine
        listener = _BusyTimeoutOnCheckout.of(engine)
        listener.short_ms = self.SHORT_BUSY_MS if short else None
        if self._batch_writer is not None:
            if short:
                self._busy_ms = self._batch_writer.busy_timeout_ms
            self._batch_writer.busy_timeout_ms = self.SHORT_BUSY_MS if short else self._busy_ms
            await self._batch_writer.disconnect()  # after its writes in flight

    @staticmethod
    def _take_lock(path: str) -> sqlite3.Connection:
        lock = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        try:
            lock.execute("BEGIN EXCLUSIVE")
        except BaseException:
            lock.close()
            raise
        return lock

    @staticmethod
    def _release_lock(lock: sqlite3.Connection) -> None:
        lock.execute("ROLLBACK")
        lock.close()


_CHECKOUT_LISTENERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> its listener


class _BusyTimeoutOnCheckout:
    """Sets the busy timeout of each connection an engine hands out: ``short_ms``, or (``None``)
    the one the connection had before it was shortened. Stays on the engine once added (a
    connection shortened and idle in the pool gets its own back when it is next handed out)."""

    def __init__(self) -> None:
        self.short_ms: int | None = None

    @classmethod
    def of(cls, engine) -> _BusyTimeoutOnCheckout:  # noqa: ANN001
        listener = _CHECKOUT_LISTENERS.get(engine)
        if listener is None:
            listener = _CHECKOUT_LISTENERS[engine] = cls()
            sa_event.listen(engine, "checkout", listener.checkout)
        return listener

    def checkout(self, dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        if record.info.get("outage_busy_ms") == self.short_ms:
            return
        cursor = dbapi_conn.cursor()
        try:
            if self.short_ms is not None and "own_busy_ms" not in record.info:
                cursor.execute("PRAGMA busy_timeout")
                record.info["own_busy_ms"] = cursor.fetchone()[0]
            ms = self.short_ms if self.short_ms is not None else record.info["own_busy_ms"]
            cursor.execute(f"PRAGMA busy_timeout={int(ms)}")
        finally:
            cursor.close()
        record.info["outage_busy_ms"] = self.short_ms


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
