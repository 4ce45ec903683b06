"""The transactional outbox and its relay against a real Tansu broker and real databases."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import pytest
from sqlalchemy import func, select

from services.capture.models import CaptureOutbox
from shared.broker import EmbeddedBroker, free_port
from shared.db import Database
from shared.events import LEAD_CAPTURED, LEADS_CAPTURED, LeadCaptured, make_event, utcnow
from shared.kafka import KafkaGateway
from shared.outbox import OutboxRelay, stage_event
from tests.support import eventually, make_settings, read_raw, read_until_idle

pytestmark = pytest.mark.timeout(180)


def lead_event(email: str, n: int):
    return make_event(LEAD_CAPTURED, LeadCaptured(email=email, occurred_at=utcnow(), fields={"n": str(n)}),
                      source="/test", subject=email)


async def stage_many(db: Database, count: int, contacts: int = 5) -> list[str]:
    ids = []
    async with db.unit_of_work() as session:
        for i in range(count):
            email = f"c{i % contacts}@acme.example"
            event = lead_event(email, i)
            stage_event(session, CaptureOutbox, event, key=email)
            ids.append(event.id)
    return ids


async def pending(db: Database) -> int:
    async with db.reader() as s:
        return (await s.execute(select(func.count()).where(CaptureOutbox.published_at.is_(None)))).scalar_one()


@pytest.fixture
def group_writes() -> bool:
    """A SQLite file's write path: its group commit (``False``: the plain path; see below)."""
    return True


@pytest.fixture
async def setup(database_factory, tmp_path, group_writes):
    url = await database_factory("capture")
    broker = EmbeddedBroker(port=free_port())
    await broker.astart()
    settings = make_settings(broker.bootstrap, tmp_path, capture_database_url=url, kafka_request_timeout_ms=2000,
                             outbox_max_backoff_s=0.5)
    db = Database(url, group_writes=group_writes)
    kafka = KafkaGateway(settings, "test-relay")
    await kafka.start()
    relay = OutboxRelay(db, CaptureOutbox, kafka, settings, "capture-test")
    try:
        yield broker, db, relay, settings
    finally:
        await relay.stop()
        await kafka.stop()
        await db.dispose()
        broker.stop()


def by_key(records) -> dict[bytes, list[str]]:
    order = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        order[r.key].append(r.value)
    return order


async def test_relay_publishes_committed_rows_in_order_per_key(setup):
    broker, db, relay, _ = setup
    ids = await stage_many(db, 300)
    relay.start()
    await eventually(lambda: _zero(db), timeout=20)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=300, settle=0.3)
    import orjson

    got = [orjson.loads(r.value)["id"] for r in records]
    assert sorted(got) == sorted(ids)  # all, once
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in records)
    for key, values in by_key(records).items():  # per contact, in the order written
        seq = [int(orjson.loads(v)["data"]["fields"]["n"]) for v in values]
        assert seq == sorted(seq), key


async def _zero(db):
    return await pending(db) == 0


async def test_rolled_back_rows_are_never_published(setup):
    broker, db, relay, _ = setup
    with pytest.raises(RuntimeError):
        async with db.unit_of_work() as session:
            stage_event(session, CaptureOutbox, lead_event("rollback@acme.example", 0), key="rollback@acme.example")
            raise RuntimeError("the fact failed to store")
    kept = await stage_many(db, 3)
    relay.start()
    await eventually(lambda: _zero(db))
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=3, settle=0.5)
    assert len(records) == 3 and all(b"rollback@" not in r.key for r in records)
    assert len(kept) == 3


async def test_broker_down_keeps_rows_then_publishes_once_it_is_back(setup):
    broker, db, relay, settings = setup
    relay.start()
    await stage_many(db, 20)
    await eventually(lambda: _zero(db))
    broker.stop()
    later = await stage_many(db, 50)
    await asyncio.sleep(3)
    assert await pending(db) == 50  # nothing marked published while the broker is away
    await broker.astart(settings)  # the embedded broker comes back empty, with a new cluster id
    await eventually(lambda: _published_on(db, broker.cluster_id, 70), timeout=40)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=70, timeout=20, settle=1.0)
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    # the 20 published before the restart were lost with the old broker's memory and are
    # re-published; nothing was in flight at the restart, so the new broker has each row once
    assert len(got) == 70 and set(got.values()) == {1}
    assert set(later) <= set(got)
    assert relay.published == 90


