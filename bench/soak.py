"""`make soak`: 100,000 events through the public APIs into the full product while processes and
the broker fail at random moments; prints accepted, applied, lost and duplicated (both must be
0), the throughput, and per topic the messages, distinct event ids and repeats a reader of the
topic from the beginning gets (repeats come only from the faults: a killed relay's rows in
flight, a broker restarted empty). Not part of CI (it takes 10–20 minutes on 2 cores).

    .venv/bin/python -m bench.soak [--events 100000] [--faults 20] [--backend sqlite|postgres] [--seed N]

The stack is the fault suite's (``tests.e2e.stack.FullStack``: broker, capture, outreach, two
qualification workers, pipeline). Faults, at random moments (every 2–7 s) until the workload
is sent and at least ``--faults`` happened: kill -9 of a qualification worker then its restart,
the broker stopped and started again (it comes back empty: the relays re-publish), kill -9 of
capture or of outreach then its restart. The clients retry with the same Idempotency-Key /
external_id until they get an answer, as a real client would.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import func, select

from leadstream.registry import aupgrade
from pipeline_store.models import ProcessedEvent
from tests.e2e.stack import Accepted, FullStack, diagnose, print_topic_counts, report

FORMS = ["demo_request", "newsletter", "content_download", "webinar", "pricing", "content_download"]
OUTCOMES = ["sent", "delivered", "opened", "clicked", "opened", "replied", "sent", "positive_reply", "meeting_booked"]
TOUCHES_PER_PROSPECT = 9
PROSPECTS_PER_BATCH = 10


class Workload:
    """Leads (30 %), prospects (7 %) and their touches (63 %, ``touches:batch``), with retries."""

    def __init__(self, stack: FullStack, events: int, tag: str) -> None:
        self.stack, self.tag = stack, tag
        self.leads = int(events * 0.30)
        groups = max((events - self.leads) // (PROSPECTS_PER_BATCH * (1 + TOUCHES_PER_PROSPECT)), 1)
        self.groups = groups
        self.leads = events - groups * PROSPECTS_PER_BATCH * (1 + TOUCHES_PER_PROSPECT)
        self.accepted = Accepted()
        self.sent = 0
        self.retries = 0

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict, headers: dict, ok: int) -> dict:
        for _ in range(2400):  # up to ~10 minutes of retries: the service may be restarting
            try:
                r = await client.post(url, json=body, headers=headers)
                if r.status_code == ok:
                    return r.json()
            except httpx.HTTPError:
                pass
            self.retries += 1
            await asyncio.sleep(0.25)
        raise AssertionError(f"never accepted: {url}")

    async def lead(self, client: httpx.AsyncClient, i: int) -> None:
        body = {"email": f"{self.tag}-lead{i}@company{i % 3000}.example", "company": f"Company {i % 3000}",
                "title": "VP Marketing", "employees": 250, "form_type": FORMS[i % len(FORMS)],
                "utm": {"source": "google", "medium": "cpc", "campaign": f"{self.tag}-{i % 20}"}}
        answer = await self._post(client, f"{self.stack.capture.url}/v1/leads", body,
                                  {"Idempotency-Key": f"{self.tag}-{i}"}, 202)
        self.accepted.add(answer["event_id"])
        self.sent += 1

    async def group(self, client: httpx.AsyncClient, g: int) -> None:
        touches = []
        for p in range(PROSPECTS_PER_BATCH):
            n = g * PROSPECTS_PER_BATCH + p
            email = f"{self.tag}-prospect{n}@target{n % 2000}.example"
            body = {"email": email, "company": f"Target {n % 2000}", "title": "Head of Sales", "employees": 800,
                    "owner": "rep@ourco.example"}
            answer = await self._post(client, f"{self.stack.outreach.url}/v1/prospects", body, self.stack.auth, 202)
            self.accepted.add(answer["event_id"])
            self.sent += 1
            touches += [{"email": email, "channel": "cold_email", "outcome": OUTCOMES[(n + s) % len(OUTCOMES)],
                         "sequence": self.tag, "step": s + 1, "external_id": f"{self.tag}-{n}-{s}"}
                        for s in range(TOUCHES_PER_PROSPECT)]
        answer = await self._post(client, f"{self.stack.outreach.url}/v1/touches:batch", {"touches": touches},
                                  self.stack.auth, 200)
        for result in answer["results"]:
            assert result["status"] in ("accepted", "duplicate"), result
            self.accepted.add(result["event_id"])
        self.sent += len(touches)

    async def run(self, client: httpx.AsyncClient, concurrency: int = 16) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        # interleave leads and prospect groups so both run for the whole soak
        ratio = max(self.leads // self.groups, 1)
        li = 0
        for g in range(self.groups):
            for _ in range(ratio):
                if li < self.leads:
                    queue.put_nowait(("lead", li))
                    li += 1
            queue.put_nowait(("group", g))
        while li < self.leads:
            queue.put_nowait(("lead", li))
            li += 1

        async def worker() -> None:
            while not queue.empty():
                kind, i = queue.get_nowait()
                await (self.lead(client, i) if kind == "lead" else self.group(client, i))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def inject_faults(stack: FullStack, done: asyncio.Event, minimum: int, rng: random.Random) -> Counter:
    faults: Counter = Counter()
    kinds = ["worker", "worker", "worker", "broker", "capture", "outreach"]
    while not done.is_set() or sum(faults.values()) < minimum:
        await asyncio.sleep(rng.uniform(2.0, 7.0))
        kind = rng.choice(kinds)
        at = time.strftime("%H:%M:%S")
        if kind == "worker":
            victim = rng.choice(stack.workers)
            victim.kill()
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            await asyncio.to_thread(victim.start)
        elif kind == "broker":
            stack.broker.stop()
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            await stack.broker.astart()
        else:
            victim = stack.capture if kind == "capture" else stack.outreach
            victim.kill()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await asyncio.to_thread(victim.start)
        faults[kind] += 1
        print(f"  {at} fault #{sum(faults.values())}: {kind}", file=sys.stderr, flush=True)
    return faults


async def wait_applied(stack: FullStack, accepted: Accepted, timeout: float) -> int:
    """Poll the inbox count first (cheap), then check the accepted ids one by one."""
    expected = len(set(accepted.ids))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with stack.store.reader() as session:
            count = (await session.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one()
        if count >= expected:
            applied = await stack.applied(list(set(accepted.ids)))
            if applied >= expected:
                return applied
        await asyncio.sleep(2)
    return await stack.applied(list(set(accepted.ids)))


async def databases(backend: str, tmp: Path) -> tuple[dict[str, str], list[str]]:
    urls: dict[str, str] = {}
    created: list[str] = []
    for db in ("capture", "outreach", "pipeline"):
        if backend == "postgres":
            from tests.support import create_postgres_database

            url = await create_postgres_database()
            created.append(url)
        else:
            url = f"sqlite+aiosqlite:///{tmp / f'{db}.db'}"
        await aupgrade(db, url)
        urls[db] = url
    return urls, created


async def soak(events: int, minimum_faults: int, backend: str, seed: int, keep_logs: bool = False) -> int:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="leadstream-soak-"))
    urls, created = await databases(backend, tmp)
    stack = FullStack(urls, tmp)
    rc = 1
    try:
        await stack.start(workers=2)
        workload = Workload(stack, events, tag=f"soak{seed}")
        print(f"soak: {events:,} events ({workload.leads:,} leads, {workload.groups * PROSPECTS_PER_BATCH:,} "
              f"prospects, {workload.groups * PROSPECTS_PER_BATCH * TOUCHES_PER_PROSPECT:,} touches) on {backend}, "
              f"≥ {minimum_faults} faults; logs in {tmp}", file=sys.stderr, flush=True)
        started = time.monotonic()
        done = asyncio.Event()
        fault_task = asyncio.create_task(inject_faults(stack, done, minimum_faults, rng))
        async with httpx.AsyncClient(timeout=10) as client:
            send = asyncio.create_task(workload.run(client))
            while not send.done():
                await asyncio.sleep(10)
                print(f"  sent {workload.sent:,} / {events:,}", file=sys.stderr, flush=True)
            await send
        sent_s = time.monotonic() - started
        done.set()
        faults = await fault_task
        print(f"  all sent in {sent_s:.0f} s; waiting until applied", file=sys.stderr, flush=True)
        applied = await wait_applied(stack, workload.accepted, timeout=1200)
        total_s = time.monotonic() - started
        counts = report("soak", workload.accepted, applied, await stack.qualified_report(), tmp)
        if counts["lost"]:
            print(await diagnose(stack, workload.accepted))
        accepted = len(set(workload.accepted.ids))
        print(f"faults={sum(faults.values())} ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}) "
              f"client_retries={workload.retries}")
        print(f"accepted={accepted} applied={applied} lost={counts['lost']} duplicated={counts['duplicated']}")
        print(f"throughput: {accepted / total_s:,.0f} events/s end to end ({total_s:.0f} s until all applied; "
              f"{accepted / sent_s:,.0f} events/s accepted while sending, {sent_s:.0f} s)")
        # since the last broker restart (it comes back empty, and the relays publish again)
        topics = await stack.topic_counts(timeout=600)
        print_topic_counts(f"soak, topics since the broker's last start ({faults['broker']} restarts)", topics)
        # every event an outbox retains is on the broker of the moment, each id at least once
        retained = await stack.outbox_events()
        missing = {t: retained.get(t, 0) - c.distinct for t, c in topics.items() if c.distinct != retained.get(t, 0)}
        print(f"retained in the outboxes: {retained}; missing on the topics: {missing or 'none'}")
        rc = 0 if (counts == {"lost": 0, "duplicated": 0} and sum(faults.values()) >= minimum_faults
                   and not missing) else 1
        return rc
    finally:
        await stack.close()
        if created:
            from tests.support import drop_postgres_database

            for url in created:
                await drop_postgres_database(url)
        if rc == 0 and not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs even when it passes")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(soak(args.events, args.faults, args.backend, args.seed, args.keep_logs)))


if __name__ == "__main__":
    main()
