"""Outreach: touches/s accepted through single POST /v1/touches and through touches:batch
(1,000 per request), each as a ratio to the bare FastAPI baseline of the same run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson

from bench.harness import BaselineProcess, Row, Stack
from bench.load import build_request, run_load
from tests.support import ROOT

TOUCH = {"email": "grace.hopper@navy-systems.example.com", "channel": "cold_email", "outcome": "opened",
         "rep": "rep@us.example", "sequence": "q4-enterprise", "step": 2}
BATCH = 1000


def touch_request(port: int, key: str | None = None, run: str = "measure"):  # noqa: ANN201
    """Each run its own external ids: a warm-up's ids again would be answered as duplicates."""
    headers = {"Authorization": f"Bearer {key}"} if key else None

    def make(i: int) -> bytes:
        body = orjson.dumps(TOUCH | {"email": f"p{i}@corp{i % 5000}.example", "external_id": f"{run}-{i}"})
        return build_request("127.0.0.1", port, "/v1/touches", body, headers=headers)

    return make


def batch_request(port: int, key: str):  # noqa: ANN201
    def make(i: int) -> bytes:
        touches = [TOUCH | {"email": f"p{j}@corp{j % 5000}.example", "external_id": f"b-{i}-{j}"} for j in range(BATCH)]
        return build_request("127.0.0.1", port, "/v1/touches:batch", orjson.dumps({"touches": touches}),
                             headers={"Authorization": f"Bearer {key}"})

    return make


def run(stack: Stack, seconds: float = 8.0) -> list[Row]:
    baseline = BaselineProcess(stack.tmp)
    try:
        asyncio.run(run_load("127.0.0.1", baseline.port, touch_request(baseline.port), duration=2))  # warm-up
        base = asyncio.run(run_load("127.0.0.1", baseline.port, touch_request(baseline.port), duration=seconds))
    finally:
        baseline.stop()
    key = subprocess.run(
        [sys.executable, "-m", "leadstream.cli", "api-keys", "create", "--name", "bench"],
        env={**os.environ, **stack.env}, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()
    outreach = stack.services.get("outreach") or stack.start("outreach")
    asyncio.run(run_load("127.0.0.1", outreach.port, touch_request(outreach.port, key, "warm"), duration=2))
    single = asyncio.run(run_load("127.0.0.1", outreach.port, touch_request(outreach.port, key), duration=seconds))
    assert set(single.statuses) == {202}, single.statuses  # every touch new: stored, not a duplicate
    batch = asyncio.run(run_load("127.0.0.1", outreach.port, batch_request(outreach.port, key), connections=4,
                                 duration=seconds))
    assert set(batch.statuses) == {200}, batch.statuses
    return [
        Row("outreach", "bare FastAPI POST of a touch (baseline)", base.rate, "touches/s"),
        Row("outreach", "POST /v1/touches, stored + outbox", single.rate, "touches/s", single.rate / base.rate),
        Row("outreach", f"POST /v1/touches:batch ({BATCH}/request)", batch.rate * BATCH, "touches/s",
            batch.rate * BATCH / base.rate),
        Row("outreach", "touches:batch p50 latency", batch.percentile(50) * 1000, "ms"),
    ]