async def _published_on(db: Database, cluster_id: str, count: int) -> bool:
    """``count`` rows, every one published to the cluster ``cluster_id``."""
    async with db.reader() as s:
        marks = (await s.execute(select(CaptureOutbox.published_cluster))).scalars().all()
    return len(marks) == count and set(marks) == {cluster_id}


async def test_retention_keeps_published_rows_then_deletes_them(setup):
    _, db, relay, settings = setup
    await stage_many(db, 5)
    relay.start()
    await eventually(lambda: _zero(db))
    async with db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one() == 5
    relay.settings = settings.model_copy(update={"outbox_retention_hours": 0.0})
    await relay._housekeep()  # noqa: SLF001
    async with db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one() == 0


async def test_an_idle_relay_republishes_after_the_broker_starts_anew(setup):
    broker, db, relay, settings = setup
    ids = await stage_many(db, 20)
    relay.start()
    await eventually(lambda: _zero(db))
    broker.stop()
    await broker.astart(settings)  # empty; nothing new is written meanwhile
    await eventually(lambda: _published_on(db, broker.cluster_id, 20), timeout=40)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=20, timeout=30, settle=0.5)
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    assert set(got) == set(ids) and set(got.values()) == {1}


async def test_send_many_puts_each_record_where_the_producer_would_in_order(setup):
    """Records go out as batches per partition built by the gateway: each on the partition the
    producer itself picks for its key, in the order given, however many batches a partition fills."""
    broker, _, relay, _ = setup
    kafka = relay.kafka
    await kafka.ensure_topics()
    keys = [f"k{i % 37}@acme.example".encode() for i in range(600)]
    values = [f"{i:04d}".encode() + b"x" * 2000 for i in range(600)]  # ~1.2 MB: several batches per partition
    assert await kafka.send_many([(LEADS_CAPTURED, k, v, []) for k, v in zip(keys, values)]) == [True] * 600
    placed = {
        k: (await (await kafka.producer.send(LEADS_CAPTURED, value=b"probe", key=k))).partition for k in set(keys)
    }
    # raw records, no events: read past the contract check
    records = [r for r in await read_until_idle(broker.bootstrap, LEADS_CAPTURED, idle=1.0, check_contract=False)
               if r.value != b"probe"]
    assert len(records) == 600
    assert all(r.partition == placed[r.key] for r in records)
    assert len(set(placed.values())) > 1
    for partition in set(placed.values()):
        sent = [r.value[:4] for r in sorted(records, key=lambda r: r.offset) if r.partition == partition]
        assert sent == sorted(sent)


def on_partition(prefix: str, count: int, partition: int = 0) -> list[tuple[str, bytes, bytes, list]]:
    """``count`` records whose keys the producer puts on ``partition`` of ``leads.captured``."""
    from shared.kafka import PARTITIONER

    out, i = [], 0
    while len(out) < count:
        key = f"{prefix}-{i}".encode()
        i += 1
        if PARTITIONER(key, [0, 1, 2, 3], [0, 1, 2, 3]) == partition:
            out.append((LEADS_CAPTURED, key, key, []))
    return out


async def test_a_send_in_flight_through_a_broker_restart_fails_and_loses_nothing_after(setup):
    """The cause of the embedded broker's lost writes after a restart: aiokafka re-sends a batch
    whose request failed, so a batch in flight when the broker went away reached the new one the
    moment it listened, before its topics existed; creating the topic then started the
    partition's offsets again at 0, and later acknowledged writes hid behind that batch (10 of 40
    unreadable here before the gateway stopped the re-send). Now the batch fails instead."""
    broker, _, relay, settings = setup
    kafka = relay.kafka
    assert await kafka.send_many(on_partition("warm", 1)) == [True]  # metadata of the first broker
    broker.stop()
    in_flight = asyncio.create_task(kafka.send_many(on_partition("stale", 30)))
    await asyncio.sleep(1.0)
    broker.start(create_topics=False)  # listening, no topics yet
    try:
        acked = await in_flight
    except Exception:  # noqa: BLE001 - nothing acknowledged: the gateway raises the error
        acked = [False] * 30
    assert not any(acked), "the batch went to a broker the producer had not been pointed at"
    await kafka.ensure_topics()
    later = []
    for n in range(4):
        batch = on_partition(f"new{n}", 10)
        assert await kafka.send_many(batch) == [True] * 10
        later += [key for _, key, _, _ in batch]
    records = await read_until_idle(broker.bootstrap, LEADS_CAPTURED, idle=1.0, check_contract=False)
    assert sorted(r.key for r in records) == sorted(later)


