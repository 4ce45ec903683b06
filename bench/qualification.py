"""Qualification: events/s applied by ONE worker, against a raw aiokafka consume loop over the
same messages in the same run.

N mixed CloudEvents (leads, prospects and touches for a few thousand contacts of 1,500
companies with business domains, so accounts are merged as well) are produced
straight to ``leads.captured`` and ``outreach.touches`` of a broker of this section's own.
The baseline is a plain ``AIOKafkaConsumer`` reading all N and json-decoding them. Then
``leadstream serve qualification`` starts on the backlog; its rate is N divided by the time
from the first batch's transaction (the earliest ``processed_events.processed_at``) until all
N rows are in ``processed_events`` and every event they derived (stage changes, qualified
opportunities) has left the outbox for its topic — a worker is not done while its relay is
behind. Process start-up and the group join are left out and shown on a row of their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.harness import Row, Stack, rss_mib
from shared.events import (
    CONTENT_TYPE,
    LEAD_CAPTURED,
    LEADS_CAPTURED,
    OUTREACH_TOUCHES,
    PROSPECT_ADDED,
    TOUCH_RECORDED,
    LeadCaptured,
    ProspectAdded,
    TouchRecorded,
    make_event,
    parse_event,
)
from tests.support import ROOT

EVENTS = int(os.environ.get("BENCH_QUALIFICATION_EVENTS", "20000"))
FORMS = ["demo_request", "content_download", "webinar", "newsletter", "pricing", "trial_signup", "content_download"]
OUTCOMES = ["sent", "delivered", "opened", "opened", "clicked", "replied", "sent", "positive_reply", "meeting_booked"]
TITLES = ["VP Marketing", "Head of Sales", "Marketing Manager", "Software Engineer", "CEO", "Director of RevOps"]
INDUSTRIES = ["software", "fintech", "healthcare", "retail", "manufacturing"]


def make_events(n: int) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of ``n`` mixed events: a third inbound contacts with leads, two thirds
    outbound prospects with touches, and some touches on inbound contacts (blended)."""
    contacts = max(n // 6, 10)
    now = datetime.now(timezone.utc) - timedelta(days=1)
    out: list[tuple[str, bytes, bytes]] = []
    per_contact: list[int] = [0] * contacts
    i = 0
    while len(out) < n:
        c = i % contacts
        seq = per_contact[c]
        per_contact[c] += 1
        i += 1
        email = f"person{c}@company{c % 1500}.com"  # business domains: accounts are merged too
        at = now + timedelta(seconds=i)
        firm = {"company": f"Company {c % 1500}", "title": TITLES[c % len(TITLES)], "employees": 20 + (c % 40) * 37,
                "industry": INDUSTRIES[c % len(INDUSTRIES)], "country": "US" if c % 3 else "DE"}
        if c % 3 == 0:  # inbound
            if seq % 4 < 3:
                data = LeadCaptured(email=email, first_name="Ada", last_name=f"L{c}",
                                    form_type=FORMS[(c + seq) % len(FORMS)], form_id=f"form-{seq % 5}",
                                    page_url="https://www.example.com/p",
                                    utm={"source": "google", "medium": "cpc", "campaign": f"camp-{c % 12}"},
                                    occurred_at=at, **firm)
                event = make_event(LEAD_CAPTURED, data, source="/leadstream/capture", subject=email, time=at)
                out.append((LEADS_CAPTURED, email.encode(), event.to_bytes()))
                continue
            # a touch on an inbound contact: blended
        if seq == 0 and c % 3 != 0:
            data = ProspectAdded(
                email=email, owner=f"rep{c % 7}@ourco.example", list=f"list-{c % 9}", occurred_at=at, **firm
            )
            event = make_event(PROSPECT_ADDED, data, source="/leadstream/outreach", subject=email, time=at)
        else:
            data = TouchRecorded(email=email, channel="cold_email" if seq % 3 else "cold_call",
                                 outcome=OUTCOMES[(c + seq) % len(OUTCOMES)], rep=f"rep{c % 7}@ourco.example",
                                 sequence=f"seq-{c % 5}", step=seq, occurred_at=at, external_id=f"x-{c}-{seq}")
            event = make_event(TOUCH_RECORDED, data, source="/leadstream/outreach", subject=email, time=at)
        out.append((OUTREACH_TOUCHES, email.encode(), event.to_bytes()))
    return out


async def produce(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="lz4", linger_ms=5,
                                max_batch_size=262144)
    await producer.start()
    try:
        headers = [("content-type", CONTENT_TYPE.encode())]
        futures = [await producer.send(t, value=v, key=k, headers=headers) for t, k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, n: int, *, validate: bool = False) -> float:
    """Seconds for a plain consumer to read ``n`` records from the two topics and decode each
    (``validate``: also parse the envelope and the data schema as the worker does)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=2000)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (LEADS_CAPTURED, OUTREACH_TOUCHES)
               for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for r in records:
                    if validate:
                        parse_event(r.value).parsed_data()
                    else:
                        orjson.loads(r.value)
                seen += len(records)
            if time.perf_counter() - started > 120:
                raise TimeoutError(f"raw consumer read {seen} of {n}")
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    meta = await consumer._client.fetch_all_metadata()  # noqa: SLF001
    return meta.partitions_for_topic(topic) or set()


def applied_count(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM processed_events").fetchone()[0]


def first_applied_at(db: Path) -> float:
    with sqlite3.connect(db, timeout=30) as conn:
        value = conn.execute("SELECT min(processed_at) FROM processed_events").fetchone()[0]
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


class RssSampler:
    """Peak RSS of some processes, sampled every ``interval`` s in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.25) -> None:
        self.pids, self.interval = pids, interval
        self.peak = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    self.peak[name] = max(self.peak[name], rss_mib(pid))
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def unpublished_count(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM pipeline_outbox WHERE published_at IS NULL").fetchone()[0]


def wait_published(db: Path, timeout: float, poll: float = 0.02) -> float:
    """When every derived event (stage changes, qualified opportunities) is on its topic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if unpublished_count(db) == 0:
                return time.time()
        except sqlite3.OperationalError:
            pass
        time.sleep(poll)
    raise TimeoutError(f"{unpublished_count(db)} derived events still unpublished after {timeout:.0f} s")


def wait_applied(db: Path, n: int, timeout: float, poll: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if applied_count(db) >= n:
                return time.time()
        except sqlite3.OperationalError:
            pass
        time.sleep(poll)
    raise TimeoutError(f"only {applied_count(db)} of {n} events applied within {timeout:.0f} s")


def start_profiler(pid: int) -> subprocess.Popen | None:
    """With BENCH_PROFILE=DIR, py-spy records the worker while it applies (raw folded stacks)."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(pid), "-f", "raw", "-r", "200",
                             *os.environ.get("BENCH_PROFILE_FLAGS", "").split(),
                             "-o", f"{out}/qualification-{pid}.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def two_workers(messages: list[tuple[str, bytes, bytes]], timeout: float = 600) -> float:
    """Events/s of two workers in one group on one SQLite store (``bench.qualification_pg``'s
    way: the workers join first, then the events are produced; from the first applied event
    until all are applied and published)."""
    own = Stack()
    try:
        own.start_broker()
        own.start_workers(2)
        time.sleep(9)  # the group settles before the first record arrives
        asyncio.run(produce(own.broker.bootstrap, messages))
        db = own.tmp / "pipeline.db"
        wait_applied(db, len(messages), timeout)
        done = wait_published(db, timeout)
        return len(messages) / (done - first_applied_at(db))
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)


