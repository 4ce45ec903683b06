"""The transactional outbox and its relay.

A fact and its outgoing event are written in one transaction (``stage_event``); the
relay publishes committed rows to Kafka in id order (so in order per key), marks them
published only after the broker acknowledged them, keeps them for a retention window
and, when it finds a new broker cluster (the embedded broker keeps messages in memory
and comes back empty), publishes the retained rows again. Consumers deduplicate by id.

Right after such a restart the embedded broker can acknowledge a write and lose it (seen
as a lead or two missing out of a hundred when the machine is busy), so what the relay
publishes in the first seconds on a new cluster is published once more when they are over.

On SQLite, where the group commit's batch writer tells the relay of each row it commits
(``Database.listen``), the relay publishes those rows from memory instead of reading them
back (``FreshRows``), in the same id order; the table stays the truth, read again whenever
memory may not hold every pending row.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import datetime, timedelta, timezone

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, Text, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from shared.db import stage_insert, transaction_time
from shared.events import CONTENT_TYPE, CloudEvent
from shared.kafka import KafkaGateway

log = structlog.get_logger("outbox")

OUTBOX_DEPTH = Gauge("leadstream_outbox_depth", "Outbox rows not yet published", ["service"])
OUTBOX_AGE = Gauge("leadstream_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", ["service"])
OUTBOX_PUBLISHED = Counter("leadstream_outbox_published_total", "Outbox rows published", ["service"])
OUTBOX_ERRORS = Counter("leadstream_outbox_errors_total", "Relay publish failures", ["service"])
OUTBOX_REPUBLISHED = Counter(
    "leadstream_outbox_republished_total", "Rows re-published after a new broker cluster", ["service"]
)


class OutboxMixin:
    """Columns of an outbox table; each database declares ``class Outbox(OutboxMixin, Base)``
    with a ``__tablename__`` of its own (so several databases' outboxes can share one
    PostgreSQL database)."""

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(320))
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    published_cluster: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    @declared_attr.directive
    def __table_args__(cls):  # noqa: N805
        return (Index(f"ix_{cls.__tablename__}_unpublished", "published_at", "id"),)


def stage_event(session: AsyncSession, outbox_model: type[OutboxMixin], event: CloudEvent, key: str) -> None:
    """Add the event to the outbox in the caller's transaction."""
    stage_insert(
        session,
        outbox_model.__table__,
        {
            "event_id": event.id,
            "topic": event.topic,
            "key": key,
            "value": event.to_bytes(),
            "created_at": transaction_time(session),
            "attempts": 0,
        },
    )


LINGER_S = 0.01
# With nothing more committed for this long after a send, the relay writes its deferred marks
# of published rows itself (on SQLite they otherwise go with the next group commit).
MARKS_IDLE_S = 0.05
# after a broker restart: rows published this soon are published again when it is over
SETTLE_S = 3.0
SETTLING = "#settling"
HEADERS = [("content-type", CONTENT_TYPE.encode())]


# in memory mode, the table is still read this often (rows other processes reset or wrote)
SCAN_EVERY_S = 1.0


