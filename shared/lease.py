"""One publisher per outbox table: a lease in the outbox's own database.

Every process that writes an outbox runs a relay, but only the holder of the outbox's lease
publishes it (two relays over one table published the same rows, and a repeat could arrive
after a newer event of its key). The lease is one row per outbox table, in a table of its
own beside it (``<outbox>_lease``): who holds it, until when, and a fencing ``epoch`` that
grows by one at every change of holder.

- **Taken** by a conditional UPDATE in a short transaction of its own, a compare-and-set on
  what a read found: the same epoch, and no holder or an expired one. Two processes racing
  for it: one UPDATE matches, the other's finds the epoch moved.
- **Renewed** every ``outbox_lease_renew_s`` (UPDATE where holder and epoch are still ours)
  for ``outbox_lease_s``. A renewal that finds another epoch means another process took
  over: this one stops at once.
- **Held** locally only until ``outbox_lease_s - outbox_lease_renew_s`` after the start of
  the last renewal that succeeded: a holder that cannot renew (its database is away, it was
  paused) stops sending before anyone else may take over, measured on its own monotonic
  clock (expiry is measured on the database's clock on PostgreSQL, on the host's on SQLite,
  whose processes share one host).
- **Fencing**: what the holder writes about publishing (marks of sent rows, rows reset for a
  new broker cluster) is written only where the lease row still has its holder and epoch
  (``fence``), so a holder that lost the lease changes nothing.
- **Released** at a clean stop, after the marks of what it published are written: another
  relay takes it at its next try (within ``outbox_lease_renew_s``); after a kill -9 another
  takes it when it expires.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger, Column, DateTime, Integer, Interval, String, Table, and_, bindparam, exists, func, insert, literal,
    or_, select, update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

log = structlog.get_logger("outbox.lease")

LEASE_HOLDER = Gauge(
    "leadstream_relay_lease_holder", "1 while this process holds the publishing lease of the outbox table",
    ["outbox"],
)
LEASE_TAKEOVERS = Counter(
    "leadstream_relay_lease_takeovers_total",
    "Times this process took the publishing lease of the outbox table (from: free = released or never held, "
    "expired = its holder stopped renewing it)",
    ["outbox", "from"],
)


def lease_table(outbox: Table) -> Table:
    """The lease table of ``outbox`` (``<outbox>_lease``, in the outbox's metadata): one row per
    outbox table, keyed by its name. Its migration creates the table and the row."""
    name = f"{outbox.name}_lease"
    if name in outbox.metadata.tables:
        return outbox.metadata.tables[name]
    return Table(
        name, outbox.metadata,
        Column("outbox", String(200), primary_key=True),
        Column("holder", String(200), nullable=True),
        Column("epoch", BigInteger().with_variant(Integer, "sqlite"), nullable=False, default=0),
        Column("acquired_at", DateTime(timezone=True), nullable=True),
        Column("renewed_at", DateTime(timezone=True), nullable=True),
        Column("expires_at", DateTime(timezone=True), nullable=True),
    )


def holder_id() -> str:
    """A name no other relay has: host, process id and a random part (a restarted process with
    a reused pid is still another holder)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class OutboxLease:
    """This process's claim on the lease of one outbox table."""

    def __init__(self, db, outbox: Table, settings, holder: str | None = None) -> None:  # noqa: ANN001
        self.db = db
        self.outbox = outbox.name
        self.table = lease_table(outbox)
        self.holder = holder or holder_id()
        self.duration = float(settings.outbox_lease_s)
        self.renew_every = float(settings.outbox_lease_renew_s)
        self.epoch: int | None = None  # set while this process believes it holds the lease
        self._valid_until = 0.0  # event-loop time after which it no longer acts on that belief
        LEASE_HOLDER.labels(self.outbox)  # shown as 0 until this process takes the lease

    @property
    def held(self) -> bool:
        """True while this process may publish: it took or renewed the lease recently enough
        that nobody else can have taken it over."""
        return self.epoch is not None and asyncio.get_running_loop().time() < self._valid_until

    def fence(self) -> ColumnElement[bool]:
        """A condition true only while the lease row still has this holder and epoch: added to
        the holder's writes so that one that lost the lease changes nothing."""
        return self._fence(literal(self.outbox), literal(self.holder), literal(self.epoch))

    def fence_params(self) -> tuple[ColumnElement[bool], dict]:
        """``fence`` with named parameters instead of literals, and their values: for a
        statement executed with many parameter sets (one per row)."""
        clause = self._fence(bindparam("_lease_outbox", type_=String()), bindparam("_lease_holder", type_=String()),
                             bindparam("_lease_epoch", type_=BigInteger()))
        return clause, {"_lease_outbox": self.outbox, "_lease_holder": self.holder, "_lease_epoch": self.epoch}

    def _fence(self, outbox, holder, epoch) -> ColumnElement[bool]:  # noqa: ANN001
        t = self.table.c
        return exists().where(t.outbox == outbox, t.holder == holder, t.epoch == epoch)

    async def refresh(self) -> str | None:
        """Renew the lease if this process holds it, else take it if it is free or expired.

        Returns what changed: ``"acquired"``, ``"lost"`` (another process took it over) or
        ``None``. Raises on database errors: the lease is then held until its local validity
        ends, and renewed at the next call if nobody took it meanwhile."""
        started = asyncio.get_running_loop().time()
        if self.epoch is not None:
            if await self._renew():
                self._valid_until = started + self.duration - self.renew_every
                return None
            log.warning("outbox lease lost: another relay took it over", outbox=self.outbox, epoch=self.epoch)
            self._drop()
            return "lost"
        taken = await self._take()
        if taken is None:
            return None
        self.epoch, previous = taken
        self._valid_until = started + self.duration - self.renew_every
        LEASE_HOLDER.labels(self.outbox).set(1)
        LEASE_TAKEOVERS.labels(self.outbox, previous).inc()
        # from an expired holder: it died or stalled (its rows in flight are published again)
        (log.warning if previous == "expired" else log.info)(
            "outbox lease taken: this relay publishes", outbox=self.outbox, epoch=self.epoch, holder=self.holder,
            previous=previous)
        return "acquired"

    def suspend(self) -> None:
        """Stop acting as the holder until a renewal succeeds (one failed: the database may be
        away, and the lease may expire before the next one)."""
        self._valid_until = 0.0

    def _drop(self) -> None:
        self.epoch = None
        self._valid_until = 0.0
        LEASE_HOLDER.labels(self.outbox).set(0)

    def _clock(self, dialect: str) -> tuple[ColumnElement, ColumnElement]:
        """Now and the expiry of a lease taken or renewed now, on the database's clock where
        there is one (PostgreSQL); SQLite's processes share this host's clock."""
        if dialect == "postgresql":
            now = func.clock_timestamp(type_=DateTime(timezone=True))
            return now, now + literal(timedelta(seconds=self.duration), Interval())
        wall = datetime.now(timezone.utc)
        stamp = DateTime(timezone=True)
        return literal(wall, stamp), literal(wall + timedelta(seconds=self.duration), stamp)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A short transaction of its own for one lease statement. Not a unit of work: on SQLite
        that queues behind this process's other writers (a worker's batch, the group commit) and
        their deferred writes, and a renewal stuck there for the lease time hands the lease to
        another process while this one is healthy (SQLite's own lock is still waited for)."""
        async with self.db.engine.begin() as connection:
            yield connection

    async def _take(self) -> tuple[int, str] | None:
        t = self.table.c
        dialect = self.db.engine.dialect.name
        now, _ = self._clock(dialect)
        async with self.db.reader() as session:
            row = (await session.execute(
                select(t.epoch, t.holder, or_(t.holder.is_(None), t.expires_at < now)).where(t.outbox == self.outbox)
            )).first()
        if row is None:  # the row the migration made is gone (e.g. the table was emptied by hand)
            async with self._transaction() as connection:
                existing = (await connection.execute(select(t.epoch).where(t.outbox == self.outbox))).first()
                if existing is None:
                    await connection.execute(insert(self.table).values(outbox=self.outbox, epoch=0))
            return None  # taken at the next try, like any free lease
        epoch, holder, free = row
        if not free:
            return None
        async with self._transaction() as connection:
            now, expires = self._clock(dialect)
            result = await connection.execute(
                update(self.table)
                .where(t.outbox == self.outbox, t.epoch == epoch, or_(t.holder.is_(None), t.expires_at < now))
                .values(holder=self.holder, epoch=t.epoch + 1, acquired_at=now, renewed_at=now, expires_at=expires)
            )
        if result.rowcount != 1:
            return None  # another relay took it first
        return epoch + 1, "free" if holder is None else "expired"

    async def _renew(self) -> bool:
        t = self.table.c
        async with self._transaction() as connection:
            now, expires = self._clock(self.db.engine.dialect.name)
            result = await connection.execute(
                update(self.table)
                .where(and_(t.outbox == self.outbox, t.holder == self.holder, t.epoch == self.epoch))
                .values(renewed_at=now, expires_at=expires)
            )
        return result.rowcount == 1

    async def release(self) -> None:
        """Give the lease up (clean stop), so another relay takes it at once; the caller has
        written the marks of what it published first."""
        if self.epoch is None:
            return
        t = self.table.c
        try:
            async with self._transaction() as connection:
                now, _ = self._clock(self.db.engine.dialect.name)
                await connection.execute(
                    update(self.table)
                    .where(t.outbox == self.outbox, t.holder == self.holder, t.epoch == self.epoch)
                    .values(holder=None, expires_at=now)
                )
            log.info("outbox lease released", outbox=self.outbox, epoch=self.epoch)
        finally:
            self._drop()
