"""All SQL of the qualification service, over the pipeline store (``shared/store/models.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.store.models import Account, Contact, Opportunity, StageChange, Touch


# A batch of events is applied in one transaction with autoflush off (one flush, multi-row
# inserts at commit); these per-transaction caches keep what was added visible meanwhile.


def _cache(session: AsyncSession, name: str) -> dict:
    return session.info.setdefault(f"qualification.{name}", {})


async def contact_by_email(session: AsyncSession, email: str) -> Contact | None:
    cache = _cache(session, "contacts")
    if email not in cache:
        cache[email] = (await session.execute(select(Contact).where(Contact.email == email))).scalar_one_or_none()
    return cache[email]


async def prefetch(session: AsyncSession, emails: set[str], domains: set[str]) -> None:
    """Load the contacts (with their timelines) and accounts a batch will touch, in a few queries."""
    contacts = _cache(session, "contacts")
    wanted = sorted(e for e in emails if e not in contacts)
    ids: list[str] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        found = {c.email: c for c in (await session.execute(select(Contact).where(Contact.email.in_(chunk)))).scalars()}
        for email in chunk:
            contacts[email] = found.get(email)
        ids += [c.id for c in found.values()]
    timelines = _cache(session, "timelines")
    ids = [i for i in ids if i not in timelines]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for contact_id in chunk:
            timelines[contact_id] = []
        rows = await session.execute(
            select(Touch).where(Touch.contact_id.in_(chunk)).order_by(Touch.occurred_at, Touch.event_id)
        )
        for touch in rows.scalars():
            timelines[touch.contact_id].append(touch)
    domains = sorted(domains)
    for start in range(0, len(domains), 500):
        # loaded into the session's identity map: session.get() finds them without a query
        await session.execute(select(Account).where(Account.domain.in_(domains[start:start + 500])))


def add_contact(session: AsyncSession, contact: Contact) -> None:
    session.add(contact)
    _cache(session, "contacts")[contact.email] = contact
    _cache(session, "timelines")[contact.id] = []


async def contact_by_id(session: AsyncSession, contact_id: str) -> Contact | None:
    return await session.get(Contact, contact_id)


async def account_by_domain(session: AsyncSession, domain: str) -> Account | None:
    return await session.get(Account, domain)


async def ensure_account(session: AsyncSession, domain: str, at: datetime) -> Account:
    """The account of ``domain``, created if missing.

    Contacts of one company sit on different partitions, so two workers may create the
    same account at once: insert-if-absent keeps both transactions alive.
    """
    existing = await session.get(Account, domain)
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
    return await session.get(Account, domain)


def add(session: AsyncSession, row: object) -> None:
    session.add(row)


async def timeline(session: AsyncSession, contact_id: str) -> list[Touch]:
    """Every fact about a contact (stored, and added in this transaction)."""
    cache = _cache(session, "timelines")
    if contact_id not in cache:
        rows = await session.execute(
            select(Touch).where(Touch.contact_id == contact_id).order_by(Touch.occurred_at, Touch.event_id)
        )
        cache[contact_id] = list(rows.scalars())
    return cache[contact_id]


async def add_touch(session: AsyncSession, touch: Touch) -> None:
    facts = await timeline(session, touch.contact_id)
    facts.append(touch)
    session.add(touch)


async def opportunity_of(session: AsyncSession, contact_id: str) -> Opportunity | None:
    """The contact's qualified opportunity (one per contact: qualification creates it once)."""
    await session.flush()
    return (
        await session.execute(
            select(Opportunity).where(Opportunity.contact_id == contact_id).order_by(Opportunity.qualified_at).limit(1)
        )
    ).scalar_one_or_none()


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
    """When the contact last entered ``stage`` (a nurtured contact re-qualifies on what came after)."""
    await session.flush()  # the move may have been made earlier in this transaction
    return (
        await session.execute(
            select(StageChange.changed_at)
            .where(StageChange.contact_id == contact_id, StageChange.to_stage == stage)
            .order_by(StageChange.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
