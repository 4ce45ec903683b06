"""All SQL of the qualification service, over the pipeline store (``shared/store/models.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from shared.db import in_chunks, stage_insert
from shared.store.models import Account, Contact, Opportunity, Score, StageChange, Touch

# A batch of events is applied in one transaction with autoflush off: contacts, accounts and
# opportunities are ORM objects flushed once at commit; the append-only rows (touches,
# scores, stage changes) are queued as multi-row inserts (``stage_insert``). These
# per-transaction caches keep what was added visible meanwhile, so nothing flushes mid-batch.

# What the timeline needs of a touch (not its payload: that is for the API's timeline view).
_FACT_COLUMNS = (Touch.event_id, Touch.contact_id, Touch.motion, Touch.channel, Touch.campaign, Touch.form_id,
                 Touch.form_type, Touch.sequence, Touch.outcome, Touch.occurred_at)


def _cache(session: AsyncSession, name: str) -> dict:
    return session.info.setdefault(_key(name), {})


def _key(name: str) -> str:
    return f"qualification.{name}"


# Contacts are read FOR UPDATE (row locks on PostgreSQL; SQLite's one writer already holds
# the database), so the batch may write every column qualification owns back in one
# executemany: the ORM groups UPDATEs only when they set the same columns, and per-event
# changes differ (a score here, a stage there), which cost one statement per contact.
_FIXED = {"id", "email", "email_as_typed", "created_at"}
_UNIFORM = tuple(c.key for c in Contact.__table__.columns if c.key not in _FIXED)
# stages whose latest entry time qualification reads (a nurtured contact re-qualifies on what came after)
_WATCHED_ENTRIES = ("nurture",)


def _contacts_for_update(condition):  # noqa: ANN001, ANN202
    return select(Contact).where(condition).order_by(Contact.email).with_for_update()


@event.listens_for(Session, "before_flush")
def _uniform_contact_updates(session: Session, _context, _instances) -> None:  # noqa: ANN001
    if not session.info.get(_key("contacts")):  # only sessions that read contacts FOR UPDATE
        return
    for obj in session.dirty:
        if isinstance(obj, Contact):
            for key in _UNIFORM:
                flag_modified(obj, key)


async def contact_by_email(session: AsyncSession, email: str) -> Contact | None:
    cache = _cache(session, "contacts")
    if email not in cache:
        cache[email] = (await session.execute(_contacts_for_update(Contact.email == email))).scalar_one_or_none()
    return cache[email]


async def prefetch(session: AsyncSession, emails: set[str], domains: set[str]) -> None:
    """Load the contacts (with their timelines) and accounts a batch will touch, in a few queries."""
    contacts = _cache(session, "contacts")
    wanted = sorted(e for e in emails if e not in contacts)
    ids: list[str] = []
    for chunk in in_chunks(wanted):
        found = {c.email: c for c in (await session.execute(_contacts_for_update(Contact.email.in_(chunk)))).scalars()}
        for email in chunk:
            contacts[email] = found.get(email)
        ids += [c.id for c in found.values()]
    timelines = _cache(session, "timelines")
    ids = [i for i in ids if i not in timelines]
    for chunk in in_chunks(ids):
        for contact_id in chunk:
            timelines[contact_id] = []
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(Touch.contact_id.in_(chunk)).order_by(Touch.occurred_at, Touch.event_id)
        )
        for touch in rows:
            timelines[touch.contact_id].append(touch)
        opportunities = _cache(session, "opportunities")
        rows = await session.execute(
            select(Opportunity.contact_id, Opportunity.id).where(Opportunity.contact_id.in_(chunk))
            .order_by(Opportunity.qualified_at.desc())
        )
        for contact_id in chunk:
            opportunities.setdefault(contact_id, None)
        for contact_id, opportunity_id in rows:
            opportunities[contact_id] = opportunity_id  # ends on the earliest
    entered = _cache(session, "entered")
    nurtured = [c.id for c in contacts.values() if c is not None and c.stage in _WATCHED_ENTRIES
                and (c.id, c.stage) not in entered]
    for chunk in in_chunks(nurtured):
        rows = await session.execute(
            select(StageChange.contact_id, StageChange.to_stage, StageChange.changed_at)
            .where(StageChange.contact_id.in_(chunk), StageChange.to_stage.in_(_WATCHED_ENTRIES))
            .order_by(StageChange.id)
        )
        for contact_id, stage, changed_at in rows:
            entered[(contact_id, stage)] = changed_at  # ends on the latest entry
    accounts = _cache(session, "accounts")
    domains = sorted(d for d in domains if d not in accounts)
    for chunk in in_chunks(domains):
        found = {a.domain: a for a in (await session.execute(select(Account).where(Account.domain.in_(chunk)))).scalars()}
        for domain in chunk:
            accounts[domain] = found.get(domain)  # held here: the identity map only keeps weak references


def add_contact(session: AsyncSession, contact: Contact) -> None:
    session.add(contact)
    _cache(session, "contacts")[contact.email] = contact
    _cache(session, "timelines")[contact.id] = []
    _cache(session, "opportunities")[contact.id] = None  # a new contact has none yet


async def contact_by_id(session: AsyncSession, contact_id: str, *, lock: bool = False) -> Contact | None:
    """The contact; ``lock`` reads it FOR UPDATE (a re-score then waits for a worker's batch
    holding it, and a worker for the re-score: neither overwrites the other)."""
    if not lock:
        return await session.get(Contact, contact_id)
    return (await session.execute(
        select(Contact).where(Contact.id == contact_id).with_for_update().execution_options(populate_existing=True)
    )).scalar_one_or_none()


async def account_by_domain(session: AsyncSession, domain: str) -> Account | None:
    accounts = _cache(session, "accounts")
    if accounts.get(domain) is None:
        accounts[domain] = await session.get(Account, domain)
    return accounts[domain]


async def ensure_account(session: AsyncSession, domain: str, at: datetime) -> Account:
    """The account of ``domain``, created if missing.

    Contacts of one company sit on different partitions, so two workers may create the
    same account at once: insert-if-absent keeps both transactions alive.
    """
    existing = await account_by_domain(session, domain)
    if existing is not None:
        return existing
    values = dict(domain=domain, firmographics={}, created_at=at, updated_at=at)
    dialect = session.bind.dialect.name if session.bind is not None else ""
    if dialect == "postgresql":
        await session.execute(pg_insert(Account).values(**values).on_conflict_do_nothing(index_elements=["domain"]))
    elif dialect == "sqlite":
        await session.execute(sqlite_insert(Account).values(**values).on_conflict_do_nothing(index_elements=["domain"]))
    else:  # pragma: no cover - the two supported backends are above
        session.add(Account(**values))
        await session.flush()
    account = _cache(session, "accounts")[domain] = await session.get(Account, domain)
    return account


async def timeline(session: AsyncSession, contact_id: str) -> list[Any]:
    """Every fact about a contact (stored, and added in this transaction), without payloads."""
    cache = _cache(session, "timelines")
    if contact_id not in cache:
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(Touch.contact_id == contact_id).order_by(Touch.occurred_at, Touch.event_id)
        )
        cache[contact_id] = list(rows)
    return cache[contact_id]


async def add_touch(session: AsyncSession, row: dict[str, Any]) -> None:
    """Queue the touch's insert and add it to the contact's timeline."""
    facts = await timeline(session, row["contact_id"])
    facts.append(SimpleNamespace(**{c.key: row.get(c.key) for c in _FACT_COLUMNS}))
    stage_insert(session, Touch.__table__, row)


def add_score(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, Score.__table__, row)


def add_stage_change(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, StageChange.__table__, row)
    if row["to_stage"] in _WATCHED_ENTRIES:
        _cache(session, "entered")[(row["contact_id"], row["to_stage"])] = row["changed_at"]


async def opportunity_of(session: AsyncSession, contact_id: str) -> str | None:
    """The id of the contact's qualified opportunity (one per contact: qualification creates it once)."""
    cache = _cache(session, "opportunities")
    if contact_id not in cache:
        cache[contact_id] = (
            await session.execute(
                select(Opportunity.id).where(Opportunity.contact_id == contact_id)
                .order_by(Opportunity.qualified_at).limit(1)
            )
        ).scalar_one_or_none()
    return cache[contact_id]


