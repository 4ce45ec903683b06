"""The guarantees under faults, with the real processes (issue: prove them, don't claim them).

One stack per backend runs the scenarios in turn; each sends a mixed stream of leads,
prospects and touches through the public APIs while something fails, then checks that
every accepted fact is in the pipeline store exactly once and that each qualified
contact has exactly one opportunity and one `opportunity.qualified` event. After each it
reads every topic from the beginning and reports messages, distinct event ids and repeats;
a phase whose fault kills no relay and restarts no broker adds no repeat (one relay per
outbox publishes, and a relay that stops cleanly hands its lease over), and after the broker
restarts empty it holds every event once.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from shared.events import LEADS_CAPTURED, OPPORTUNITIES_QUALIFIED, OUTREACH_TOUCHES, PIPELINE_CHANGES, dlq_topic
from tests.e2e.stack import (
    Accepted, FullStack, diagnose, lease_takeovers, print_topic_counts, relay_events, report, send_workload,
)
from tests.support import read_raw

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture
async def stack(database_factory, tmp_path):
    urls = {db: await database_factory(db) for db in ("capture", "outreach", "pipeline")}
    full = FullStack(urls, tmp_path)
    try:
        await full.start(workers=2)
        yield full
    finally:
        await full.close()


PIPELINE_TOPICS = (OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES)


async def _during(workload, fault) -> None:  # noqa: ANN001
    """Run the fault while the workload is being sent."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def timed() -> float:
        await workload
        return loop.time() - started

    task = asyncio.create_task(timed())
    await fault()
    faulted = loop.time() - started
    print(f"\n[during] fault over after {faulted:.1f} s, workload sent in {await task:.1f} s")


async def _check(stack: FullStack, name: str, accepted: Accepted, *, repeats_allowed: bool = True,
                 broker_restarted: bool = False) -> None:
    applied = await stack.wait_applied(accepted, timeout=150)
    counts = report(name, accepted, applied, await stack.qualified_report(), stack.tmp)
    if counts["lost"]:
        print(await diagnose(stack, accepted))
    assert counts == {"lost": 0, "duplicated": 0}
    # the broker comes back empty: its topics' counts start again
    before = None if broker_restarted else stack.topics_seen
    topics = await stack.topic_counts()
    print_topic_counts(name, topics, before)
    # every retained outbox row is on the broker of the moment (after a restart, sent again);
    # the input topics also hold what the poison flood wrote there directly
    retained = await stack.outbox_events()
    missing = {t: retained.get(t, 0) - c.distinct for t, c in topics.items()
               if c.distinct < retained.get(t, 0) or (c.distinct != retained.get(t, 0) and t in PIPELINE_TOPICS)}
    assert not missing, f"events retained in an outbox but not on the topic (or unknown ones on it): {missing}"
    takeovers = lease_takeovers(stack.tmp)
    print(f"[{name}] lease takeovers from a holder that stopped renewing, so far: {takeovers}")
    if not repeats_allowed and before is not None:
        assert {t: c.repeats for t, c in topics.items()} == {t: c.repeats for t, c in before.items()}, \
            f"no repeats without a crash or a broker restart (takeovers so far: {takeovers})\n" \
            f"{relay_events(stack.tmp)}"
    if broker_restarted:
        # The new broker got every retained event again, each once: what was in flight when the
        # old one went away was lost with it and sent once more, and nothing was in flight on
        # the new one (no relay crashed in this phase).
        assert {t: c.repeats for t, c in topics.items()} == dict.fromkeys(topics, 0), \
            f"repeats on the restarted broker (takeovers so far: {takeovers})\n{relay_events(stack.tmp)}"
    stack.topics_seen = topics


