"""Erasure and suppression, the parts every store shares.

A person is named between services by a *subject*: the keyed hash (HMAC-SHA256 with
``LEADSTREAM_PRIVACY_SECRET``) of their normalised email, never the email. An erasure
travels as ``erasure.requested`` on ``privacy.requests``; each store that holds personal
data finds the person by hashing the identities it holds (no store keeps an email-to-hash
index: the hash is derived when an erasure comes), erases their personal fields, remembers
the subject (suppression) and answers ``erasure.completed`` through its outbox in the same
transaction. See docs/privacy.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import DateTime, String, delete, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from shared.consumer import Delivery, InboxConsumer
from shared.db import transaction_time
from shared.events import (
    ERASURE_COMPLETED, ERASURE_REQUESTED, PRIVACY_REQUESTS, SUPPRESSION_LIFTED, ErasureCompleted, ErasureRequested,
    SuppressionLifted, make_event,
)
from shared.identity import normalise_email
from shared.outbox import OutboxMixin, stage_event

log = structlog.get_logger("privacy")

# `make run`'s value (README: unsafe in production); anything else must set its own
DEVELOPMENT_SECRET = "development-only-privacy-secret-unsafe-in-production"


class MissingPrivacySecret(RuntimeError):
    """``LEADSTREAM_PRIVACY_SECRET`` is not set: a service that stores personal data refuses to start."""


class PrivacyKey:
    """The keyed hash of a person's identity (the normalised email): what suppression lists
    and erasure requests hold instead of the email. Without the secret it cannot be
    reversed by hashing candidate addresses."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise MissingPrivacySecret("LEADSTREAM_PRIVACY_SECRET is empty")
        self._key = secret.encode()

    def subject_of(self, identity: str) -> str:
        """The subject of an identity already normalised (``shared.identity.normalise_email``)."""
        return hmac.new(self._key, identity.encode(), hashlib.sha256).hexdigest()

    def subject_of_email(self, email: str) -> str:
        """The subject of an email as typed (normalised first; ``ValueError`` if it is none)."""
        return self.subject_of(normalise_email(email))

    def matching(self, identities: Iterable[str], subjects: Iterable[str]) -> dict[str, str]:
        """``identity -> subject`` for the identities whose subject is one of ``subjects``."""
        wanted = set(subjects)
        found = {}
        for identity in identities:
            if identity:
                subject = self.subject_of(identity)
                if subject in wanted:
                    found[identity] = subject
        return found


def privacy_key(settings: Any) -> PrivacyKey:
    """The key of ``LEADSTREAM_PRIVACY_SECRET``; ``MissingPrivacySecret`` without one."""
    secret = getattr(settings, "privacy_secret", None)
    if not secret:
        raise MissingPrivacySecret(
            "LEADSTREAM_PRIVACY_SECRET is not set: it keys the hashes that stand for erased people "
            "(suppression) and erasure requests. Set a long random value and keep it (a new one forgets "
            "every suppression); `make run` uses a development value that is unsafe in production."
        )
    if secret == DEVELOPMENT_SECRET and not getattr(settings, "embedded_broker", True):
        log.warning("LEADSTREAM_PRIVACY_SECRET is `make run`'s public development value: the hashes that stand "
                    "for erased people can be matched by anyone; set a long random value of your own")
    return PrivacyKey(secret)


class SuppressionMixin:
    """Columns of a suppression list: the subjects erased from this store. A later fact about
    one is refused (or dropped) until a new marketing opt-in lifts it."""

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    erasure_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


async def lock_subjects(session: AsyncSession, subjects: Iterable[str]) -> None:
    """On PostgreSQL, hold each subject's transaction-level advisory lock (in order, so two
    transactions never wait on each other), until the transaction ends. An erasure takes its
    subject's before it looks for the person, and a batch that creates people takes theirs
    before it checks that none was erased since it read: whichever commits first, the other
    sees it. SQLite needs none: its writers take turns on the whole database."""
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return
    # a subject is a hex digest: its first 15 digits are a key that fits a bigint; one
    # statement takes them all, in key order (unnest keeps the array's order)
    keys = sorted({int(subject[:15], 16) for subject in subjects})
    if keys:
        await session.execute(_LOCK_KEYS, {"keys": keys})


async def suppressed(session: AsyncSession, model: type[SuppressionMixin], subjects: Iterable[str]) -> set[str]:
    """Which of ``subjects`` are on the suppression list ``model``."""
    wanted = list(dict.fromkeys(subjects))
    if not wanted:
        return set()
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        rows = await session.execute(select(model.subject).where(model.subject.in_(wanted[start:start + 500])))
        found.update(rows.scalars())
    return found


# What an erased fact keeps: how and when it came, never who. Names, email, phone, title,
# LinkedIn URL, custom fields, page URLs, referrers, free text, company details, tags and the
# sales tool's ids are dropped; a consent keeps only whether marketing was allowed.
KEPT_FIELDS = ("occurred_at", "utm", "form_id", "form_type", "lead_magnet", "channel", "outcome", "sequence",
               "step", "rep", "owner", "list", "source", "integration")


