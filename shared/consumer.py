"""The inbox consumer: exactly-once effects from an at-least-once topic.

A consumer group reads the given topics with manual commits. Each batch of records
(one ``getmany``) is applied in ONE database transaction that also records every
applied event id in the inbox table; the Kafka offsets ``{tp: last + 1}`` are committed
only after that transaction committed. A redelivered or duplicated event finds its id
in the inbox and changes nothing.

Failures are sorted in three kinds:

- *invalid* (not a CloudEvent of a known type, bad data, no handler) or *permanent*
  (the handler raised ``PermanentError``, ``InvalidEvent`` or a validation error): the
  ORIGINAL key, value and headers go to ``<topic>.dlq`` with ``dlq-*`` headers, awaited
  before the offset commit, and the partition keeps flowing;
- *transient* (database busy or down, connection lost, Kafka unavailable): retried with
  exponential backoff for as long as it takes, never dead-lettered, never skipped;
- anything else (a bug, a unique-key race between workers): retried a few times in a
  transaction of its own, then dead-lettered, so one poison message cannot stop a
  partition forever.

When a batch transaction fails for a non-transient reason, the batch is applied again
one message per transaction, which isolates the poison message and applies the rest.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ValidationError
from sqlalchemy import BigInteger, DateTime, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import (
    Database, WriteConflict, check_before_write, in_chunks, is_transient_db_error, stage_insert, transaction_time,
)
from shared.events import EVENT_TYPES, CloudEvent, InvalidEvent, dlq_topic, parse_event
from shared.kafka import ConsumerRebalanceListener, KafkaGateway, abandon_join, create_consumer
from shared.settings import Settings
from shared.tracing import continuing

log = structlog.get_logger("consumer")

CONSUMED = Counter("leadstream_consumer_consumed_total", "Records read from Kafka", ["consumer", "topic"])
APPLIED = Counter("leadstream_consumer_applied_total", "Events applied (effect + inbox row committed)",
                  ["consumer", "topic", "type"])
DUPLICATES = Counter("leadstream_consumer_duplicates_total", "Events skipped because the inbox had their id",
                     ["consumer", "topic"])
DEAD_LETTERED = Counter("leadstream_consumer_dlq_total", "Records sent to the dead-letter topic",
                        ["consumer", "topic", "reason"])
RETRIES = Counter("leadstream_consumer_retries_total", "Retries after a failure", ["consumer", "kind"])
LAG = Gauge("leadstream_consumer_lag", "Records behind the partition's high watermark",
            ["consumer", "topic", "partition"])
LATENCY = Histogram(
    "leadstream_consumer_latency_seconds", "From the record's Kafka timestamp to its effect committed",
    ["consumer"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SECONDS = Histogram(
    "leadstream_consumer_batch_seconds", "Time to apply one batch (transaction + offset commit)",
    ["consumer"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


START_TIMEOUT_S = 60.0
STALE_SNAPSHOT = "stale snapshot, applying the batch again"  # logged per retry (the fault suite counts them)


class InboxMixin:
    """Columns of an inbox table (the ids of the events a consumer applied); each database
    that consumes declares ``class X(InboxMixin, Base)`` with a ``__tablename__`` of its own."""

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PermanentError(Exception):
    """Handling failed for a reason that retrying cannot fix: the message is dead-lettered."""


def is_transient(exc: BaseException) -> bool:
    """True for failures that go away by themselves: database busy or down (``shared.db.errors``),
    broker away."""
    return isinstance(exc, KafkaError) or is_transient_db_error(exc)


def is_permanent(exc: BaseException) -> bool:
    """True for failures no retry can fix: invalid input or a handler's explicit verdict."""
    return isinstance(exc, (PermanentError, InvalidEvent, ValidationError))


