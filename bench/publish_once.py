"""How many times each event reaches the topics with the default `make run` shape: one
qualification worker and the pipeline service, both writing the pipeline store's outbox.

    .venv/bin/python -m bench.publish_once [--leads 1000] [--workers 1]

Posts ``--leads`` demo requests that qualify at once (each: one ``opportunity.qualified`` and
its stage changes on ``pipeline.changes``), waits until the store applied them and the outbox
is drained, then reads both topics from the beginning until idle, as a downstream team would,
and prints messages, distinct event ids, repeats and the repeats that arrived after a newer
event of their key. Not part of ``make bench``: a check of the publishing contract.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import time

import orjson

from bench.harness import Stack
from bench.load import build_request, run_load
from bench.qualification import wait_applied
from shared.events import OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES
from tests.support import count_topic, read_until_idle

LEAD = {"first_name": "Ada", "last_name": "Lovelace", "title": "VP Engineering", "employees": 250,
        "industry": "software", "country": "GB", "page_url": "https://www.example.com/demo",
        "referrer": "https://www.google.com/", "utm": {"source": "google", "medium": "cpc", "campaign": "brand"},
        "form_type": "demo_request"}


def lead_request(port: int, tag: str):  # noqa: ANN201
    def make(i: int) -> bytes:
        body = orjson.dumps(LEAD | {"email": f"{tag}{i}@company{i}.com", "company": f"Company {i}"})
        return build_request("127.0.0.1", port, "/v1/leads", body)

    return make


def pending_rows(path) -> int:  # noqa: ANN001
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM pipeline_outbox WHERE published_at IS NULL").fetchone()[0]


async def measure(stack: Stack, leads: int) -> dict:
    capture = stack.services["capture"]
    result = await run_load("127.0.0.1", capture.port, lead_request(capture.port, f"once{int(time.time())}-"),
                            connections=16, duration=None, total=leads)
    assert set(result.statuses) == {202}, result.statuses
    store = stack.tmp / "pipeline.db"
    await asyncio.to_thread(wait_applied, store, leads, 600, 0.2)
    deadline = time.monotonic() + 120
    while pending_rows(store) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    counts = {}
    for topic in (OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES):
        counts[topic] = count_topic(await read_until_idle(stack.broker.bootstrap, topic, idle=3.0))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    stack = Stack()
    try:
        stack.start_broker()
        stack.start("capture")
        stack.start_workers(args.workers)
        stack.start("pipeline")
        time.sleep(6)  # the group settles (Tansu's join waits about half the session timeout)
        counts = asyncio.run(measure(stack, args.leads))
    finally:
        stack.stop()
        shutil.rmtree(stack.tmp, ignore_errors=True)
    print(f"{args.leads} qualifying leads, {args.workers} qualification worker(s) and the pipeline service:")
    for topic, count in counts.items():
        print(f"  {topic}: {count}")


if __name__ == "__main__":
    main()