def add_opportunity(session: AsyncSession, opportunity: Opportunity) -> None:
    session.add(opportunity)
    _cache(session, "opportunities")[opportunity.contact_id] = opportunity.id


async def contact_ids(session: AsyncSession, after: str | None, limit: int) -> list[str]:
    """Contact ids in id order, a page at a time (for re-scoring the whole store)."""
    query = select(Contact.id).order_by(Contact.id).limit(limit)
    if after is not None:
        query = query.where(Contact.id > after)
    return list((await session.execute(query)).scalars())


async def iter_contact_ids(db, page: int = 500) -> AsyncIterator[list[str]]:  # noqa: ANN001
    after = None
    while True:
        async with db.reader() as session:
            ids = await contact_ids(session, after, page)
        if not ids:
            return
        yield ids
        after = ids[-1]


async def entered_stage_at(session: AsyncSession, contact_id: str, stage: str) -> datetime | None:
    """When the contact last entered ``stage`` (a nurtured contact re-qualifies on what came after).

    A move made earlier in this transaction is in the cache (``add_stage_change``).
    """
    assert stage in _WATCHED_ENTRIES, stage
    cache = _cache(session, "entered")
    if (contact_id, stage) not in cache:
        cache[(contact_id, stage)] = (
            await session.execute(
                select(StageChange.changed_at)
                .where(StageChange.contact_id == contact_id, StageChange.to_stage == stage)
                .order_by(StageChange.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    return cache[(contact_id, stage)]