@dataclass(frozen=True)
class Delivery:
    """One valid event as delivered: where it came from and its validated data."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event: CloudEvent
    data: BaseModel
    timestamp_ms: int | None = None
    value: bytes | None = None  # the record's bytes as published (webhooks send them unchanged)


Handler = Callable[[AsyncSession, Delivery], Awaitable[Any]]


@dataclass
class _Item:
    record: Any
    event: CloudEvent | None = None
    data: BaseModel | None = None
    reason: str | None = None  # set when the record belongs in the DLQ
    exception: str | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)


class _NewCluster(Exception):
    """The broker is another cluster than the one our positions were read from."""


class _Abandoned(Exception):
    """A retry gave way to a rebalance or a stop; the records are redelivered later."""


@dataclass
class _Outcome:
    applied: list[_Item] = field(default_factory=list)
    duplicates: list[_Item] = field(default_factory=list)
    dead: list[_Item] = field(default_factory=list)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: InboxConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:  # noqa: ANN001
        await self.owner._on_revoked(set(revoked))  # noqa: SLF001

    async def on_partitions_assigned(self, assigned) -> None:  # noqa: ANN001
        self.owner._on_assigned(set(assigned))  # noqa: SLF001


class InboxConsumer:
    """A consumer-group member applying events through ``handlers`` (event type → handler).

    ``handler(session, delivery)`` runs inside the consumer's unit of work; it only adds
    and flushes. ``inbox_model`` is the inbox table of the database the handlers write
    (columns ``event_id``, ``event_type``, ``topic``, ``partition``, ``offset``,
    ``processed_at``; e.g. the pipeline store's ``ProcessedEvent``). ``after_commit``
    (optional) is called after each committed transaction, e.g. to wake the outbox relay.
    With ``strict_topics`` an event whose type belongs on another topic
    (``shared.events.EVENT_TYPES``) is dead-lettered rather than applied.
    ``prefetch(session, deliveries)`` (optional) runs first in each transaction with the
    new events of the batch, to load in a few queries what the handlers will read.
    ``snapshot``: apply each batch in ``Database.snapshot_unit_of_work`` (on SQLite, members
    in several processes then compute at once and take turns only to write): for handlers
    that register, with ``check_before_write``, a check of everything they read. The
    consumer checks its own reads (the inbox); a stale snapshot retries the batch.
    """

    def __init__(
        self,
        db: Database,
        kafka: KafkaGateway,
        settings: Settings,
        *,
        topics: Iterable[str],
        handlers: Mapping[str, Handler],
        name: str,
        inbox_model: type,
        group_id: str,
        client_id: str | None = None,
        after_commit: Callable[[], None] | None = None,
        max_attempts: int = 3,
        max_backoff_s: float = 5.0,
        strict_topics: bool = True,
        prefetch: Callable[[AsyncSession, list[Delivery]], Awaitable[None]] | None = None,
        snapshot: bool = False,
    ) -> None:
        self.db, self.kafka, self.settings = db, kafka, settings
        self.topics = list(topics)
        self.handlers = dict(handlers)
        self.name = name
        self.inbox = inbox_model
        self.group_id = group_id
        self.client_id = client_id or f"leadstream-{name}"
        self.after_commit = after_commit
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.strict_topics = strict_topics  # an event on another type's topic is dead-lettered
        self.prefetch = prefetch
        self.snapshot = snapshot
        self.consumer = None
        self.joining = None  # the aiokafka consumer ``_connect`` is starting
        self.assignment: set[TopicPartition] = set()
        self.assigned = asyncio.Event()
        self.consumed = self.applied = self.duplicates = self.dead_lettered = self.retries = 0
        self._lock = asyncio.Lock()
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._revoking = False
        self._interrupt = asyncio.Event()
        self._cluster: str | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start consuming in a background task (joins the group, retrying while the broker is away)."""
        self._task = asyncio.create_task(self._run(), name=f"inbox-consumer-{self.name}")

    async def wait_assigned(self, timeout: float = 30.0) -> set[TopicPartition]:
        """Wait until this member has been given partitions (tests produce only after that)."""
        await asyncio.wait_for(self.assigned.wait(), timeout)
        return self.assignment

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, commit what is done, leave the group."""
        self._stopping = True
        self._interrupt.set()
        if self._task is not None and self.consumer is None:
            self._task.cancel()  # still joining: no batch in hand, nothing to commit (``_connect``)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                try:
                    await self._task
                except BaseException:  # noqa: BLE001
                    pass
            except Exception:  # noqa: BLE001
                log.exception("consumer task failed", consumer=self.name)
        await self._close()

    async def _close(self, commit: bool = True) -> None:
        if self.consumer is None:
            return
        if commit:
            try:
                await asyncio.wait_for(self._commit(), 5)
            except Exception as exc:  # noqa: BLE001
                log.warning("final offset commit failed; the records will be redelivered", error=repr(exc))
        consumer, self.consumer = self.consumer, None
        try:
            if not self.assignment:
                await abandon_join(consumer)  # a member rejoining has nothing to hand over
            await asyncio.wait_for(consumer.stop(), 10)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001
            # aiokafka lets its fetcher's CancelledError out of stop() when the broker is away
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise
            log.warning("consumer stop failed", error=repr(exc))
        self.assignment = set()
        self.assigned.clear()

    async def _connect(self) -> None:
        consumer = self.joining = create_consumer(
            self.settings, self.topics, group_id=self.group_id, client_id=self.client_id, listener=_Listener(self)
        )
        try:
            # start() returns once the group has assigned partitions. A rebalance on the embedded
            # broker takes 3-6 s, and a member that gives up and rejoins starts another one: with
            # a 5 s limit here, two workers rejoining after a broker restart kept each other
            # rebalancing for minutes (seen in the fault suite). A dead broker fails fast anyway.
            await asyncio.wait_for(consumer.start(),
                                   max(self.settings.kafka_request_timeout_ms / 1000, START_TIMEOUT_S))
        except BaseException:
            try:
                await abandon_join(consumer)
                await asyncio.wait_for(consumer.stop(), 5)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001
                pass
            raise
        finally:
            self.joining = None
        self.consumer = consumer
        self._cluster = await self._current_cluster()

    async def _current_cluster(self) -> str | None:
        try:
            return await asyncio.wait_for(self.kafka.cluster_id(), self.settings.kafka_request_timeout_ms / 1000)
        except Exception:  # noqa: BLE001 - unknown while the broker is away
            return None

    async def _check_cluster(self) -> None:
        """Offsets belong to one cluster: a new one (the embedded broker restarted empty) has
        new topics, where our positions mean nothing; committing them would skip records."""
        current = await self._current_cluster()
        if current is None:
            raise ConnectionError("broker cluster unknown; offsets kept pending")
        if self._cluster is None:
            self._cluster = current
        elif current != self._cluster:
            raise _NewCluster(f"broker cluster changed from {self._cluster} to {current}")

    async def _restart_on_new_cluster(self, exc: Exception) -> None:
        log.warning("new broker cluster: re-reading the topics from the start (the inbox dedupes)",
                    consumer=self.name, reason=str(exc))
        RETRIES.labels(self.name, "new_cluster").inc()
        self._done.clear()
        await self._close(commit=False)

    async def _run(self) -> None:
        backoff = 0.1
        last_lag = last_check = time.monotonic()
        while not self._stopping:
            try:
                if self.consumer is None:
                    await self._connect()
                batch = await self.consumer.getmany(timeout_ms=300, max_records=self.settings.consumer_batch_size)
                backoff = 0.1
                if batch and not self._stopping:
                    async with self._lock:
                        await self._process(batch)
                now = time.monotonic()
                if now - last_lag > 1.0:
                    self._update_lag()
                    last_lag = now
                if not batch and now - last_check > 2.0:
                    last_check = now
                    async with self._lock:
                        await self._check_cluster()
            except asyncio.CancelledError:
                raise
            except _NewCluster as exc:
                await self._restart_on_new_cluster(exc)
            except Exception as exc:  # noqa: BLE001 - the broker is away or the group is rebalancing
                RETRIES.labels(self.name, "kafka").inc()
                self.retries += 1
                log.warning("consumer loop failed, retrying", consumer=self.name, error=repr(exc),
                            backoff_s=round(backoff, 2))
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _sleep(self, seconds: float) -> None:
        self._interrupt.clear()
        try:
            await asyncio.wait_for(self._interrupt.wait(), seconds * (1 + random.random() / 2))
        except TimeoutError:
            pass

    # ---------------------------------------------------------------- rebalances

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignment = assigned
        for tp in list(self._done):
            if tp not in assigned:
                del self._done[tp]
        log.info("partitions assigned", consumer=self.name, member=self.client_id,
                 partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if assigned:
            self.assigned.set()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # A retry loop in progress gives way (its records are redelivered); a batch in hand
        # finishes first; then what is done is committed before the partitions move.
        self._revoking = True
        self._interrupt.set()
        try:
            async with self._lock:
                try:
                    await self._commit()
                except Exception as exc:  # noqa: BLE001
                    log.warning("commit on revoke failed; the new owner re-reads (inbox dedupes)", error=repr(exc))
                for tp in revoked:
                    self._done.pop(tp, None)
                self.assignment = set()
        finally:
            self._revoking = False

    async def _commit(self) -> None:
        if self.consumer is None or not self._done:
            return
        await self._check_cluster()
        offsets = {tp: off for tp, off in self._done.items() if tp in self.assignment}
        if offsets:
            await self.consumer.commit(offsets)
        for tp, off in offsets.items():
            if self._done.get(tp) == off:
                del self._done[tp]

    async def _commit_quietly(self) -> None:
        # A failed commit (rebalance, broker restart) loses nothing: the offsets stay pending
        # and go with the next commit, or the records are redelivered and the inbox dedupes.
        try:
            await self._commit()
        except _NewCluster:
            raise
        except Exception as exc:  # noqa: BLE001
            RETRIES.labels(self.name, "commit").inc()
            log.warning("offset commit failed; kept pending", consumer=self.name, error=repr(exc))

    def _update_lag(self) -> None:
        if self.consumer is None:
            return
        for tp in self.assignment:
            try:
                high = self.consumer.highwater(tp)
                pos = self._done.get(tp)
                if pos is None:
                    pos = self.consumer._subscription.subscription.assignment.state_value(tp).position  # noqa: SLF001
            except Exception:  # noqa: BLE001
                continue
            if high is not None and pos is not None:
                LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(high - pos, 0))

    # ---------------------------------------------------------------- processing

    async def _process(self, batch: Mapping[TopicPartition, list]) -> None:
        started = time.perf_counter()
        items: list[_Item] = []
        for tp, records in batch.items():
            CONSUMED.labels(self.name, tp.topic).inc(len(records))
            items.extend(self._prepare(r) for r in records)
        self.consumed += len(items)
        try:
            try:
                outcome = await self._retrying(lambda: self._apply(items), "database")
                await self._finish(items, outcome)
            except _Abandoned:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the poison: one message per transaction
                log.warning("batch failed, applying one message per transaction", consumer=self.name,
                            error=repr(exc), size=len(items))
                for item in items:
                    await self._apply_alone(item)
            await self._commit_quietly()
        except _Abandoned:
            self._rewind(items)
            return
        BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    def _prepare(self, record) -> _Item:  # noqa: ANN001
        item = _Item(record)
        try:
            item.event = parse_event(record.value)
            item.data = item.event.parsed_data()
        except InvalidEvent as exc:
            item.event, item.data = None, None
            item.reason, item.exception = str(exc), type(exc).__name__
            return item
        if item.event.type not in self.handlers:
            item.reason = f"no handler for event type {item.event.type!r} on topic {record.topic!r}"
            item.exception = "InvalidEvent"
        elif self.strict_topics and EVENT_TYPES[item.event.type][0] != record.topic:
            item.reason = (f"no handler for event type {item.event.type!r} on topic {record.topic!r} "
                           f"(it belongs on {EVENT_TYPES[item.event.type][0]!r})")
            item.exception = "InvalidEvent"
        return item

    def _delivery(self, item: _Item) -> Delivery:
        r = item.record
        return Delivery(r.topic, r.partition, r.offset, r.key, item.event, item.data, r.timestamp, r.value)

    async def _apply(self, items: list[_Item]) -> _Outcome:
        """Apply every valid, new event of ``items`` in one transaction (with its inbox rows)."""
        outcome = _Outcome()
        async with (self.db.snapshot_unit_of_work() if self.snapshot else self.db.unit_of_work()) as session:
            now = transaction_time(session)
            ids = [i.event.id for i in items if i.event is not None and i.reason is None]
            seen = await self._already_applied(session, ids)
            if self.snapshot:
                check_before_write(session, "inbox", lambda writer: self._check_unapplied(writer, outcome))
            deliveries = [self._delivery(i) if i.reason is None and i.event.id not in seen else None for i in items]
            if self.prefetch is not None:
                fresh = [d for d in deliveries if d is not None]
                if fresh:
                    await self.prefetch(session, fresh)
            for item, delivery in zip(items, deliveries):
                if item.reason is not None:
                    outcome.dead.append(item)
                    continue
                if item.event.id in seen:
                    outcome.duplicates.append(item)
                    continue
                with continuing(f"apply {item.event.type}", item.event.traceparent):
                    await self.handlers[item.event.type](session, delivery)
                r = item.record
                stage_insert(session, self.inbox.__table__, dict(
                    event_id=item.event.id, event_type=item.event.type, topic=r.topic, partition=r.partition,
                    offset=r.offset, processed_at=now))
                seen.add(item.event.id)
                outcome.applied.append(item)
        return outcome

    async def _check_unapplied(self, writer: AsyncSession, outcome: _Outcome) -> None:
        """Before a snapshot's batch is written: none of the events it applies was applied
        meanwhile (by the member that held the partition before a rebalance)."""
        if await self._already_applied(writer, [item.event.id for item in outcome.applied]):
            raise WriteConflict("events of the batch were applied since its snapshot")

    async def _already_applied(self, session: AsyncSession, ids: list[str]) -> set[str]:
        seen: set[str] = set()
        for chunk in in_chunks(ids):
            rows = await session.execute(select(self.inbox.event_id).where(self.inbox.event_id.in_(chunk)))
            seen.update(rows.scalars())
        return seen

    async def _apply_alone(self, item: _Item) -> None:
        attempts = 0
        while True:
            try:
                outcome = await self._retrying(lambda: self._apply([item]), "database")
                await self._finish([item], outcome)
                return
            except _Abandoned:
                raise
            except Exception as exc:  # noqa: BLE001
                attempts += 1
                if is_permanent(exc) or attempts >= self.max_attempts:
                    item.reason = f"handler failed: {exc}"[:1000] if is_permanent(exc) else (
                        f"handler failed {attempts} times: {exc!r}"[:1000])
                    item.exception = type(exc).__name__
                    log.error("dead-lettering message", consumer=self.name, topic=item.record.topic,
                              partition=item.record.partition, offset=item.record.offset, reason=item.reason)
                    await self._finish([item], _Outcome(dead=[item]))
                    return
                RETRIES.labels(self.name, "handler").inc()
                self.retries += 1
                log.warning("handler failed, retrying", consumer=self.name, error=repr(exc), attempt=attempts)
                await self._sleep(0.05 * 2 ** attempts)
                if self._stopping or self._revoking:
                    raise _Abandoned from exc

    async def _finish(self, items: list[_Item], outcome: _Outcome) -> None:
        """After the DB commit: dead-letter (awaited), count, and mark the offsets done."""
        if outcome.dead:
            await self._retrying(lambda: self._dead_letter(outcome.dead), "kafka")
        now = time.time()
        latency = LATENCY.labels(self.name)
        for item in outcome.applied:
            if item.record.timestamp:
                latency.observe(max(now - item.record.timestamp / 1000, 0))
        # counted per label set, not per event (a batch holds up to thousands)
        for (topic, type_), n in Tally((i.record.topic, i.event.type) for i in outcome.applied).items():
            APPLIED.labels(self.name, topic, type_).inc(n)
        for topic, n in Tally(i.record.topic for i in outcome.duplicates).items():
            DUPLICATES.labels(self.name, topic).inc(n)
        self.applied += len(outcome.applied)
        self.duplicates += len(outcome.duplicates)
        self.dead_lettered += len(outcome.dead)
        for item in items:
            self._done[item.tp] = max(self._done.get(item.tp, -1), item.record.offset + 1)
        if outcome.applied and self.after_commit:
            self.after_commit()

    async def _dead_letter(self, items: list[_Item]) -> None:
        messages = []
        for item in items:
            r = item.record
            headers = list(r.headers or ()) + [
                ("dlq-reason", (item.reason or "unknown").encode()[:4000]),
                ("dlq-exception", (item.exception or "Exception").encode()),
                ("dlq-original-topic", r.topic.encode()),
                ("dlq-original-partition", str(r.partition).encode()),
                ("dlq-original-offset", str(r.offset).encode()),
                ("dlq-consumer-group", self.group_id.encode()),
                ("dlq-failed-at", datetime.now(timezone.utc).isoformat().encode()),
            ]
            messages.append((dlq_topic(r.topic), r.key, r.value, headers))
        acked = await self.kafka.send_many(messages)
        if not all(acked):
            raise ConnectionError(f"{acked.count(False)} dead-letter messages not acknowledged")
        for item in items:
            DEAD_LETTERED.labels(self.name, item.record.topic, item.exception or "Exception").inc()

    async def _retrying(self, operation: Callable[[], Awaitable[Any]], kind: str) -> Any:
        """Run ``operation`` until it succeeds or fails for a non-transient reason."""
        delay = 0.05
        while True:
            try:
                return await operation()
            except (asyncio.CancelledError, _Abandoned):
                raise
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    raise
                conflict = isinstance(exc, WriteConflict)
                RETRIES.labels(self.name, "conflict" if conflict else kind).inc()
                self.retries += 1
                log.warning(STALE_SNAPSHOT if conflict else "transient failure, retrying", consumer=self.name,
                            kind=kind, error=repr(exc)[:500], backoff_s=round(delay, 2))
                if self._stopping or self._revoking:
                    raise _Abandoned from exc
                await self._sleep(delay)
                if self._stopping or self._revoking:
                    raise _Abandoned from exc
                delay = min(delay * 2, self.max_backoff_s)

    def _rewind(self, items: list[_Item]) -> None:
        """Seek back to the first record not done, so a partition we keep is not skipped."""
        first: dict[TopicPartition, int] = {}
        for item in items:
            off = item.record.offset
            if off >= self._done.get(item.tp, -1) and item.tp not in first:
                first[item.tp] = off
        for tp, off in first.items():
            try:
                self.consumer.seek(tp, off)
            except Exception:  # noqa: BLE001 - no longer ours: the new owner starts at the commit
                pass

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Member, assignment with positions and lag, and counters (for ``GET /v1/status``)."""
        parts = []
        for tp in sorted(self.assignment, key=lambda t: (t.topic, t.partition)):
            high = pos = None
            if self.consumer is not None:
                try:
                    high = self.consumer.highwater(tp)
                    pos = self.consumer._subscription.subscription.assignment.state_value(tp).position  # noqa: SLF001
                except Exception:  # noqa: BLE001
                    pass
            parts.append({"topic": tp.topic, "partition": tp.partition, "position": pos, "highwater": high,
                          "lag": max(high - pos, 0) if high is not None and pos is not None else None})
        return {
            "group_id": self.group_id,
            "client_id": self.client_id,
            "topics": self.topics,
            "connected": self.consumer is not None,
            "assignment": parts,
            "consumed": self.consumed,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
        }


__all__ = ["Delivery", "Handler", "InboxConsumer", "InboxMixin", "PermanentError", "is_permanent", "is_transient"]