def scrub(data: dict[str, Any] | None) -> dict[str, Any]:
    """The non-personal part of an event's data (or a stored payload of one)."""
    if not isinstance(data, dict):
        return {}
    kept = {name: data[name] for name in KEPT_FIELDS if name in data}
    consent = data.get("consent")
    if isinstance(consent, dict) and "marketing" in consent:
        kept["consent"] = {"marketing": consent["marketing"]}
    return kept


# (session, subject, erasure) -> how many records were erased
Erase = Callable[[AsyncSession, str, ErasureRequested], Awaitable[int]]


def report_id(erasure_id: str, store: str) -> str:
    """The id of a store's ``erasure.completed`` for an erasure: the same however often it is made."""
    return str(uuid.uuid5(_REPORTS, f"{erasure_id}|{store}"))


_REPORTS = uuid.UUID("6f1d2a8e-3c4b-4e5f-9a0b-1c2d3e4f5a6b")
SOURCE = "/leadstream/privacy"


def stage_report(session: AsyncSession, outbox_model: type[OutboxMixin], request: ErasureRequested, store: str,
                 records: int) -> None:
    """Stage the store's ``erasure.completed`` in its outbox, in the erasure's transaction."""
    at = transaction_time(session)
    data = ErasureCompleted(erasure_id=request.erasure_id, subject=request.subject, store=store, records=records,
                            completed_at=at)
    event = make_event(ERASURE_COMPLETED, data, source=f"{SOURCE}/{store}", subject=request.subject, time=at,
                       event_id=report_id(request.erasure_id, store))
    stage_event(session, outbox_model, event, key=request.subject)


def stage_lifted(session: AsyncSession, outbox_model: type[OutboxMixin], subject: str, store: str) -> None:
    """Stage ``suppression.lifted`` (a new marketing opt-in) for the other stores."""
    at = transaction_time(session)
    event = make_event(SUPPRESSION_LIFTED, SuppressionLifted(subject=subject, lifted_at=at),
                       source=f"{SOURCE}/{store}", subject=subject, time=at)
    stage_event(session, outbox_model, event, key=subject)


async def remember(session: AsyncSession, model: type[SuppressionMixin], subject: str,
                   request: ErasureRequested | None = None) -> None:
    """Put ``subject`` on the suppression list ``model`` (once)."""
    if not await suppressed(session, model, [subject]):
        session.add(model(subject=subject, erasure_id=request.erasure_id if request else None,
                          requested_at=request.requested_at if request else None,
                          created_at=transaction_time(session)))
        await session.flush()


async def lift(session: AsyncSession, model: type[SuppressionMixin], subject: str) -> None:
    await session.execute(delete(model).where(model.subject == subject))


async def truncate_log(db: Any) -> None:
    """On a SQLite file: copy the write-ahead log back and truncate it, so the page images
    from before an erasure do not linger in the log file (best effort: it waits up to 5 s
    for readers; the next erasure, or the last connection's close, does it otherwise)."""
    path = make_url(db.url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return

    def truncate() -> None:
        connection = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("write-ahead log not truncated after an erasure: readers kept it busy")
        finally:
            connection.close()

    try:
        await asyncio.to_thread(truncate)
    except Exception as exc:  # noqa: BLE001
        log.warning("write-ahead log not truncated after an erasure", error=repr(exc))


def erasure_consumer(runtime: Any, *, store: str, erase: Erase, inbox_model: type, suppression_model: type,
                     outbox_model: type[OutboxMixin]) -> InboxConsumer:
    """The consumer of ``privacy.requests`` for one store: on ``erasure.requested`` it runs
    ``erase`` (which finds the subject among what the store holds and removes the personal
    fields), remembers the subject and stages the store's report, all in one transaction
    with the inbox row, so a redelivered request erases and reports once. A store that was
    down reads the request when it is back (its group's committed offset). Its group is
    ``<LEADSTREAM_PRIVACY_CONSUMER_GROUP>-<store>``."""

    async def requested(session: AsyncSession, delivery: Delivery) -> None:
        request: ErasureRequested = delivery.data
        records = await erase(session, request.subject, request)
        await remember(session, suppression_model, request.subject, request)
        stage_report(session, outbox_model, request, store, records)
        log.info("erasure done", store=store, erasure_id=request.erasure_id, records=records)

    async def lifted(session: AsyncSession, delivery: Delivery) -> None:
        await lift(session, suppression_model, delivery.data.subject)

    async def reported(session: AsyncSession, delivery: Delivery) -> None:
        """Another store's report: nothing to do here."""

    relay = runtime.relay
    truncating: set[asyncio.Task] = set()

    def after_commit() -> None:
        # rows this process committed and has not published may have just been erased: read the table
        if relay.fresh is not None:
            relay.fresh.forget()
        relay.wake()
        if runtime.db.sqlite and not truncating:
            task = asyncio.get_running_loop().create_task(truncate_log(runtime.db))
            truncating.add(task)
            task.add_done_callback(truncating.discard)

    return InboxConsumer(
        runtime.db, runtime.kafka, runtime.settings, topics=[PRIVACY_REQUESTS],
        handlers={ERASURE_REQUESTED: requested, SUPPRESSION_LIFTED: lifted, ERASURE_COMPLETED: reported},
        name=f"{store}-privacy", inbox_model=inbox_model, after_commit=after_commit,
        group_id=f"{runtime.settings.privacy_consumer_group}-{store}",
    )
