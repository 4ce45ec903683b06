"""Sending deliveries: one worker per subscription, so a receiver that hangs or fails delays
nobody else.

Each active subscription has its own worker task, its own HTTP connections (``Sender``) and
at most ``LEADSTREAM_WEBHOOKS_MAX_IN_FLIGHT`` requests at once. A worker reads the first
pending deliveries of its subscription in id order and sends the head of each key (the
oldest pending delivery of that contact) when due: a key's next delivery waits until the
one before it is delivered or dead, so each subscription sees each contact's events in
order, while other keys go on. Outcomes are written by one recorder in small batched
transactions; a worker releases a key only once its outcome is stored, so nothing is sent
twice by this process. What the workers share is only that recorder and the database, and
a broken receiver costs them one failed attempt per backoff step per key.

Several webhooks processes split the work as they split the topics: a process sends only
the deliveries of the partitions its consumer holds (a contact's events stay on one
partition, so with one owner per partition a key never has two senders).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.webhooks import repository
from services.webhooks.retries import next_attempt, retry_after_s
from services.webhooks.sender import Attempt, Sender
from services.webhooks.settings import WebhooksSettings
from shared.db import Database
from shared.secrets import SecretBox, UndecryptableSecret

log = structlog.get_logger("webhooks")

DELIVERED = Counter("leadstream_webhook_delivered_total", "Deliveries answered with a 2xx", ["subscription"])
RETRIED = Counter("leadstream_webhook_retried_total", "Failed attempts that will be tried again", ["subscription"])
DEAD = Counter("leadstream_webhook_dead_total", "Deliveries given up after the retry window", ["subscription"])
LATENCY = Histogram(
    "leadstream_webhook_delivery_latency_seconds",
    "From the event's publication (its Kafka timestamp, right after the commit) to the 2xx",
    ["subscription"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
IN_FLIGHT = Gauge("leadstream_webhook_in_flight", "Requests in flight", ["subscription"])

def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; the store writes them in UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


SCAN = 512  # pending rows a worker reads per round, in id order
HOUSEKEEP_EVERY_S = 600.0


@dataclass
class Config:
    id: str
    url: str
    secret: str
    status: str
    updated_at: datetime


class Recorder:
    """Writes outcomes of attempts in batched transactions; ``record`` returns once stored."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[tuple[dict, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks-recorder")

    async def record(self, outcome: dict) -> None:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let outcomes finishing in the same pass join the batch
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                async with self.db.unit_of_work() as session:
                    await repository.record(session, [o for o, _ in batch])
            except Exception as exc:  # noqa: BLE001 - database busy or away: keep them, try again
                log.warning("recording delivery outcomes failed; retrying", error=repr(exc)[:300], size=len(batch))
                self._queue[:0] = batch
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
                continue
            delay = 0.05
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def stop(self) -> None:
        if self._task is not None:
            deadline = time.monotonic() + 3
            while self._queue and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._task.cancel()


