"""Qualification on PostgreSQL: one worker, then two in one consumer group, over the same
mixed events as ``bench.qualification`` (skipped when PostgreSQL does not answer).

Each variant has a broker and a pipeline store of its own. The workers start on empty
topics and join the group first (Tansu's join waits about half the session timeout), then
the events are produced; the rate is N divided by the time from the first applied event
until all N are in ``processed_events`` and the outbox holds nothing unpublished. On these
2 cores the PostgreSQL server, the broker and the workers share the CPU: this shows what a
second worker adds here, not what it adds on a machine with cores to spare.
"""

from __future__ import annotations

import asyncio
import shutil
import time

from bench.harness import Row, Stack
from bench.qualification import EVENTS, make_events, produce
from leadstream.registry import aupgrade
from tests.support import create_postgres_database, drop_postgres_database, postgres_available, postgres_connect


async def pg_counts(url: str) -> tuple[int, int, float | None]:
    """Events applied, derived events unpublished, and when the first was applied."""
    conn = await postgres_connect(url)
    try:
        return await counts_on(conn)
    finally:
        await conn.close()


async def counts_on(conn) -> tuple[int, int, float | None]:  # noqa: ANN001 - an asyncpg connection
    """``pg_counts`` over a connection the caller keeps (a poll loop connects once)."""
    applied = await conn.fetchval("SELECT count(*) FROM processed_events")
    pending = await conn.fetchval("SELECT count(*) FROM pipeline_outbox WHERE published_at IS NULL")
    first = await conn.fetchval("SELECT min(processed_at) FROM processed_events")
    return applied, pending, first.timestamp() if first is not None else None


def _measure(workers: int, messages: list, timeout: float = 600) -> float:
    own = Stack()
    url = asyncio.run(create_postgres_database())
    try:
        own.start_broker()
        asyncio.run(aupgrade("pipeline", url))
        own.start_workers(workers, LEADSTREAM_PIPELINE_DATABASE_URL=url)
        time.sleep(6 + 3 * (workers - 1))  # the group settles before the first record arrives
        asyncio.run(produce(own.broker.bootstrap, messages))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            applied, pending, first = asyncio.run(pg_counts(url))
            if applied >= len(messages) and pending == 0:
                return len(messages) / (time.time() - first)
            time.sleep(0.05)
        raise TimeoutError(f"{workers} worker(s) applied {applied} of {len(messages)} within {timeout:.0f} s")
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
        asyncio.run(drop_postgres_database(url))


def run(stack: Stack, events: int = EVENTS) -> list[Row]:  # noqa: ARG001 - each variant has its own stack
    if not postgres_available():
        return [Row("qualification-pg", "skipped: PostgreSQL is not answering", 0, "")]
    messages = make_events(events)
    one = _measure(1, messages)
    two = _measure(2, messages)
    return [
        Row("qualification-pg", f"1 worker on PostgreSQL applies {events:,} events and publishes what they derive",
            one, "events/s"),
        Row("qualification-pg", "2 workers in one group on PostgreSQL (same 2 cores)", two, "events/s", two / one),
    ]
