"""Capture: accepted leads/s with the durable write, against the bare FastAPI baseline."""

from __future__ import annotations

import asyncio

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


def run(stack: Stack, seconds: float = 8.0) -> list[Row]:
    rows: list[Row] = []
    baseline = BaselineProcess(stack.tmp)
    try:
        asyncio.run(run_load("127.0.0.1", baseline.port, lead_request(baseline.port), duration=2))  # warm-up
        base = asyncio.run(run_load("127.0.0.1", baseline.port, lead_request(baseline.port), duration=seconds))
    finally:
        baseline.stop()
    capture = stack.services.get("capture") or stack.start("capture")
    rss_rest = rss_mib(capture.process.pid)
    asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port), duration=2))
    measured = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port), duration=seconds))
    rss_load = rss_mib(capture.process.pid)
    assert set(measured.statuses) == {202}, measured.statuses
    keyed = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port, "keyed"), duration=seconds))
    assert set(keyed.statuses) == {202}, keyed.statuses
    half = measured.rate / 2
    paced = asyncio.run(run_load("127.0.0.1", capture.port, lead_request(capture.port), duration=seconds, rate=half))
    rows += [
        Row("capture", "bare FastAPI POST (baseline)", base.rate, "req/s"),
        Row("capture", "POST /v1/leads, stored + outbox", measured.rate, "req/s", measured.rate / base.rate, "≥ 0.60"),
        Row("capture", "POST /v1/leads with an Idempotency-Key each", keyed.rate, "req/s", keyed.rate / base.rate),
        Row("capture", f"p50 latency at half load ({half:,.0f} req/s)", paced.percentile(50) * 1000, "ms"),
        Row("capture", "p95 latency at half load", paced.percentile(95) * 1000, "ms"),
        Row("capture", "p99 latency at half load", paced.percentile(99) * 1000, "ms"),
        Row("capture", "RSS at rest", rss_rest, "MiB"),
        Row("capture", "RSS after load", rss_load, "MiB"),
    ]
    return rows
