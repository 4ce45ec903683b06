"""End to end: events/s from the public APIs to the pipeline store, and the lag from a lead's
``202`` to its ``opportunity.qualified`` event on the topic.

A stack of this section's own (broker, capture, outreach, qualification worker(s), pipeline
store in SQLite) so that no earlier section's events are in the way. Throughput: touches
posted through ``touches:batch`` (1,000 per request) and leads through ``POST /v1/leads``
(32 connections) at the same time, timed from the first request until every event is in
``processed_events``. Lag: a paced stream of demo-request leads with a business email,
company, title and size (each reaches ``sql`` at once under the shipped policy), from the
arrival of each ``202`` until a consumer reading ``opportunities.qualified`` sees the event
whose subject is that lead's email.

Two qualification workers in one group apply the stream (``BENCH_E2E_WORKERS``; on SQLite
their batches read in a snapshot and take turns only to write, and a row counts the batches
applied again because another worker wrote a contact they had read). ``e2e-pg`` runs the
same throughput with the pipeline store on PostgreSQL and two workers in the group
(``BENCH_E2E_PG_WORKERS``), on the same 2 cores as the APIs, the broker and the PostgreSQL
server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import Row, Stack, rss_mib
from bench.load import build_request, run_load
from bench.qualification import RssSampler, wait_applied
from bench.qualification_pg import counts_on
from leadstream.registry import aupgrade
from shared.events import OPPORTUNITIES_QUALIFIED, OPPORTUNITY_QUALIFIED
from tests.support import ROOT, create_postgres_database, drop_postgres_database, postgres_available, postgres_connect

LEADS = int(os.environ.get("BENCH_E2E_LEADS", "6000"))
TOUCHES = int(os.environ.get("BENCH_E2E_TOUCHES", "24000"))
WORKERS = int(os.environ.get("BENCH_E2E_WORKERS", "2"))
PG_WORKERS = int(os.environ.get("BENCH_E2E_PG_WORKERS", "2"))
BATCH = 1000
LAG_LEADS, LAG_RATE = 200, 20.0
FORMS = ["demo_request", "content_download", "webinar", "newsletter", "pricing"]
LEAD = {"first_name": "Ada", "last_name": "Lovelace", "title": "VP Engineering", "employees": 250,
        "industry": "software", "country": "GB", "page_url": "https://www.example.com/demo",
        "referrer": "https://www.google.com/", "utm": {"source": "google", "medium": "cpc", "campaign": "brand"}}
OUTCOMES = ["sent", "delivered", "opened", "clicked", "replied", "opened", "sent", "meeting_booked"]


def lead_request(port: int):  # noqa: ANN201
    def make(i: int) -> bytes:
        body = orjson.dumps(LEAD | {"email": f"lead{i}@company{i % 2000}.com", "company": f"Company {i % 2000}",
                                    "form_type": FORMS[i % len(FORMS)]})
        return build_request("127.0.0.1", port, "/v1/leads", body)

    return make


def batch_request(port: int, key: str):  # noqa: ANN201
    def make(i: int) -> bytes:
        touches = []
        for j in range(BATCH):
            n = i * BATCH + j
            c = n % 4000  # a few thousand prospects, several touches each
            touches.append({"email": f"p{c}@corp{c % 800}.com", "channel": "cold_email",
                            "outcome": OUTCOMES[n % len(OUTCOMES)], "rep": "rep@ourco.example",
                            "sequence": f"seq-{c % 5}", "step": 1 + n // 4000, "external_id": f"e2e-{n}"})
        return build_request("127.0.0.1", port, "/v1/touches:batch", orjson.dumps({"touches": touches}),
                             headers={"Authorization": f"Bearer {key}"})

    return make


async def wait_applied_pg(url: str, n: int, timeout: float) -> float:
    conn = await postgres_connect(url)  # one connection for the poll: no connect per look
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await counts_on(conn))[0] >= n:
                return time.time()
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise TimeoutError(f"fewer than {n} events applied after {timeout:.0f} s")


async def throughput(stack: Stack, key: str, pipeline_url: str | None = None) -> tuple[float, float, dict]:
    capture, outreach = stack.services["capture"], stack.services["outreach"]
    started = time.time()
    leads, touches = await asyncio.gather(
        run_load("127.0.0.1", capture.port, lead_request(capture.port), connections=32, duration=None, total=LEADS),
        run_load("127.0.0.1", outreach.port, batch_request(outreach.port, key), connections=2, duration=None,
                 total=TOUCHES // BATCH),
    )
    assert set(leads.statuses) == {202}, leads.statuses
    assert set(touches.statuses) == {200}, touches.statuses
    accepted = time.time()
    if pipeline_url is None:
        done = await asyncio.to_thread(wait_applied, stack.tmp / "pipeline.db", LEADS + TOUCHES, 900, 0.05)
    else:
        done = await wait_applied_pg(pipeline_url, LEADS + TOUCHES, 900)
    return accepted - started, done - started, {"leads": leads.rate, "touches": touches.rate * BATCH}


async def lag(stack: Stack) -> list[float]:
    """Seconds from each 202 to its qualified event on the topic (missing ones are left out and counted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker.bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10, auto_offset_reset="latest")
    await consumer.start()
    seen: dict[str, float] = {}
    accepted: dict[str, float] = {}
    try:
        meta = await consumer._client.fetch_all_metadata()  # noqa: SLF001
        tps = [TopicPartition(OPPORTUNITIES_QUALIFIED, p) for p in meta.partitions_for_topic(OPPORTUNITIES_QUALIFIED)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

        async def read() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for records in batch.values():
                    for r in records:
                        event = orjson.loads(r.value)
                        if event.get("type") == OPPORTUNITY_QUALIFIED:
                            seen.setdefault(event["subject"], now)

        reader = asyncio.create_task(read())
        url = stack.services["capture"].url + "/v1/leads"
        async with httpx.AsyncClient(timeout=10) as client:
            tag = int(time.time())

            async def send(i: int) -> None:
                email = f"lag{tag}-{i}@lagcorp{i}.com"
                body = LEAD | {"email": email, "company": f"Lag Corp {i}", "form_type": "demo_request"}
                r = await client.post(url, json=body)
                if r.status_code == 202:
                    accepted[email] = time.time()

            start = time.monotonic()
            sends = []
            for i in range(LAG_LEADS):
                await asyncio.sleep(max(0.0, start + i / LAG_RATE - time.monotonic()))
                sends.append(asyncio.create_task(send(i)))
            await asyncio.gather(*sends)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(accepted) <= set(seen):
            await asyncio.sleep(0.1)
        reader.cancel()
    finally:
        await consumer.stop()
    return sorted(seen[e] - accepted[e] for e in accepted if e in seen) + [float("inf")] * len(
        set(accepted) - set(seen)
    )


def snapshot_retries(stack: Stack) -> int:
    """Batches the workers applied again because their snapshot went stale (``WriteConflict``)."""
    total = 0.0
    for name, proc in stack.services.items():
        if name.startswith("qualification"):
            text = httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=10).text
            total += sum(sample.value for family in text_string_to_metric_families(text)
                         if family.name == "leadstream_consumer_retries" for sample in family.samples
                         if sample.name.endswith("_total") and sample.labels.get("kind") == "conflict")
    return int(total)


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def run(stack: Stack) -> list[Row]:  # noqa: ARG001 - a stack of its own
    return _run("e2e", WORKERS)


