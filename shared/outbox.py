"""The transactional outbox and its relay.

A fact and its outgoing event are written in one transaction (``stage_event``); the
relay publishes committed rows to Kafka in id order (so in order per key), marks them
published only after the broker acknowledged them, keeps them for a retention window
and, when it finds a new broker cluster (the embedded broker keeps messages in memory
and comes back empty), publishes the retained rows again, once. Consumers deduplicate by id.

The embedded broker loses acknowledged writes to a partition that was written before its
topic was created (creating it starts the partition's offsets again at 0, and later writes
hide behind the early ones; BROKER.md). So nothing reaches a broker before the relay has
checked the cluster and created the topics: the producer never re-sends a batch by itself
(``shared.kafka.send_each_batch_once``), the cluster id is checked again before a send that
does not follow closely on the last contact, and on a broker found new whose topics another
client created (that creation may still be under way) the relay holds its first send for
``NEW_BROKER_HOLD_S``. Each retained row then goes to the new broker once.

On SQLite, where the group commit's batch writer tells the relay of each row it commits
(``Database.listen``), the relay publishes those rows from memory instead of reading them
back (``FreshRows``), in the same id order; the table stays the truth, read again whenever
memory may not hold every pending row.

Every process that writes an outbox runs a relay, but only the holder of the outbox's lease
(``shared.lease``) publishes: the others just write rows. A new holder starts from the lowest
unpublished row, so only rows that were in flight (sent, not yet marked) when its
predecessor died are published twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import datetime, timedelta, timezone

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger, DateTime, Index, Integer, LargeBinary, String, Table, Text, and_, delete, func, select, update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from shared.db import stage_insert, transaction_time
from shared.events import CONTENT_TYPE, CloudEvent
from shared.kafka import KafkaGateway
from shared.lease import OutboxLease, lease_table

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

    def __init_subclass__(cls, **kwargs) -> None:  # noqa: ANN003
        super().__init_subclass__(**kwargs)  # the declarative base maps the class here
        if "__table__" in cls.__dict__:
            lease_table(cls.__table__)  # every outbox table comes with its lease table


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


async def erase_rows(session: AsyncSession, outbox_model: type[OutboxMixin], condition: ColumnElement[bool],
                     key: str) -> int:
    """Erase the rows matching ``condition`` in the caller's transaction: the value is
    emptied, the key becomes ``key`` (a pseudonym) and the row is marked published with
    ``ERASED``, which the relay never publishes again (not even when it finds a new broker
    cluster). The row itself stays until the retention removes it, so ids are never reused."""
    table = outbox_model.__table__
    now = transaction_time(session)
    result = await session.execute(
        update(table).where(condition).values(
            key=key, value=b"", published_at=func.coalesce(table.c.published_at, now), published_cluster=ERASED,
            last_error=None,
        )
    )
    return result.rowcount or 0


LINGER_S = 0.01
# With nothing more committed for this long after a send, the relay writes its deferred marks
# of published rows itself (on SQLite they otherwise go with the next group commit).
MARKS_IDLE_S = 0.05
# A broker found new whose topics another client created: that creation may still be under way
# (Tansu answers "already exists" before it has set the partitions' offsets), and a write that
# lands before it ends is lost; the relay waits this long before its first send.
NEW_BROKER_HOLD_S = 1.0
# The cluster id checked last is trusted for a send only this soon after the relay's last
# contact with the broker (a send or a check): a broker restarted in between would have
# failed that contact, and a restart takes longer than this.
CONTACT_FRESH_S = 0.1
CLUSTER_CHECK_MAX_AGE_S = 1.0
# the mark of a row whose personal data was erased: never published again, not even after a
# broker restart (``erase_rows``)
ERASED = "#erased"
HEADERS = [("content-type", CONTENT_TYPE.encode())]


# in memory mode, the table is still read this often (rows other processes reset or wrote)
SCAN_EVERY_S = 1.0


class FreshRows:
    """The outbox rows this process committed and has not yet published, in id order, as the
    batch writer reports them: what the relay publishes without reading them back.

    Memory is *trusted* only while it holds every pending row above the last one the relay
    read from the table: from a read that found the table drained, until anything breaks
    that (rows written another way, or by another process, a failed publish, a new broker
    cluster, too many rows waiting). Then the relay reads the table again until it is drained
    once more.

    Other processes write the table too (every process that writes an outbox, and one relay
    publishes it): their rows take ids between this process's, which SQLite numbers in commit
    order. A batch that does not start at the id after the last one memory knows leaves a
    gap, so memory is no longer complete; publishing from it would put this process's rows
    before older rows of the same key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: deque[tuple[int, str, str, bytes]] = deque()
        self.trusted = False
        self.epoch = 0  # bumped whenever memory stops being complete
        self.next_id: int | None = None  # the id of the next row, for memory to stay complete

    def inserted(self, rows: list[dict], first_id: int) -> None:
        if self.next_id is not None and first_id != self.next_id:
            self.forget()  # rows another process committed in between are not in memory
        if len(self.rows) + len(rows) > self.limit:
            self.forget()
            return
        self.rows.extend((first_id + i, r["topic"], r["key"], r["value"]) for i, r in enumerate(rows))
        self.next_id = first_id + len(rows)

    def inserted_unseen(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.rows.clear()
        self.trusted = False
        self.epoch += 1
        self.next_id = None

    def read_through(self, last_id: int | None, drained: bool, epoch: int, table_max: int | None = None) -> None:
        """The table was read (in id order) up to ``last_id``, and those rows published: drop
        them from memory. A drained read, whose snapshot's highest id was ``table_max``, trusts
        memory if it was complete since the read began and continues right after that id."""
        if last_id is not None:
            while self.rows and self.rows[0][0] <= last_id:
                self.rows.popleft()
        if drained and epoch == self.epoch:
            after = (table_max or 0) + 1  # SQLite gives an empty table's first row id 1
            if not self.rows:
                self.trusted = True
                self.next_id = after if self.next_id is None else max(self.next_id, after)
            elif self.rows[0][0] == after:
                self.trusted = True

    def take(self, limit: int) -> list[tuple[int, str, str, bytes]]:
        return [self.rows.popleft() for _ in range(min(limit, len(self.rows)))]


# What the relay publishes is decided here and nowhere else: the table read, a new broker's
# re-publication and the count of pending rows use these conditions; the in-memory path only
# ever holds rows this process committed after a read found the table drained (pending ones).


def pending(table: Table) -> ColumnElement[bool]:
    """Rows to publish: not yet acknowledged by the broker cluster of the moment."""
    return table.c.published_at.is_(None)


def lost_with_broker(table: Table, cluster_id: str) -> ColumnElement[bool]:
    """Rows acknowledged by another broker cluster than ``cluster_id`` (an embedded broker that
    restarted empty): retained rows that ``cluster_id`` must be given again; never an erased one."""
    return and_(table.c.published_at.is_not(None), table.c.published_cluster != cluster_id,
                table.c.published_cluster != ERASED)


class LeaseLost(Exception):
    """The relay no longer holds its outbox's lease: what it was about to send stays unsent."""


class OutboxRelay:
    """Publishes committed outbox rows while it holds the outbox's lease; one per process that
    writes an outbox (the others wait for the lease and only write rows)."""

    def __init__(self, db, outbox_model: type[OutboxMixin], kafka: KafkaGateway, settings, service: str) -> None:  # noqa: ANN001
        self.db = db
        # Core, not the ORM: the relay's statements skip the ORM's bulk-update bookkeeping.
        self.table = outbox_model.__table__
        self.kafka = kafka
        self.settings = settings
        self.service = service
        self.lease = OutboxLease(db, self.table, settings)
        self._wake = asyncio.Event()
        self._lease_changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None
        self._stopping = False
        self._cluster_id: str | None = None  # checked and its topics created; None: check again
        self._known_cluster: str | None = None  # the last cluster this relay published to
        self._cluster_checked_at = 0.0
        self._contact_at = 0.0  # the last send or check the broker answered
        self._hold_until = 0.0
        self._housekept = 0.0
        self._metrics_at = 0.0
        self._scanned_at = 0.0
        self.published = 0
        # told of each row committed where the database's write path knows them (a SQLite
        # file's group commit); elsewhere (None) the table is read
        fresh = FreshRows(limit=4 * settings.outbox_batch_size)
        self.fresh: FreshRows | None = fresh if db.listen(self.table, fresh) else None

    def wake(self) -> None:
        """Tell the relay a commit added rows (saves the poll interval)."""
        self._wake.set()

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_lease(), name=f"outbox-lease-{self.service}")
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self, drain_timeout: float = 3.0) -> None:
        """Stop after a last attempt to publish what is pending (bounded by ``drain_timeout``),
        write the marks of what was published, and release the lease."""
        self._stopping = True
        self._wake.set()
        self._lease_changed.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, drain_timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # noqa: BLE001
                pass
        if self._keeper:
            self._keeper.cancel()
            try:
                await self._keeper
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.lease.epoch is not None:
            try:
                await self.db.flush()  # marks first: the next holder starts after what they cover
                await self.lease.release()
            except Exception as exc:  # noqa: BLE001 - then the lease expires instead
                log.warning("outbox lease not released; it expires", outbox=self.table.name, error=repr(exc))

    async def _keep_lease(self) -> None:
        """Renew the lease while held, try to take it while not; every ``outbox_lease_renew_s``."""
        while not self._stopping:
            try:
                change = await self.lease.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database is away: stop sending until renewed
                self.lease.suspend()
                log.warning("outbox lease not refreshed", outbox=self.table.name, error=repr(exc))
                change = None
            if change == "acquired":
                self._took_over()
            elif change == "lost" and self.fresh is not None:
                self.fresh.forget()
            if change:
                self._lease_changed.set()
            await asyncio.sleep(self.lease.renew_every)

    def _took_over(self) -> None:
        # Start from the table's lowest unpublished row; check the cluster at once (the
        # previous holder may have published to a broker that is gone).
        if self.fresh is not None:
            self.fresh.forget()
        self._cluster_id = None
        self._cluster_checked_at = 0.0
        self._hold_until = 0.0
        self._scanned_at = 0.0
        self._wake.set()

    async def _run(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = loop.time()
                if now - self._metrics_at > 1.0:
                    await self._update_metrics()
                    self._metrics_at = now
                if not self.lease.held:
                    if self._stopping:
                        return
                    # another relay publishes this outbox: wait until the lease changes hands
                    self._lease_changed.clear()
                    try:
                        await asyncio.wait_for(self._lease_changed.wait(), self.lease.renew_every)
                    except TimeoutError:
                        pass
                    continue
                if now - self._cluster_checked_at > 2.0:
                    # Even with nothing pending: rows already published may have been lost
                    # with a broker that started anew, and must go out again.
                    self._cluster_checked_at = 0.0
                    await self._check_cluster()
                if self._hold_until:
                    if now < self._hold_until:
                        if self._stopping:  # held rows stay pending for the next holder
                            return
                        await asyncio.sleep(min(self._hold_until - now, self.settings.outbox_poll_interval_s))
                        continue
                    self._hold_until = 0.0
                sent = await self.publish_pending()
                if now - self._housekept > 60.0:
                    await self._housekeep()
                    self._housekept = now
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
            except LeaseLost:
                if self.fresh is not None:
                    self.fresh.forget()
                log.info("outbox lease not held: not publishing", outbox=self.table.name)
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

    def _fence(self) -> ColumnElement[bool]:
        """The lease's fence for the holder's writes; ``LeaseLost`` if it is not held."""
        if not self.lease.held:
            raise LeaseLost(self.table.name)
        return self.lease.fence()

    async def _check_cluster(self) -> str:
        """The current cluster id, checked unless the last check is recent and the broker has
        answered since closely enough that it cannot have restarted in between. On an id this
        relay has not checked yet: create the missing topics and make every row another cluster
        acknowledged pending again (an embedded broker that started anew is empty); on a
        broker found new whose topics were there already, hold the first send
        (``NEW_BROKER_HOLD_S``)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (self._cluster_id is not None and now - self._cluster_checked_at < CLUSTER_CHECK_MAX_AGE_S
                and now - self._contact_at < CONTACT_FRESH_S):
            return self._cluster_id
        fence = self._fence()
        cluster_id = await self.kafka.cluster_id()
        self._cluster_checked_at = self._contact_at = loop.time()
        if cluster_id == self._cluster_id:
            return cluster_id
        existing = await self.kafka.ensure_topics()
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(self.table)
                .where(lost_with_broker(self.table, cluster_id), fence)
                .values(published_at=None, published_cluster=None)
            )
        if self.fresh is not None:
            self.fresh.forget()  # rows published before are pending again
        if result.rowcount:
            OUTBOX_REPUBLISHED.labels(self.service).inc(result.rowcount)
            log.warning(
                "new broker cluster: re-publishing retained events", cluster_id=cluster_id, rows=result.rowcount
            )
        replaced = cluster_id != self._known_cluster and (self._known_cluster is not None or result.rowcount > 0)
        if replaced and existing:
            # Another client created the topics of this new broker; wait until that is surely over.
            self._hold_until = loop.time() + NEW_BROKER_HOLD_S
            log.info("new broker cluster: holding the first send", cluster_id=cluster_id, hold_s=NEW_BROKER_HOLD_S)
        self._cluster_id = self._known_cluster = cluster_id
        return cluster_id

    def _holding(self) -> bool:
        return self._hold_until > asyncio.get_running_loop().time()

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows in id order; returns how many were published."""
        limit = self.settings.outbox_batch_size
        fresh = self.fresh
        now = asyncio.get_running_loop().time()
        if self._holding():
            return 0
        if fresh is not None and fresh.trusted and fresh.rows and now - self._scanned_at < SCAN_EVERY_S:
            rows = fresh.take(limit)
            return await self._publish(rows)
        self._scanned_at = now
        epoch = fresh.epoch if fresh is not None else 0
        await self.db.flush()  # marks not yet written would read as pending
        m = self.table.c
        table_max = None
        async with self.db.reader() as session:
            rows = (
                await session.execute(
                    select(m.id, m.topic, m.key, m.value)
                    .where(pending(self.table))
                    .order_by(m.id)
                    .limit(limit)
                )
            ).all()
            if fresh is not None and len(rows) < limit:
                # in the same snapshot: where rows committed after this read start
                table_max = (await session.execute(select(func.max(m.id)))).scalar()
        sent = await self._publish(rows) if rows else 0
        if fresh is not None:
            fresh.read_through(rows[-1][0] if rows else None, drained=len(rows) < limit, epoch=epoch,
                               table_max=table_max)
        return sent

    async def _publish(self, rows) -> int:  # noqa: ANN001 - (id, topic, key, value) rows
        # Rows are marked with the cluster seen just before sending. If the broker restarts
        # while they are in flight, the send fails (the producer does not send them again) or
        # the old broker acknowledged them and the next check publishes them again: at worst a
        # duplicate (same event id) of rows in flight, never a loss.
        cluster_id = await self._check_cluster()
        if self._holding():  # a broker found new just now: the rows wait (memory was forgotten)
            return 0
        if not self.lease.held:  # checked right before sending: a relay that lost it sends nothing more
            raise LeaseLost(self.table.name)
        fence = self.lease.fence_params()
        acked = await self.kafka.send_many([(topic, key.encode(), value, HEADERS) for _, topic, key, value in rows])
        done = [row[0] for row, ok in zip(rows, acked) if ok]
        if done:
            self._contact_at = asyncio.get_running_loop().time()
        # On SQLite the marks go with the group commit's next transaction (flushed before the
        # table is read): a crash before then publishes the rows again, never loses them. They
        # are written only while this relay still holds the lease (fence).
        await self.db.update_later(self.table, "id", done, {
            "published_at": datetime.now(timezone.utc),
            "published_cluster": cluster_id,
        }, only_if=fence)
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
                await session.execute(select(func.count(m.id), func.min(m.created_at)).where(pending(self.table)))
            ).one()
        OUTBOX_DEPTH.labels(self.service).set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=timezone.utc)
        OUTBOX_AGE.labels(self.service).set(
            (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
        )
