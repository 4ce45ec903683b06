"""A process that writes the pipeline store's outbox and runs its relay, as a qualification
worker or the pipeline service does: for the lease tests (``test_relay_lease_processes.py``).

    python -m tests.integration.outbox_process URL BOOTSTRAP NAME --rows N --keys K

Writes ``--rows`` events in transactions of ``--per-commit`` rows (``lead.captured`` events,
keyed ``k0@acme.example`` … by ``--keys`` keys that every such process shares, with the writer
and its sequence number in the data), through the group commit on SQLite (the relay's
in-memory fast path) and through units of work on PostgreSQL, where one advisory lock orders
the writers' transactions so that ids follow commit order (as the contacts' row locks order a
contact's events in the product). Prints ``WROTE`` when done and keeps relaying until SIGTERM,
then stops as a service does (the relay drains, writes its marks and releases the lease).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from sqlalchemy import text

from pipeline_store.models import PipelineOutbox
from shared.db import Database, GroupCommit
from shared.events import LEAD_CAPTURED, LeadCaptured, make_event, utcnow
from shared.kafka import KafkaGateway
from shared.observability import configure_logging
from shared.outbox import OutboxRelay, stage_event
from shared.settings import Settings


def events(name: str, start: int, count: int, keys: int, offset: int) -> list[tuple[object, str]]:
    out = []
    for n in range(start, start + count):
        email = f"k{(n + offset) % keys}@acme.example"
        data = LeadCaptured(email=email, occurred_at=utcnow(), fields={"writer": name, "n": str(n)})
        out.append((make_event(LEAD_CAPTURED, data, source=f"/test/{name}", subject=email), email))
    return out


async def write(db: Database, relay: OutboxRelay, args: argparse.Namespace) -> None:
    group = GroupCommit(db) if db.sqlite else None
    offset = sum(map(ord, args.name))
    try:
        for start in range(0, args.rows, args.per_commit):
            batch = events(args.name, start, min(args.per_commit, args.rows - start), args.keys, offset)
            if group is not None:
                async def work(session, batch=batch):  # noqa: ANN001, ANN202
                    for event, key in batch:
                        stage_event(session, PipelineOutbox, event, key=key)

                await group.submit(work)
            else:
                async with db.unit_of_work() as session:
                    await session.execute(text("SELECT pg_advisory_xact_lock(4242)"))
                    for event, key in batch:
                        stage_event(session, PipelineOutbox, event, key=key)
            relay.wake()
            await asyncio.sleep(args.pause)
    finally:
        if group is not None:
            await group.stop()
    print("WROTE", flush=True)


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        kafka_bootstrap_servers=args.bootstrap, pipeline_database_url=args.url, outbox_poll_interval_s=0.05,
        kafka_request_timeout_ms=3000, outbox_max_backoff_s=0.5, outbox_batch_size=args.batch_size,
        log_json=False, gc_freeze=False,
    )
    db = Database(settings.database_url("pipeline"))
    kafka = KafkaGateway(settings, client_id=f"lease-test-{args.name}")
    await kafka.start()
    relay = OutboxRelay(db, PipelineOutbox, kafka, settings, f"lease-test-{args.name}")
    relay.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    writer = asyncio.create_task(write(db, relay, args))
    await stop.wait()
    writer.cancel()
    await relay.stop()
    await kafka.stop()
    await db.dispose()
    print(f"STOPPED published={relay.published}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("bootstrap")
    parser.add_argument("name")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--per-commit", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=100)
    configure_logging("INFO", json=False)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