@dataclass
class Worker:
    """Sends one subscription's deliveries.

    A scan reads the subscription's first pending deliveries in id order and keeps the due
    head of each key not already held, payloads included, in ``ready``; requests are started
    from there while there is room, and the next scan comes when ``ready`` runs dry, when
    the consumer stored new deliveries, or after the poll interval. A request's slot is
    free as soon as its answer is in; its key stays held until the outcome is stored.
    """

    config: Config
    dispatcher: Dispatcher
    sender: Sender
    keys: set[str] = field(default_factory=set)  # keys with a delivery being sent or recorded
    in_flight: dict[int, asyncio.Task] = field(default_factory=dict)  # sent or being recorded
    sending: int = 0  # requests on the wire
    ready: deque = field(default_factory=deque)  # due heads from the last scan, not started
    rescan: bool = True
    # ids whose outcome was stored while a scan ran: its snapshot may still show them pending
    finished_in_scan: set[int] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    stopping: bool = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"webhooks-{self.config.id}")

    def news(self) -> None:
        """New deliveries were stored: scan again."""
        self.rescan = True
        self.wake.set()

    async def _run(self) -> None:
        settings = self.dispatcher.settings
        scanned_at = 0.0
        while not self.stopping:
            # cleared before the round: a request that ends during it wakes the next one
            self.wake.clear()
            wait = settings.webhooks_poll_interval_s
            try:
                if time.monotonic() - scanned_at >= settings.webhooks_poll_interval_s:
                    self.rescan = True
                if self.rescan:
                    scanned_at = time.monotonic()
                wait = min(wait, await self._round())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database busy or away
                log.warning("webhook worker round failed", subscription=self.config.id, error=repr(exc)[:300])
                self.rescan = True
            try:
                await asyncio.wait_for(self.wake.wait(), max(wait, 0.01))
            except TimeoutError:
                pass

    async def _round(self) -> float:
        """Start what is due; seconds until the next known due time (or the poll interval)."""
        settings = self.dispatcher.settings
        soonest = settings.webhooks_poll_interval_s
        room = settings.webhooks_max_in_flight - self.sending
        if room <= 0:
            return soonest
        if self.rescan or not self.ready:
            self.rescan = False
            soonest = await self._scan()
        while room > 0 and self.ready:
            row = self.ready.popleft()
            if row.key in self.keys or row.id in self.in_flight:
                continue
            self.keys.add(row.key)
            self.sending += 1
            room -= 1
            self.in_flight[row.id] = asyncio.create_task(self._deliver(row), name=f"webhook-delivery-{row.id}")
        IN_FLIGHT.labels(self.config.id).set(self.sending)
        return soonest

    async def _scan(self) -> float:
        settings = self.dispatcher.settings
        self.finished_in_scan = set()
        try:
            async with self.dispatcher.db.reader() as session:
                pending = await repository.pending(session, self.config.id, self.dispatcher.partitions(), scan=SCAN)
            finished = self.finished_in_scan
        finally:
            self.finished_in_scan = None
        now = datetime.now(timezone.utc)
        seen: set[str] = set()
        ready: deque = deque()
        soonest = settings.webhooks_poll_interval_s
        for row in pending:
            if row.key in seen:
                continue  # not its key's head
            seen.add(row.key)
            if row.key in self.keys or row.id in self.in_flight or row.id in finished:
                continue
            wait = (as_utc(row.next_attempt_at) - now).total_seconds()
            if wait > 0:
                soonest = min(soonest, wait)
                continue
            ready.append(row)
        self.ready = ready
        return soonest

    async def _deliver(self, row) -> None:  # noqa: ANN001
        settings = self.dispatcher.settings
        sub = self.config.id
        sending = True
        try:
            attempt = row.attempts + 1
            try:
                result = await self.sender.send(row.payload, self.config.secret, delivery_id=row.id,
                                                attempt=attempt, event_id=row.event_id)
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the delivery
                result = Attempt(False, None, f"{type(exc).__name__}: {str(exc)[:300]}")
            self.sending -= 1
            sending = False
            self.wake.set()  # the slot is free; the key stays held until the outcome is stored
            now = datetime.now(timezone.utc)
            outcome: dict = {"_key": row.id, "attempts": attempt, "last_status": result.status,
                             "last_error": result.error}
            if result.ok:
                outcome |= {"status": "delivered", "delivered_at": now}
            else:
                due = next_attempt(attempt, now, as_utc(row.expires_at), initial=settings.webhooks_backoff_initial_s,
                                   maximum=settings.webhooks_backoff_max_s, rand=random.random(),
                                   retry_after=retry_after_s(result.retry_after, now))
                outcome |= {"status": "dead"} if due is None else {"next_attempt_at": due}
            await self.dispatcher.recorder.record(outcome)
            if result.ok:
                DELIVERED.labels(sub).inc()
                LATENCY.labels(sub).observe(max((now - as_utc(row.published_at)).total_seconds(), 0.0))
            elif outcome.get("status") == "dead":
                DEAD.labels(sub).inc()
                log.warning("webhook delivery dead", subscription=sub, delivery=row.id, event_id=row.event_id,
                            attempts=attempt, error=result.error)
            else:
                RETRIED.labels(sub).inc()
        finally:
            if sending:
                self.sending -= 1
            self.keys.discard(row.key)
            self.in_flight.pop(row.id, None)
            if self.finished_in_scan is not None:
                self.finished_in_scan.add(row.id)
            IN_FLIGHT.labels(sub).set(self.sending)
            # the key's next delivery (now its head) is found by the next scan: when ``ready``
            # runs dry, when new deliveries arrive, or after the poll interval
            self.wake.set()

    async def stop(self, timeout: float = 3.0) -> None:
        """Let requests in flight finish (up to ``timeout``); cancelled ones stay pending."""
        self.stopping = True
        self.wake.set()
        if self.in_flight:
            await asyncio.wait(list(self.in_flight.values()), timeout=timeout)
        for task in list(self.in_flight.values()):
            task.cancel()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except BaseException:  # noqa: BLE001
                pass
        await self.sender.close()


