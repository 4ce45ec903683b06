"""Capture as a user runs it: real `leadstream serve capture` process, real broker, HTTP in, CloudEvents out."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from shared.broker import EmbeddedBroker, free_port
from shared.events import LEADS_CAPTURED
from tests.support import ServiceProcess, read_until_ids

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def stack(database_factory, tmp_path):
    url = await database_factory("capture")
    broker = EmbeddedBroker(port=free_port())
    await broker.astart()
    env = {
        "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "LEADSTREAM_CAPTURE_DATABASE_URL": url,
        "LEADSTREAM_DATA_DIR": str(tmp_path),
        "LEADSTREAM_CAPTURE_RATE_LIMIT": "off",
        "LEADSTREAM_KAFKA_REQUEST_TIMEOUT_MS": "2000",
        "LEADSTREAM_OUTBOX_MAX_BACKOFF_S": "0.5",
    }
    capture = ServiceProcess("capture", env, tmp_path)
    try:
        capture.start()
        yield broker, capture
    finally:
        capture.stop()
        broker.stop()


async def post_leads(client: httpx.AsyncClient, base: str, start: int, count: int) -> list[str]:
    async def one(i: int) -> str:
        r = await client.post(
            f"{base}/v1/leads",
            json={"email": f"Lead{i}@Acme-{i % 7}.example", "form_type": "webinar"},
            headers={"Idempotency-Key": f"lead-{i}"},
        )
        assert r.status_code == 202, r.text
        return r.json()["event_id"]

    return list(await asyncio.gather(*(one(i) for i in range(start, start + count))))


async def test_leads_reach_the_topic_once_through_a_broker_outage_and_a_capture_crash(stack):
    broker, capture = stack
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = await post_leads(client, capture.url, 0, 40)
        broker.stop()  # the broker goes away: capture keeps answering 202
        accepted += await post_leads(client, capture.url, 40, 40)
        ready = await client.get(f"{capture.url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unavailable")
        # a client retry during the outage returns the same id and stores nothing new
        retry = await client.post(
            f"{capture.url}/v1/leads",
            json={"email": "Lead5@Acme-5.example", "form_type": "webinar"},
            headers={"Idempotency-Key": "lead-5"},
        )
        assert retry.json()["event_id"] == accepted[5]
        await broker.astart()  # back, empty, with a new cluster id
        accepted += await post_leads(client, capture.url, 80, 20)
        events = await read_until_ids(broker.bootstrap, LEADS_CAPTURED, set(accepted), timeout=60)
        counts = Counter(e.id for e in events)
        lost = set(accepted) - set(counts)
        redelivered = sum(n - 1 for n in counts.values())
        # Relays publish at least once: a send that was in flight when the broker restarted is
        # published again with the same event id (consumers deduplicate); nothing is lost.
        print(f"outage: accepted={len(accepted)} published={len(events)} lost={len(lost)} redelivered={redelivered}")
        assert not lost
        assert set(counts) == set(accepted)
        assert {e.subject for e in events} == {f"lead{i}@acme-{i % 7}.example" for i in range(100)}

        accepted += await post_leads(client, capture.url, 100, 20)
        capture.kill()  # -9 right after accepting: the relay may not have published (or marked) these
        capture.start()
        accepted += await post_leads(client, capture.url, 120, 10)
    events = await read_until_ids(broker.bootstrap, LEADS_CAPTURED, set(accepted), timeout=60)
    counts = Counter(e.id for e in events)
    lost = set(accepted) - set(counts)
    redelivered = sum(n - 1 for n in counts.values())
    # at least once: a crash between the broker's ack and marking the row may publish it again,
    # with the same event id, which consumers deduplicate
    print(f"crash: accepted={len(accepted)} published={len(events)} lost={len(lost)} redelivered={redelivered}")
    assert not lost
