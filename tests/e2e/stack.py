"""The whole product as real processes: broker, capture, outreach, qualification workers, pipeline."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import Opportunity, ProcessedEvent
from shared.broker import EmbeddedBroker, free_port
from shared.db import Database
from shared.events import LEADS_CAPTURED, OPPORTUNITIES_QUALIFIED, OUTREACH_TOUCHES, PIPELINE_CHANGES
from tests.support import ServiceProcess, TopicCount, count_topic, read_raw, read_until_idle

TOPICS = (LEADS_CAPTURED, OUTREACH_TOUCHES, OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES)
T = TypeVar("T")


@dataclass
class Accepted:
    """Event ids the APIs acknowledged (the facts that must reach the store, once)."""

    ids: list[str] = field(default_factory=list)

    def add(self, event_id: str) -> None:
        self.ids.append(event_id)


class FullStack:
    def __init__(self, urls: dict[str, str], tmp: Path) -> None:
        self.tmp = tmp
        self.urls = urls
        self.broker = EmbeddedBroker(port=free_port())
        self.env: dict[str, str] = {}
        self.procs: list[ServiceProcess] = []
        self.capture: ServiceProcess | None = None
        self.outreach: ServiceProcess | None = None
        self.pipeline: ServiceProcess | None = None
        self.workers: list[ServiceProcess] = []
        self.api_key = ""
        self.store = Database(urls["pipeline"])
        self.topics_seen: dict[str, TopicCount] | None = None  # the last topic_counts, for what a phase added

    async def start(self, workers: int = 2) -> None:
        await self.broker.astart()
        self.env = {
            "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "LEADSTREAM_CAPTURE_DATABASE_URL": self.urls["capture"],
            "LEADSTREAM_OUTREACH_DATABASE_URL": self.urls["outreach"],
            "LEADSTREAM_PIPELINE_DATABASE_URL": self.urls["pipeline"],
            "LEADSTREAM_DATA_DIR": str(self.tmp),
            "LEADSTREAM_CAPTURE_RATE_LIMIT": "off",
            "LEADSTREAM_CAPTURE_FORM_RATE_LIMIT": "off",
            "LEADSTREAM_API_RATE_LIMIT": "off",
            "LEADSTREAM_KAFKA_REQUEST_TIMEOUT_MS": "3000",
            "LEADSTREAM_OUTBOX_MAX_BACKOFF_S": "1",
            "LEADSTREAM_LOG_LEVEL": "WARNING",
        }
        self.api_key = await self.create_key("fault-suite", "outreach", "pipeline")
        # every process boots at once (as ``leadstream run`` starts them), then each is awaited
        self.capture = self.spawn("capture", wait=False)
        self.outreach = self.spawn("outreach", wait=False)
        self.pipeline = self.spawn("pipeline", wait=False)
        for _ in range(workers):
            self.workers.append(self.spawn("qualification", wait=False))
        for proc in self.procs:
            await asyncio.to_thread(proc.wait_healthy)

    async def create_key(self, name: str, *scopes: str) -> str:
        """A new API key in the stack's outreach and pipeline databases, as ``leadstream api-keys
        create`` makes it (its function, in a thread: a CLI process costs ~2 s of CPU to start;
        the command itself is tested in tests/integration/test_outreach_api.py)."""
        from leadstream.admin import create_api_key
        from shared.settings import Settings

        settings = Settings(data_dir=self.tmp, outreach_database_url=self.urls["outreach"],
                            pipeline_database_url=self.urls["pipeline"])
        _, key = await asyncio.to_thread(create_api_key, settings, name, list(scopes))
        return key

    def spawn(self, service: str, *, wait: bool = True) -> ServiceProcess:
        proc = ServiceProcess(service, self.env, self.tmp)
        self.procs.append(proc)  # stopped by ``stop`` even if it never gets healthy
        proc.start(wait=wait)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.broker.stop()

    async def close(self) -> None:
        self.stop()
        await self.store.dispose()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def applied(self, ids: list[str]) -> int:
        """How many of ``ids`` the pipeline store has applied (inbox rows)."""
        found = 0
        async with self.store.reader() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found += (await session.execute(
                    select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.event_id.in_(chunk))
                )).scalar_one()
        return found

    async def wait_applied(self, accepted: Accepted, timeout: float = 120.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        applied = 0
        while asyncio.get_running_loop().time() < deadline:
            applied = await self.applied(accepted.ids)
            if applied >= len(set(accepted.ids)):
                return applied
            await asyncio.sleep(0.5)
        return applied

    async def qualified_report(self) -> dict[str, int]:
        """Opportunities per contact in the store, and distinct qualified events per contact on the topic."""
        async with self.store.reader() as session:
            per_contact = (await session.execute(
                select(Opportunity.contact_id, func.count()).group_by(Opportunity.contact_id)
            )).all()
        opportunities = sum(n for _, n in per_contact)
        records = await read_raw(
            self.broker.bootstrap, OPPORTUNITIES_QUALIFIED, expect=opportunities, timeout=60, settle=2.0
        )
        import orjson

        distinct: dict[str, set[str]] = {}
        for r in records:
            event = orjson.loads(r.value)
            distinct.setdefault(event["subject"], set()).add(event["id"])
        return {
            "opportunities": opportunities,
            "contacts_with_several_opportunities": sum(1 for _, n in per_contact if n > 1),
            "qualified_contacts_on_topic": len(distinct),
            "contacts_with_several_qualified_events": sum(1 for ids in distinct.values() if len(ids) > 1),
        }


    async def read_outboxes(self, read: Callable[[Any, AsyncSession], Awaitable[T]]) -> list[T]:
        """``await read(model, session)`` for each service's outbox, in a read session of its
        database (the store's for the pipeline's; the others' opened and disposed of here)."""
        from services.capture.models import CaptureOutbox
        from services.outreach.models import OutreachOutbox
        from pipeline_store.models import PipelineOutbox

        found = []
        for name, model in (("capture", CaptureOutbox), ("outreach", OutreachOutbox), ("pipeline", PipelineOutbox)):
            db = self.store if name == "pipeline" else Database(self.urls[name])
            try:
                async with db.reader() as session:
                    found.append(await read(model, session))
            finally:
                if db is not self.store:
                    await db.dispose()
        return found

    async def outboxes_settled(self) -> bool:
        """Every outbox row published to the broker of the moment (after a restart the relays
        publish every retained row again, but the erased ones)."""
        from shared.outbox import ERASED

        async def waiting(model, session: AsyncSession) -> int:  # noqa: ANN001
            return (await session.execute(
                select(func.count()).select_from(model).where(
                    (model.published_at.is_(None))
                    | ((model.published_cluster != self.broker.cluster_id)
                       & (model.published_cluster != ERASED)))  # erased rows are never published again
            )).scalar_one()

        return not any(await self.read_outboxes(waiting))

    async def outbox_events(self) -> dict[str, int]:
        """Per topic, the event ids the outboxes retain and may publish (every one but the erased):
        what a reader of the broker of the moment must find on it, each at least once."""
        from shared.outbox import ERASED

        async def retained(model, session: AsyncSession) -> list:  # noqa: ANN001
            return (await session.execute(
                select(model.topic, func.count(model.event_id)).where(
                    model.published_cluster.is_(None) | (model.published_cluster != ERASED)
                ).group_by(model.topic))).all()

        out: dict[str, int] = {}
        for rows in await self.read_outboxes(retained):
            for topic, count in rows:
                out[topic] = out.get(topic, 0) + count
        return out

    async def topic_counts(self, timeout: float = 120.0) -> dict[str, TopicCount]:
        """Once the outboxes are drained and settled: what a reader of each topic from the
        beginning gets (messages, distinct event ids, repeats), read until idle."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.outboxes_settled() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
        # the fault suite's poison flood writes what is no event to the input topics on purpose
        read = await asyncio.gather(*(read_until_idle(self.broker.bootstrap, t, idle=1.5, check_contract=False)
                                      for t in TOPICS))
        return {topic: count_topic(records) for topic, records in zip(TOPICS, read)}


def print_topic_counts(name: str, counts: dict[str, TopicCount], before: dict[str, TopicCount] | None = None) -> None:
    """Per topic: messages, distinct ids and repeats (and the repeats new since ``before``)."""
    for topic, count in counts.items():
        new = "" if before is None else f" (+{count.repeats - before[topic].repeats} repeats in this phase)"
        print(f"[{name}] {topic}: {count}{new}")
        if count.repeats and (before is None or count.repeats > before[topic].repeats):
            print(f"[{name}] {topic}: newest repeats: {'; '.join(count.repeated)}; partition ends now "
                  f"{dict(count.ends)}" + ("" if before is None else f", before {dict(before[topic].ends)}"))


async def send_workload(stack: FullStack, client: httpx.AsyncClient, accepted: Accepted, *, tag: str,
                        leads: int, prospects: int, touches_per_prospect: int = 3, concurrency: int = 16,
                        spread: float = 0.0) -> None:
    """Leads through capture, prospects and touches through outreach; records every accepted id.

    ``spread``: the seconds over which the leads start, evenly (the prospects likewise), so a
    stream of a given size lasts as long as the fault it runs beside instead of arriving at once."""
    sem = asyncio.Semaphore(concurrency)
    started = asyncio.get_running_loop().time()

    async def start_at(offset: float) -> None:
        delay = started + offset - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
    forms = ["demo_request", "newsletter", "content_download", "webinar", "pricing"]

    async def lead(i: int) -> None:
        body = {"email": f"{tag}-lead{i}@company{i % 50}.example", "company": f"Company {i % 50}",
                "title": "VP Marketing", "employees": 250, "form_type": forms[i % len(forms)],
                "utm": {"source": "google", "medium": "cpc", "campaign": tag}}
        await start_at(i * spread / leads)
        async with sem:
            for _ in range(40):  # a client retries with the same key until it gets an answer
                try:
                    r = await client.post(f"{stack.capture.url}/v1/leads", json=body,
                                          headers={"Idempotency-Key": f"{tag}-{i}"})
                    if r.status_code == 202:
                        accepted.add(r.json()["event_id"])
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
            raise AssertionError(f"lead {i} never accepted")

    async def prospect(i: int) -> None:
        email = f"{tag}-prospect{i}@target{i % 40}.example"
        body = {"email": email, "company": f"Target {i % 40}", "title": "Head of Sales", "employees": 800,
                "owner": "rep@ourco.example"}
        outcomes = ["sent", "opened", "meeting_booked" if i % 4 == 0 else "clicked"]
        touches = [{"email": email, "channel": "cold_email", "outcome": outcomes[s % 3], "sequence": tag,
                    "step": s + 1, "external_id": f"{tag}-{i}-{s}"} for s in range(touches_per_prospect)]
        await start_at(i * spread / prospects)
        async with sem:
            for _ in range(40):
                try:
                    r = await client.post(f"{stack.outreach.url}/v1/prospects", json=body, headers=stack.auth)
                    if r.status_code == 202:
                        accepted.add(r.json()["event_id"])
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
            for _ in range(40):
                try:
                    r = await client.post(f"{stack.outreach.url}/v1/touches:batch", json={"touches": touches},
                                          headers=stack.auth)
                    if r.status_code == 200:
                        for result in r.json()["results"]:
                            assert result["status"] in ("accepted", "duplicate"), result
                            accepted.add(result["event_id"])
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
            raise AssertionError(f"prospect {i} touches never accepted")

    await asyncio.gather(*(lead(i) for i in range(leads)), *(prospect(i) for i in range(prospects)))


def report(name: str, accepted: Accepted, applied: int, qualified: dict[str, int],
           logs: Path | None = None) -> dict[str, int]:
    ids = Counter(accepted.ids)
    lost = len(ids) - applied
    duplicated = qualified["contacts_with_several_opportunities"] + qualified["contacts_with_several_qualified_events"]
    stale = f" stale_snapshots={stale_snapshots(logs)}" if logs is not None else ""
    print(f"\n[{name}] accepted={len(ids)} applied={applied} lost={lost} duplicated={duplicated} "
          f"opportunities={qualified['opportunities']} qualified_on_topic={qualified['qualified_contacts_on_topic']}"
          f"{stale}")
    return {"lost": lost, "duplicated": duplicated}


def lease_takeovers(logs: Path) -> dict[str, int]:
    """Per outbox table, how often a relay took the lease from a holder that had stopped renewing
    it (a killed process, or one stalled for the lease time), from the services' logs."""
    import orjson

    taken: Counter = Counter()
    for path in logs.glob("*.log"):
        for line in path.read_bytes().splitlines():
            if b"outbox lease taken" in line and b'"expired"' in line:
                try:
                    taken[orjson.loads(line).get("outbox")] += 1
                except orjson.JSONDecodeError:
                    pass
    return dict(taken)


RELAY_EVENTS = (b"outbox relay failed", b"outbox lease", b"new broker cluster")


def relay_events(logs: Path, last: int = 20) -> str:
    """The relays' failures and lease changes in the services' logs (the newest ``last`` per log):
    what to read beside an unexpected repeat on a topic."""
    out = []
    for path in sorted(logs.glob("*.log")):
        lines = [line for line in path.read_bytes().splitlines() if any(e in line for e in RELAY_EVENTS)]
        out += [f"{path.name}: {line.decode(errors='replace')}" for line in lines[-last:]]
    return "\n".join(out)


def stale_snapshots(logs: Path) -> int:
    """Batches the workers applied again so far because another wrote what they had read
    (SQLite's snapshot reads: ``shared.consumer.STALE_SNAPSHOT`` in their logs)."""
    from shared.consumer import STALE_SNAPSHOT

    return sum(path.read_text(errors="replace").count(STALE_SNAPSHOT)
               for path in logs.glob("qualification*.log"))


async def diagnose(stack: FullStack, accepted: Accepted) -> str:
    """Where are the accepted facts the store has not applied? (printed when a check fails)"""
    from services.capture.models import CaptureOutbox
    from services.outreach.models import OutreachOutbox

    async with stack.store.reader() as session:
        applied = set((await session.execute(select(ProcessedEvent.event_id))).scalars())
    missing = [i for i in set(accepted.ids) if i not in applied]
    lines = [f"{len(missing)} accepted facts not applied"]
    cluster = stack.broker.cluster_id
    for name, model in (("capture", CaptureOutbox), ("outreach", OutreachOutbox)):
        db = Database(stack.urls[name])
        try:
            async with db.reader() as session:
                rows = (await session.execute(
                    select(model.event_id, model.topic, model.published_at, model.published_cluster)
                    .where(model.event_id.in_(missing[:500]))
                )).all()
        finally:
            await db.dispose()
        states = Counter(
            "unpublished"
            if r.published_at is None
            else ("current" if r.published_cluster == cluster else "old-cluster")
            for r in rows
        )
        lines.append(f"{name} outbox: {dict(states)}")
    import orjson

    for topic in ("leads.captured", "outreach.touches"):
        records = await read_raw(stack.broker.bootstrap, topic, expect=10**9, timeout=8, settle=0)
        on_topic = {orjson.loads(r.value).get("id") for r in records if r.value and r.value.startswith(b"{")}
        lines.append(f"{topic}: {len(records)} records, of the unapplied facts on the topic: "
                     f"{len([m for m in missing if m in on_topic])}")
    return "\n".join(lines)