# Each phase's stream is spread over about as long as its fault lasts (``spread``), so every
# kill, restart and rebalance lands while facts are still arriving, not after a burst that
# was over in its first seconds: 2,020 facts per backend in all.
async def test_guarantees_hold_under_faults(stack):
    async with httpx.AsyncClient(timeout=10) as client:
        # (1) kill -9 of a qualification worker, several times, during the stream
        accepted = Accepted()

        async def kill_workers() -> None:
            for n in range(3):
                await asyncio.sleep(1.5)
                victim = stack.workers[n % 2]
                victim.kill()
                await asyncio.sleep(1.0)
                await asyncio.to_thread(victim.start)  # the stream goes on while it boots

        await _during(send_workload(stack, client, accepted, tag="kill", leads=250, prospects=75, spread=11.0),
                      kill_workers)
        await _check(stack, "worker kill -9 x3", accepted)

        # (2) the broker stopped and started again mid-stream (the embedded broker comes back empty)
        async def restart_broker() -> None:
            await asyncio.sleep(1.5)
            stack.broker.stop()
            await asyncio.sleep(2.0)
            await stack.broker.astart()

        await _during(send_workload(stack, client, accepted, tag="broker", leads=200, prospects=60, spread=4.0),
                      restart_broker)
        await _check(stack, "broker restart", accepted, broker_restarted=True)

        # (3) a worker joining and leaving the group mid-stream
        async def join_and_leave() -> None:
            await asyncio.sleep(1.0)
            extra = await asyncio.to_thread(stack.spawn, "qualification")
            await asyncio.sleep(6.0)
            await asyncio.to_thread(extra.stop)

        await _during(send_workload(stack, client, accepted, tag="rebalance", leads=200, prospects=60, spread=8.0),
                      join_and_leave)
        await _check(stack, "worker join + leave", accepted, repeats_allowed=False)

        # (4) capture killed with -9 between accepting and relaying
        async def kill_capture() -> None:
            await asyncio.sleep(1.0)
            stack.capture.kill()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(stack.capture.start)

        await _during(send_workload(stack, client, accepted, tag="capture", leads=200, prospects=30, spread=2.5),
                      kill_capture)
        await _check(stack, "capture kill -9", accepted)

        # (5) a flood of poison messages mixed into valid ones
        poison = await _poison_flood(stack, client, accepted)
        await _check(stack, "poison flood", accepted, repeats_allowed=False)
        dead = await read_raw(stack.broker.bootstrap, dlq_topic(LEADS_CAPTURED), expect=poison[LEADS_CAPTURED],
                              timeout=60)
        dead += await read_raw(stack.broker.bootstrap, dlq_topic(OUTREACH_TOUCHES), expect=poison[OUTREACH_TOUCHES],
                               timeout=60)
        marked = [r for r in dead if b"poison-" in (r.value or b"") or b"poison-" in (r.key or b"")]
        print(f"[poison flood] sent={sum(poison.values())} in_dlq={len({r.value for r in marked})}")
        assert len({r.value for r in marked}) == sum(poison.values())
        assert all(dict(r.headers).get("dlq-reason") for r in marked)


async def _poison_flood(stack: FullStack, client: httpx.AsyncClient, accepted: Accepted) -> dict[str, int]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap, acks="all")
    await producer.start()
    sent = {LEADS_CAPTURED: 0, OUTREACH_TOUCHES: 0}
    bad_values = [
        b"poison-not-json-%d",
        b'{"poison-%d": "not a cloudevent"}',
        b'{"specversion":"1.0","id":"poison-%d","source":"x","type":"io.unknown.v1",'
        b'"time":"2026-01-01T00:00:00Z","data":{}}',
        b'{"specversion":"1.0","id":"poison-%d","source":"x","type":"io.leadstream.lead.captured.v1",'
        b'"time":"2026-01-01T00:00:00Z","data":{"email":42}}',
    ]
    try:
        workload = asyncio.create_task(send_workload(stack, client, accepted, tag="poison", leads=150, prospects=30,
                                                     spread=2.0))
        for i in range(200):
            topic = LEADS_CAPTURED if i % 2 == 0 else OUTREACH_TOUCHES
            value = bad_values[i % len(bad_values)] % i
            await producer.send_and_wait(topic, value, key=f"poison-{i % 13}@x.example".encode())
            sent[topic] += 1
            if i % 20 == 0:
                await asyncio.sleep(0.05)
        await workload
    finally:
        await producer.stop()
    return sent
