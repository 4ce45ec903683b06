"""Capture: accepted leads/s with the durable write, against the bare FastAPI baseline.

The machine's speed drifts by a factor of two within minutes, so the two are measured in
alternating rounds (baseline, then capture) and each total is summed over the rounds. A
capture round lasts until its outbox has drained, so a relay that falls behind during the
round is paid for in the figure, and the baseline never shares the CPU with that backlog.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import orjson

from bench.harness import BaselineProcess, Row, Stack, rss_mib
from bench.load import build_request, run_load

LEAD = {
    "email": "Ada.Lovelace@analytical-engines.co.uk", "first_name": "Ada", "last_name": "Lovelace",
    "company": "Analytical Engines", "title": "VP Engineering", "employees": 250, "industry": "software",
    "country": "GB", "form_type": "demo_request", "page_url": "https://www.example.com/demo",
    "referrer": "https://www.google.com/", "utm": {"source": "google", "medium": "cpc", "campaign": "brand"},
}


def lead_request(port: int, idempotency: str | None = None):  # noqa: ANN201
    """With ``idempotency``, each lead carries its own ``Idempotency-Key`` (prefixed, so runs never repeat)."""

    def make(i: int) -> bytes:
        body = orjson.dumps(LEAD | {"email": f"lead{i}@company{i % 5000}.example"})
        headers = {"Idempotency-Key": f"{idempotency}-{i}"} if idempotency else None
        return build_request("127.0.0.1", port, "/v1/leads", body, headers=headers)

    return make


ROUNDS = 4


def _unpublished(stack: Stack) -> int:
    with sqlite3.connect(stack.tmp / "capture.db") as db:
        return db.execute("SELECT count(*) FROM capture_outbox WHERE published_at IS NULL").fetchone()[0]


def _drain(stack: Stack, timeout: float = 60.0) -> float:
    """Seconds until every accepted lead has been published."""
    started = time.perf_counter()
    while _unpublished(stack) and time.perf_counter() - started < timeout:
        time.sleep(0.02)
    return time.perf_counter() - started


def run(stack: Stack, seconds: float = 8.0) -> list[Row]:
    rows: list[Row] = []
    baseline = BaselineProcess(stack.tmp)
    capture = stack.services.get("capture") or stack.start("capture")
    rss_rest = rss_mib(capture.process.pid)
    base_requests = base_seconds = requests = busy = 0.0
    ratios = []
    try:
        asyncio.run(run_load("127.0.0.1", baseline.port, lead_request(baseline.port), duration=2))  # warm-up
        asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port), duration=2))
        _drain(stack)
        for _ in range(ROUNDS):
            base = asyncio.run(run_load("127.0.0.1", baseline.port, lead_request(baseline.port),
                                        duration=seconds / ROUNDS))
            measured = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port),
                                            duration=seconds / ROUNDS))
            assert set(measured.statuses) == {202}, measured.statuses
            spent = measured.seconds + _drain(stack)
            base_requests, base_seconds = base_requests + base.requests, base_seconds + base.seconds
            requests, busy = requests + measured.requests, busy + spent
            ratios.append((measured.requests / spent) / base.rate)
    finally:
        baseline.stop()
    rss_load = rss_mib(capture.process.pid)
    base_rate, rate = base_requests / base_seconds, requests / busy
    keyed = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port, "keyed"), duration=seconds))
    assert set(keyed.statuses) == {202}, keyed.statuses
    half = rate / 2
    paced = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port), duration=seconds, rate=half))
    rows += [
        Row("capture", f"bare FastAPI POST (baseline; {ROUNDS} rounds alternating with capture)", base_rate, "req/s"),
        Row("capture", f"POST /v1/leads, stored + outbox until published (rounds {min(ratios):.2f}-{max(ratios):.2f})",
            rate, "req/s", rate / base_rate, "≥ 0.60"),
        Row("capture", "POST /v1/leads with an Idempotency-Key each", keyed.rate, "req/s", keyed.rate / base_rate),
        Row("capture", f"p50 latency at half load ({half:,.0f} req/s)", paced.percentile(50) * 1000, "ms"),
        Row("capture", "p95 latency at half load", paced.percentile(95) * 1000, "ms"),
        Row("capture", "p99 latency at half load", paced.percentile(99) * 1000, "ms"),
        Row("capture", "RSS at rest", rss_rest, "MiB"),
        Row("capture", "RSS after load", rss_load, "MiB"),
    ]
    return rows