def run(stack: Stack, events: int = EVENTS) -> list[Row]:
    own = Stack()  # a broker and a pipeline store of this section's own: nothing else on the topics
    try:
        own.start_broker()
        messages = make_events(events)
        leads = sum(1 for t, _, _ in messages if t == LEADS_CAPTURED)
        asyncio.run(produce(own.broker.bootstrap, messages))
        raw_s = min(asyncio.run(raw_consume(own.broker.bootstrap, events)) for _ in range(2))
        parsed_s = asyncio.run(raw_consume(own.broker.bootstrap, events, validate=True))
        db = own.tmp / "pipeline.db"
        spawned = time.time()
        worker = own.start("qualification")
        rss_rest = rss_mib(worker.process.pid)
        profiler = start_profiler(worker.process.pid)
        with RssSampler({"qualification": worker.process.pid}) as rss:
            applied = wait_applied(db, events, timeout=600)
            done = wait_published(db, timeout=600)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        first = first_applied_at(db)
        worker_rate = events / (done - first)
        applied_rate = events / (applied - first)
        raw_rate = events / raw_s
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
    pair_rate = two_workers(messages)
    return [
        Row("qualification", f"raw aiokafka consume + orjson.loads, {events:,} records (baseline)", raw_rate,
            "events/s"),
        Row("qualification", "raw consume + CloudEvent and data validation (reference)", events / parsed_s,
            "events/s", raw_s / parsed_s),
        Row("qualification", f"1 worker applies {leads:,} leads + {events - leads:,} outreach events and "
            "publishes what they derive", worker_rate, "events/s", worker_rate / raw_rate, "≥ 0.25"),
        Row("qualification", "  … of which applied to the store (derived events still in its outbox)", applied_rate,
            "events/s"),
        Row("qualification", "start-up + group join before the first batch (excluded)", first - spawned, "s"),
        Row("qualification", "worker RSS after start", rss_rest, "MiB"),
        Row("qualification", "worker RSS peak while applying", rss.peak["qualification"], "MiB"),
        Row("qualification", "2 workers in one group on the same SQLite store (snapshot reads; ratio: × 1 worker)",
            pair_rate, "events/s", pair_rate / worker_rate),
    ]