class FreshRows:
    """The outbox rows this process committed and has not yet published, in id order, as the
    batch writer reports them: what the relay publishes without reading them back.

    Memory is *trusted* only while it holds every pending row above the last one the relay
    read from the table: from a read that found the table drained, until anything breaks
    that (rows written another way, a failed publish, a new broker cluster, too many rows
    waiting). Then the relay reads the table again until it is drained once more."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: deque[tuple[int, str, str, bytes]] = deque()
        self.trusted = False
        self.epoch = 0  # bumped whenever memory stops being complete

    def inserted(self, rows: list[dict], first_id: int) -> None:
        if len(self.rows) + len(rows) > self.limit:
            self.forget()
            return
        self.rows.extend((first_id + i, r["topic"], r["key"], r["value"]) for i, r in enumerate(rows))

    def inserted_unseen(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.rows.clear()
        self.trusted = False
        self.epoch += 1

    def read_through(self, last_id: int | None, drained: bool, epoch: int) -> None:
        """The table was read (in id order) up to ``last_id``, and those rows published: drop
        them from memory; a drained read, with memory complete since it began, trusts it."""
        if last_id is not None:
            while self.rows and self.rows[0][0] <= last_id:
                self.rows.popleft()
        if drained and epoch == self.epoch:
            self.trusted = True

    def take(self, limit: int) -> list[tuple[int, str, str, bytes]]:
        return [self.rows.popleft() for _ in range(min(limit, len(self.rows)))]


class OutboxRelay:
    """Publishes committed outbox rows; one per process that writes an outbox."""

    def __init__(self, db, outbox_model: type[OutboxMixin], kafka: KafkaGateway, settings, service: str) -> None:  # noqa: ANN001
        self.db = db
        # Core, not the ORM: the relay's statements skip the ORM's bulk-update bookkeeping.
        self.table = outbox_model.__table__
        self.kafka = kafka
        self.settings = settings
        self.service = service
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._cluster_id: str | None = None
        self._cluster_checked_at = 0.0
        self._settle_until = 0.0
        self._housekept = 0.0
        self._metrics_at = 0.0
        self._scanned_at = 0.0
        self.published = 0
        # told of each row committed, where the database's write path knows them (a SQLite
        # file's group commit); elsewhere memory stays empty and the table is read
        self.fresh: FreshRows | None = FreshRows(limit=4 * settings.outbox_batch_size)
        db.listen(self.table, self.fresh)

    def wake(self) -> None:
        """Tell the relay a commit added rows (saves the poll interval)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self, drain_timeout: float = 3.0) -> None:
        """Stop after a last attempt to publish what is pending (bounded by ``drain_timeout``)."""
        self._stopping = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, drain_timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # noqa: BLE001
                pass

    async def _run(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = loop.time()
                if now - self._cluster_checked_at > 2.0:
                    # Even with nothing pending: rows already published may have been lost
                    # with a broker that started anew, and must go out again.
                    self._cluster_checked_at = 0.0
                    await self._check_cluster()
                if self._settle_until and now >= self._settle_until:
                    await self._end_settling()
                sent = await self.publish_pending()
                if now - self._housekept > 60.0:
                    await self._housekeep()
                    self._housekept = now
                if now - self._metrics_at > 1.0:
                    await self._update_metrics()
                    self._metrics_at = now
                backoff = 0.1
                if self._stopping:
                    return
                if sent >= self.settings.outbox_batch_size:
                    continue
                self._wake.clear()
                poll = self.settings.outbox_poll_interval_s
                woken = await self._woken(min(MARKS_IDLE_S, poll) if sent else poll)
                if sent and not woken:
                    # Quiet: the marks of what was just sent would wait for a commit that may
                    # not come (or for the next poll); write them now.
                    await self.db.flush()
                    woken = await self._woken(max(poll - MARKS_IDLE_S, 0))
                if woken and sent:
                    # Busy: let a few more commits land so one round trip carries them all.
                    await asyncio.sleep(LINGER_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker or database is away: retry
                if self.fresh is not None:
                    self.fresh.forget()
                OUTBOX_ERRORS.labels(self.service).inc()
                log.warning("outbox relay failed, retrying", error=repr(exc), backoff_s=round(backoff, 2))
                self._cluster_id = None  # re-check the cluster after any failure
                if self._stopping:
                    return
                await asyncio.sleep(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, self.settings.outbox_max_backoff_s)

    async def _woken(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _check_cluster(self) -> str:
        """The current cluster id; on a new one (an embedded broker started anew, empty),
        create the topics and queue every retained row again."""
        loop = asyncio.get_running_loop()
        if self._cluster_id is not None and loop.time() - self._cluster_checked_at < 1.0:
            # A stale id is safe: rows marked with an old id are only ever published again.
            return self._cluster_id
        cluster_id = await self.kafka.cluster_id()
        self._cluster_checked_at = loop.time()
        if cluster_id == self._cluster_id:
            return cluster_id
        await self.kafka.ensure_topics()
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(self.table)
                .where(self.table.c.published_at.is_not(None), self.table.c.published_cluster != cluster_id)
                .values(published_at=None, published_cluster=None)
            )
        if self.fresh is not None:
            self.fresh.forget()  # rows published before are pending again
        if result.rowcount:
            OUTBOX_REPUBLISHED.labels(self.service).inc(result.rowcount)
            log.warning(
                "new broker cluster: re-publishing retained events", cluster_id=cluster_id, rows=result.rowcount
            )
        if result.rowcount or self._cluster_id is not None:  # a broker we had published to was replaced
            self._settle_until = loop.time() + SETTLE_S
        self._cluster_id = cluster_id
        return cluster_id

    async def _end_settling(self) -> None:
        """Publish again what went out in the first seconds on a new cluster."""
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(self.table)
                .where(self.table.c.published_cluster.like(f"%{SETTLING}"))
                .values(published_at=None, published_cluster=None)
            )
        self._settle_until = 0.0
        if self.fresh is not None:
            self.fresh.forget()
        if result.rowcount:
            OUTBOX_REPUBLISHED.labels(self.service).inc(result.rowcount)
            log.info("new broker cluster settled: re-publishing what was sent while it started", rows=result.rowcount)

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows in id order; returns how many were published."""
        limit = self.settings.outbox_batch_size
        fresh = self.fresh
        now = asyncio.get_running_loop().time()
        if fresh is not None and fresh.trusted and fresh.rows and now - self._scanned_at < SCAN_EVERY_S:
            rows = fresh.take(limit)
            return await self._publish(rows)
        self._scanned_at = now
        epoch = fresh.epoch if fresh is not None else 0
        await self.db.flush()  # marks not yet written would read as pending
        m = self.table.c
        async with self.db.reader() as session:
            rows = (
                await session.execute(
                    select(m.id, m.topic, m.key, m.value)
                    .where(m.published_at.is_(None))
                    .order_by(m.id)
                    .limit(limit)
                )
            ).all()
        sent = await self._publish(rows) if rows else 0
        if fresh is not None:
            fresh.read_through(rows[-1][0] if rows else None, drained=len(rows) < limit, epoch=epoch)
        return sent

    async def _publish(self, rows) -> int:  # noqa: ANN001 - (id, topic, key, value) rows
        # Rows are marked with the cluster seen just before sending. If the broker restarts
        # while they are in flight, the next check sees another id and publishes them again:
        # at worst a duplicate (same event id), never a loss.
        cluster_id = await self._check_cluster()
        acked = await self.kafka.send_many([(topic, key.encode(), value, HEADERS) for _, topic, key, value in rows])
        done = [row[0] for row, ok in zip(rows, acked) if ok]
        # On SQLite the marks go with the group commit's next transaction (flushed before the
        # table is read): a crash before then publishes the rows again, never loses them.
        await self.db.update_later(self.table, "id", done, {
            "published_at": datetime.now(timezone.utc),
            "published_cluster": cluster_id + SETTLING if self._settle_until else cluster_id,
        })
        OUTBOX_PUBLISHED.labels(self.service).inc(len(done))
        self.published += len(done)
        if len(done) < len(rows):
            # some sends failed: let the loop back off and retry the rest (read from the table)
            raise ConnectionError(f"{len(rows) - len(done)} of {len(rows)} outbox rows not acknowledged")
        return len(done)

    async def _housekeep(self) -> None:
        cutoff = datetime.now(timezone.utc) - timedelta(hours=self.settings.outbox_retention_hours)
        async with self.db.unit_of_work() as session:
            await session.execute(
                delete(self.table).where(self.table.c.published_at.is_not(None), self.table.c.published_at < cutoff)
            )

    async def _update_metrics(self) -> None:
        m = self.table.c
        await self.db.flush()
        async with self.db.reader() as session:
            count, oldest = (
                await session.execute(select(func.count(m.id), func.min(m.created_at)).where(m.published_at.is_(None)))
            ).one()
        OUTBOX_DEPTH.labels(self.service).set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=timezone.utc)
        OUTBOX_AGE.labels(self.service).set(
            (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
        )
