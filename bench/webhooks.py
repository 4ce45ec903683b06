"""Webhook delivery: deliveries/s to a local receiver, and p95 from publication to the 2xx.

A subscription to a local receiver (``tests/receiver.py``, in this process, answering
``200`` at once) and one ``leadstream serve webhooks`` process on SQLite. Events
(``stage.changed``, a contact each for two of them) are published straight onto
``pipeline.changes``, as the outbox relay publishes a committed row: an event's ``time``
is its publication, so "from commit" here is from publication (the relay adds its own
milliseconds). First at a steady 500 events/s for 10 s (the latency figures), then a burst
of 10,000 published at once (deliveries/s: all of them over the time from the first
publication to the last 2xx).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import orjson

from bench.harness import Row, Stack
from pipeline_store.models import WebhookSubscription
from shared.db import Database
from shared.events import STAGE_CHANGED, make_event
from shared.kafka import KafkaGateway
from shared.secrets import DEVELOPMENT_KEY, SecretBox
from shared.settings import Settings
from shared.signatures import new_webhook_secret
from tests.receiver import Receiver

RATE = 500  # events/s in the steady phase
STEADY_S = 10
BURST = 10_000
HEADERS = [("content-type", b"application/cloudevents+json")]


def _event(n: int):  # noqa: ANN202
    email = f"contact{n // 2}@company{n % 97}.com"
    return make_event(STAGE_CHANGED, {
        "contact_id": f"c{n // 2}", "email": email, "to_stage": "mql" if n % 2 else "lead",
        "changed_by": "bench", "changed_at": datetime.now(timezone.utc).isoformat(),
    }, source="/bench", subject=email)


async def _publish(gateway: KafkaGateway, events: list) -> None:
    acked = await gateway.send_many([(e.topic, e.subject.encode(), e.to_bytes(), HEADERS) for e in events])
    assert all(acked), "the broker refused events"


async def _wait(receiver: Receiver, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.received) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _latencies(receiver: Receiver, start: int, sent: dict[str, float]) -> list[float]:
    out = []
    for request in receiver.received[start:]:
        published = sent.get(orjson.loads(request.body)["id"])
        if published is not None:
            out.append(request.at - published)
    return out


async def _measure(stack: Stack, settings: Settings) -> list[Row]:
    db = Database(settings.database_url("pipeline"))
    async with Receiver() as receiver:
        now = datetime.now(timezone.utc) - timedelta(seconds=1)
        async with db.unit_of_work() as s:
            s.add(WebhookSubscription(id=str(uuid.uuid4()), url=receiver.url, event_types=[STAGE_CHANGED],
                                      description="bench", status="active",
                                      secret=SecretBox(DEVELOPMENT_KEY).encrypt(new_webhook_secret()),
                                      created_by="bench", created_at=now, updated_at=now))
        await db.dispose()
        proc = await asyncio.to_thread(stack.start, "webhooks", LEADSTREAM_WEBHOOKS_ALLOW_HTTP="true",
                                       LEADSTREAM_WEBHOOKS_ALLOW_PRIVATE="true")
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = (await client.get(f"{proc.url}/v1/status")).json()
                if status["consumer"]["assignment"] and status["dispatcher"]["workers"]:
                    break
                await asyncio.sleep(0.2)
        gateway = KafkaGateway(settings, client_id="bench-webhooks")
        await gateway.start()
        try:
            # steady: RATE events/s in slices of 20 ms
            sent: dict[str, float] = {}
            per_slice, n = RATE // 50, 0
            started = time.perf_counter()
            for tick in range(STEADY_S * 50):
                await asyncio.sleep(max(started + tick / 50 - time.perf_counter(), 0))
                events = [_event(n + i) for i in range(per_slice)]
                n += per_slice
                at = time.time()
                await _publish(gateway, events)
                sent.update((e.id, at) for e in events)
            await _wait(receiver, len(sent), 120)
            steady = sorted(_latencies(receiver, 0, sent))
            steady_rate = len(steady) / max(max(r.at for r in receiver.received) - min(sent.values()), 1e-9)
            # burst: BURST events published at once
            before = len(receiver.received)
            burst_sent: dict[str, float] = {}
            first = time.time()
            for _ in range(BURST // 1000):
                events = [_event(n + i) for i in range(1000)]
                n += 1000
                at = time.time()
                await _publish(gateway, events)
                burst_sent.update((e.id, at) for e in events)
            await _wait(receiver, before + BURST, 300)
            burst = sorted(_latencies(receiver, before, burst_sent))
            last = max(r.at for r in receiver.received[before:])
        finally:
            await gateway.stop()
    p95 = steady[int(len(steady) * 0.95) - 1] if steady else float("nan")
    burst_rate = len(burst) / max(last - first, 1e-9)
    return [
        Row("webhooks", f"steady {RATE}/s for {STEADY_S} s: delivered", steady_rate, "deliveries/s"),
        Row("webhooks", "steady: p50 from publication to 2xx", statistics.median(steady) * 1000, "ms"),
        Row("webhooks", "steady: p95 from publication to 2xx", p95 * 1000, "ms", target="<= 1,000 ms"),
        Row("webhooks", f"burst of {BURST:,}: deliveries/s to one receiver", burst_rate, "deliveries/s",
            target=">= 500/s"),
        Row("webhooks", "burst: p95 from publication to 2xx", burst[int(len(burst) * 0.95) - 1] * 1000, "ms"),
        Row("webhooks", "delivered of published", len(steady) + len(burst), f"of {len(sent) + len(burst_sent)}"),
    ]


def run(stack: Stack) -> list[Row]:
    settings = Settings(kafka_bootstrap_servers=stack.broker.bootstrap, data_dir=stack.tmp)
    return asyncio.run(_measure(stack, settings))