class Dispatcher:
    """Keeps one worker per active subscription, in step with the subscriptions table."""

    def __init__(self, db: Database, settings: WebhooksSettings, box: SecretBox,
                 partitions: Callable[[], set[int]]) -> None:
        self.db, self.settings, self.box = db, settings, box
        self.partitions = partitions
        self.recorder = Recorder(db)
        self.workers: dict[str, Worker] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._housekept = time.monotonic()

    def start(self) -> None:
        self.recorder.start()
        self._task = asyncio.create_task(self._run(), name="webhooks-dispatcher")

    def wake(self) -> None:
        """New deliveries were stored (the consumer's commit): every worker looks now."""
        for worker in self.workers.values():
            worker.news()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                if time.monotonic() - self._housekept > HOUSEKEEP_EVERY_S:
                    await self.housekeep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database busy or away
                log.warning("reading subscriptions failed", error=repr(exc)[:300])
            await asyncio.sleep(self.settings.webhooks_poll_interval_s)

    async def refresh(self) -> None:
        """Start, update and stop workers to match the subscriptions table."""
        async with self.db.reader() as session:
            rows = await repository.subscriptions(session)
        active = {}
        for row in rows:
            if row.status != "active":
                continue
            current = self.workers.get(row.id)
            if current is not None and current.config.updated_at == row.updated_at:
                active[row.id] = current.config
                continue
            try:
                secret = self.box.decrypt(row.secret)
            except UndecryptableSecret as exc:
                log.error("subscription secret not readable; not delivering", subscription=row.id, error=str(exc))
                continue
            active[row.id] = Config(row.id, row.url, secret, row.status, row.updated_at)
        for sub_id in [s for s in self.workers if s not in active]:
            await self.workers.pop(sub_id).stop()
        for sub_id, config in active.items():
            worker = self.workers.get(sub_id)
            if worker is not None and worker.config.url != config.url:
                await self.workers.pop(sub_id).stop()
                worker = None
            if worker is None:
                worker = Worker(config, self, Sender(
                    config.url, timeout_s=self.settings.webhooks_timeout_s,
                    allow_http=self.settings.webhooks_allow_http, allow_private=self.settings.webhooks_allow_private,
                    max_connections=self.settings.webhooks_max_in_flight))
                self.workers[sub_id] = worker
                worker.start()
            else:
                worker.config = config

    async def housekeep(self) -> None:
        self._housekept = time.monotonic()
        before = datetime.now(timezone.utc) - timedelta(hours=self.settings.webhooks_retention_hours)
        async with self.db.unit_of_work() as session:
            delivered, seen = await repository.forget_before(session, before)
        if delivered or seen:
            log.info("webhook housekeeping", delivered_removed=delivered, inbox_removed=seen)

    def status(self) -> dict:
        return {"workers": {sub: {"in_flight": w.sending, "recording": len(w.in_flight) - w.sending,
                                  "ready": len(w.ready), "url": w.config.url}
                            for sub, w in self.workers.items()}}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001
                pass
        await asyncio.gather(*(w.stop() for w in self.workers.values()), return_exceptions=True)
        self.workers.clear()
        await self.recorder.stop()