async def test_a_broker_found_new_with_its_topics_made_by_another_client_holds_the_first_send(setup, monkeypatch):
    """Another client (here the test, as ``leadstream broker`` or a second relay would) created the
    new broker's topics; the relay cannot tell whether that creation is over, so it waits
    ``NEW_BROKER_HOLD_S`` before it sends, then sends every retained row once."""
    from shared import outbox

    monkeypatch.setattr(outbox, "NEW_BROKER_HOLD_S", 3.0)  # a window the test can see on a busy machine
    broker, db, relay, settings = setup
    ids = await stage_many(db, 10)
    relay.start()
    await eventually(lambda: _zero(db))
    broker.stop()
    await broker.astart(settings)  # creates every topic, as the broker command does
    await eventually(lambda: _holding(relay), timeout=20)
    assert await pending(db) == 10  # re-queued, and not sent while holding
    await eventually(lambda: _published_on(db, broker.cluster_id, 10), timeout=20)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=10, timeout=20, settle=0.5)
    import orjson

    assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(ids)


async def _holding(relay: OutboxRelay) -> bool:
    return relay._holding()  # noqa: SLF001


# --- SQLite: rows the group commit wrote are published from memory -------------------------

def staged_lead(email: str, n: int):  # noqa: ANN201
    """A unit of work for the group commit: one ``lead.captured`` event in the outbox."""
    event = lead_event(email, n)

    async def work(session):  # noqa: ANN001, ANN202
        stage_event(session, CaptureOutbox, event, key=email)
        return event.id

    return work


async def group_commit_many(db: Database, relay: OutboxRelay, count: int, contacts: int = 5) -> list[str]:
    from shared.db import GroupCommit

    writer = GroupCommit(db)
    try:
        ids = []
        for start in range(0, count, 50):  # several batches, each answered after its commit
            ids += await asyncio.gather(*(writer.submit(staged_lead(f"c{i % contacts}@acme.example", i))
                                          for i in range(start, min(count, start + 50))))
            relay.wake()
        return ids
    finally:
        await writer.stop()


async def _trusted(relay: OutboxRelay) -> bool:
    return relay.fresh.trusted


def assert_once_in_order(records, ids: list[str]) -> None:
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    assert set(got) == set(ids) and set(got.values()) == {1}, "each event exactly once"
    for key, values in by_key(records).items():
        seq = [int(orjson.loads(v)["data"]["fields"]["n"]) for v in values]
        assert seq == sorted(seq), key


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_group_committed_rows_are_published_from_memory_once_and_in_order(setup):
    broker, db, relay, _ = setup
    assert relay.fresh is not None
    relay.start()
    await eventually(lambda: _trusted(relay))  # the table was read and found drained
    reads = []
    original = db.reader

    def counting_reader():  # noqa: ANN202
        reads.append(1)
        return original()

    db.reader = counting_reader
    ids = await group_commit_many(db, relay, 400)
    await eventually(lambda: _zero(db), timeout=20)
    db.reader = original
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=400, settle=0.5)
    assert_once_in_order(records, ids)
    # published without reading each batch back: the table is read about once a second
    # (rows other processes wrote or reset), plus the metrics' count
    assert len(reads) < 8 * 5, len(reads)


