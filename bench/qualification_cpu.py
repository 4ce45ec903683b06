"""Qualification's CPU time in process: the inbox consumer's ``_apply`` over the events of the
``qualification`` section (``bench.qualification.make_events``) in batches, on a fresh store,
no broker and no relay. On a shared machine the CPU seconds of the applies (``process_time``,
every thread of the process: SQLite's work included) vary far less than a rate over wall time.
The garbage collector is tuned as in a served worker (``LEADSTREAM_GC_FREEZE``, default on:
``shared.observability.tune_gc`` once the store is ready); ``BENCH_GC_FREEZE=false`` keeps
Python's defaults, under which full collections were a fifth of the CPU.

    .venv/bin/python -m bench.qualification_cpu [events=20000] [batch=1000] [sqlite|postgres]
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import asyncpg

from bench.qualification import make_events
from leadstream import registry
from pipeline_store.models import ProcessedEvent
from services.qualification.handlers import bind, prefetch
from services.qualification.service import load_qualifier
from services.qualification.settings import QualificationSettings
from shared.consumer import InboxConsumer
from shared.db.unit_of_work import Database
from shared.events import LEADS_CAPTURED, OUTREACH_TOUCHES
from shared.observability import tune_gc
from shared.privacy import privacy_key

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


async def applied(url: str, settings: QualificationSettings, messages: list, batch: int) -> tuple[float, float]:
    """CPU and wall seconds of applying ``messages`` in batches of ``batch``."""
    qualifier = load_qualifier(settings.scoring_file, settings.channels_file)
    qualifier = dataclasses.replace(qualifier, privacy=privacy_key(settings))
    db = Database(url)
    consumer = InboxConsumer(db, None, settings, topics=(LEADS_CAPTURED, OUTREACH_TOUCHES),  # type: ignore[arg-type]
                             handlers=bind(qualifier), name="qualification", group_id="bench",
                             inbox_model=ProcessedEvent, prefetch=partial(prefetch, qualifier=qualifier),
                             snapshot=True)
    records = [SimpleNamespace(topic=t, partition=0, offset=i, key=k, value=v, timestamp=0)
               for i, (t, k, v) in enumerate(messages)]
    cpu = wall = 0.0
    try:
        for start in range(0, len(records), batch):
            items = [consumer._prepare(r) for r in records[start:start + batch]]  # noqa: SLF001
            cpu0, wall0 = time.process_time(), time.perf_counter()
            outcome = await consumer._apply(items)  # noqa: SLF001
            cpu += time.process_time() - cpu0
            wall += time.perf_counter() - wall0
            if len(outcome.applied) != len(items):
                raise RuntimeError(f"{len(items) - len(outcome.applied)} events of a batch not applied")
    finally:
        await db.dispose()
    return cpu, wall


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main(argv: list[str]) -> None:
    events = int(argv[0]) if argv else 20000
    batch = int(argv[1]) if len(argv) > 1 else 1000
    backend = argv[2] if len(argv) > 2 else "sqlite"
    tmp = Path(tempfile.mkdtemp())
    settings = QualificationSettings(data_dir=tmp, privacy_secret="bench-only-privacy-secret-unsafe-in-production")
    name = f"bench_qualification_cpu_{int(time.time())}_{os.getpid()}"
    if backend == "postgres":
        asyncio.run(_admin(f"CREATE DATABASE {name}"))
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp}/pipeline.db"
    registry.upgrade("pipeline", url)
    if os.environ.get("BENCH_GC_FREEZE", "true").lower() not in ("0", "false", "no"):
        tune_gc()
    cpu, wall = asyncio.run(applied(url, settings, make_events(events), batch))
    print(f"events={events} batch={batch} backend={backend} cpu={cpu:.2f}s wall={wall:.2f}s "
          f"cpu_rate={events / cpu:.0f}/s wall_rate={events / wall:.0f}/s")
    if backend == "postgres":
        asyncio.run(_admin(f"DROP DATABASE {name}"))


if __name__ == "__main__":
    main(sys.argv[1:])