def run_pg(stack: Stack) -> list[Row]:  # noqa: ARG001
    """The same, with the pipeline store on PostgreSQL and two workers in the group."""
    if not postgres_available():
        return [Row("e2e-pg", "skipped: PostgreSQL is not answering", 0, "")]
    url = asyncio.run(create_postgres_database())
    try:
        asyncio.run(aupgrade("pipeline", url))
        return _run("e2e-pg", PG_WORKERS, url)
    finally:
        asyncio.run(drop_postgres_database(url))


def _run(section: str, workers: int, pipeline_url: str | None = None) -> list[Row]:
    own = Stack()
    store = {} if pipeline_url is None else {"LEADSTREAM_PIPELINE_DATABASE_URL": pipeline_url}
    try:
        own.start_broker()
        key = subprocess.run(
            [sys.executable, "-m", "leadstream.cli", "api-keys", "create", "--name", "bench-e2e",
             "--scope", "outreach"],
            env={**os.environ, **own.env}, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()
        own.start("capture")
        own.start("outreach")
        own.start_workers(workers, **store)
        pids = {name: p.process.pid for name, p in own.services.items()}
        time.sleep(6 + 3 * (workers - 1))  # the group settles (Tansu's join waits about half the session timeout)
        rest = {name: rss_mib(pid) for name, pid in pids.items()}
        with RssSampler(pids) as rss:
            accept_s, total_s, rates = asyncio.run(throughput(own, key, pipeline_url))
        events = LEADS + TOUCHES
        store_name = "SQLite" if pipeline_url is None else "PostgreSQL"
        rows = [
            Row(section, f"accepted by the APIs ({LEADS:,} leads, {TOUCHES:,} touches in batches of {BATCH})",
                events / accept_s, "events/s"),
            Row(section, f"API → Kafka → qualification ({workers} worker{'s' if workers > 1 else ''}) → "
                f"{store_name} store, all applied", events / total_s, "events/s", None, "≥ 3,000"),
            Row(section, "… batches applied again on a stale snapshot (another worker wrote a contact they read)",
                snapshot_retries(own), "batches"),
        ]
        if pipeline_url is None:
            lags = asyncio.run(lag(own))
            rows += [
                Row(section, f"lag 202 → opportunity.qualified p50 ({len(lags)} demo requests, {LAG_RATE:.0f}/s)",
                    percentile(lags, 50) * 1000, "ms"),
                Row(section, "lag 202 → opportunity.qualified p95", percentile(lags, 95) * 1000, "ms", None,
                    "≤ 1,000 ms"),
            ]
            for name in pids:
                rows.append(Row(section, f"RSS {name} at rest", rest[name], "MiB"))
                rows.append(Row(section, f"RSS {name} peak under load", rss.peak[name], "MiB"))
        return rows
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