@pytest.mark.parametrize("group_writes", [True, False], ids=["group-commit", "plain-path"])
async def test_either_write_path_publishes_group_committed_rows_once_and_in_order(setup, group_writes):
    """The relay calls one interface whatever the database's write path: told of each row
    (a SQLite file's group commit) or not (the plain path: it reads the table), the same
    events go out, each once, in order per key."""
    broker, db, relay, _ = setup
    relay.start()
    ids = await group_commit_many(db, relay, 200)
    await eventually(lambda: _zero(db), timeout=20)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=200, settle=0.5)
    assert_once_in_order(records, ids)
    assert (getattr(db.writes, "batch_writer", None) is not None) == (db.sqlite and group_writes)
    assert (relay.fresh is not None) == db.writes.tells_inserts == (db.sqlite and group_writes)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_rows_written_another_way_send_the_relay_back_to_the_table(setup):
    """A unit of work's rows are not in memory: the relay reads the table again, so they are
    published, in order with the group commit's, and memory is trusted again once drained."""
    broker, db, relay, _ = setup
    relay.start()
    await eventually(lambda: _trusted(relay))
    first = await group_commit_many(db, relay, 100)
    other = await stage_many(db, 60)  # through a unit of work: memory no longer holds every row
    assert not relay.fresh.trusted
    relay.wake()
    last = await group_commit_many(db, relay, 100)
    await eventually(lambda: _zero(db), timeout=20)
    await eventually(lambda: _trusted(relay), timeout=10)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=260, settle=0.5)
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    assert set(got) == set(first + other + last) and set(got.values()) == {1}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_rows_reset_by_another_process_are_published_while_memory_is_trusted(setup):
    """Another process (a replay, an operator) marks rows unpublished: memory never hears of
    it, and the relay's periodic read of the table publishes them again."""
    from sqlalchemy import update

    broker, db, relay, _ = setup
    relay.start()
    await eventually(lambda: _trusted(relay))
    ids = await group_commit_many(db, relay, 50)
    await eventually(lambda: _zero(db))
    assert relay.fresh.trusted
    import sqlite3

    path = db.writes.batch_writer.path
    with sqlite3.connect(path) as other:  # not this process's writer: nothing tells the relay
        other.execute(update(CaptureOutbox.__table__).values(published_at=None).compile(
            compile_kwargs={"literal_binds": True}).string)
    assert await pending(db) == 50
    await group_commit_many(db, relay, 10)  # keep the relay busy publishing from memory
    await eventually(lambda: _zero(db), timeout=10)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=110, settle=0.5)
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    assert all(got[i] == 2 for i in ids)  # published, then published again after the reset


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_broker_outage_in_memory_mode_loses_nothing(setup):
    """Rows taken from memory whose send fails are read from the table once the broker is back."""
    broker, db, relay, settings = setup
    relay.start()
    await eventually(lambda: _trusted(relay))
    broker.stop()
    later = await group_commit_many(db, relay, 80)
    await asyncio.sleep(2)
    assert await pending(db) == 80
    await broker.astart(settings)
    await eventually(lambda: _published_on(db, broker.cluster_id, 80), timeout=40)
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=80, timeout=20, settle=1.0)
    import orjson

    got = Counter(orjson.loads(r.value)["id"] for r in records)
    # none lost, none twice: a send that was waiting for the broker when it went away fails
    # (the producer does not send it again by itself) and the relay sends its rows once the
    # new broker's topics exist
    assert set(got) == set(later) and set(got.values()) == {1}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_quiet_relay_writes_its_deferred_marks_without_waiting_for_a_commit(setup):
    """On SQLite the marks of published rows go with the next group commit. When none comes,
    the relay writes them itself at once, not at its next poll (here 30 s away): the table
    shows what is published while the system is quiet."""
    broker, db, relay, settings = setup
    relay.start()
    await eventually(lambda: _trusted(relay))
    settings.outbox_poll_interval_s = 30.0
    await asyncio.sleep(0.5)  # the relay is now in a 30 s wait, woken only by commits
    ids = await group_commit_many(db, relay, 30)
    await eventually(lambda: _zero(db), timeout=5)
    assert not db.writes.batch_writer.pending
    records = await read_raw(broker.bootstrap, LEADS_CAPTURED, expect=30, settle=0.5)
    assert_once_in_order(records, ids)
