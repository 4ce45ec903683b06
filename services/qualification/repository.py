"""The qualification service's queries over the pipeline store (``pipeline_store/models.py``) and the
per-transaction caches that answer them; the records they return, and their write-back at
commit, are ``records.py``'s."""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import Account, ConsentEntry, Contact, ErasedSubject, Opportunity, Score, StageChange, Touch
from services.qualification import records, rollups
from services.qualification.domain import attribution
from services.qualification.records import AccountRecord, ContactRecord, hold
from shared.db import WriteConflict, before_inserts, in_chunks, prefetch_rows, prefetched, stage_insert, staging_of
from shared.privacy import lock_subjects
from shared.times import as_utc

# A batch of events is applied in one transaction; its contacts and accounts are records
# held and written back at commit (``records``), its facts (touches, scores, stage changes,
# opportunities) queued as multi-row inserts. These per-transaction caches keep what was
# read and added visible meanwhile, so nothing is written mid-batch.

# What the timeline needs of a touch (not its payload: that is for the API's timeline view).
# Core columns: rows without the ORM's loading machinery.
_FACT_COLUMNS = tuple(Touch.__table__.c[name] for name in (
    "event_id", "contact_id", "motion", "channel", "campaign", "form_id", "form_type", "sequence", "outcome",
    "occurred_at"))
_FACT_KEYS = tuple(c.key for c in _FACT_COLUMNS)


class Timeline:
    """A contact's facts as the domain reads them (stored, and added in this transaction), in
    time order, and the ids of those that are real touches (with a channel: a prospect
    record has none)."""

    __slots__ = ("facts", "real")

    def __init__(self) -> None:
        self.facts: list[attribution.Touch] = []
        self.real: set[str] = set()

    def add(self, row: Sequence[Any]) -> None:
        """Add a fact from its values in ``_FACT_COLUMNS`` order (a Core row is one: unpacked
        by position, which costs a third of reading a row's attributes by name)."""
        event_id, _, motion, channel, campaign, form_id, form_type, sequence, outcome, occurred_at = row
        fact = attribution.Touch(motion, channel or "other", as_utc(occurred_at), campaign, form_id, form_type,
                                 sequence, event_id, outcome)
        if channel is not None:
            self.real.add(event_id)
        if not self.facts or _fact_order(self.facts[-1]) <= _fact_order(fact):
            self.facts.append(fact)  # rows come in time order: the usual case
        else:
            bisect.insort(self.facts, fact, key=_fact_order)


def _fact_order(fact: attribution.Touch) -> tuple:
    return fact.occurred_at, fact.event_id


@dataclass(eq=False, slots=True)
class _Caches:
    """What this transaction read, and what it added, kept with its unit of work's staging
    (``shared.db.Staging.state``) so it stays visible until the commit writes it."""

    contacts: dict[str, ContactRecord | None] = field(default_factory=dict)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    opportunities: dict[str, str | None] = field(default_factory=dict)
    # the opportunities created in this transaction: their rows, queued until the commit
    opportunities_added: dict[str, dict[str, Any]] = field(default_factory=dict)
    entered: dict[tuple[str, str], datetime | None] = field(default_factory=dict)
    accounts: dict[str, AccountRecord | None] = field(default_factory=dict)
    # a contact's consent ledger as stored (read only when an event carries it) and as added;
    # the stored contacts of the batch whose ledger is not read yet (read together, once)
    consents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    consents_added: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    consents_unread: set[str] = field(default_factory=set)


def _caches(session: AsyncSession) -> _Caches:
    return staging_of(session).state(_Caches)


# stages whose latest entry time qualification reads (a nurtured contact re-qualifies on what came after)
_WATCHED_ENTRIES = ("nurture",)
_CONTACTS = Contact.__table__


async def contact_by_email(session: AsyncSession, email: str) -> ContactRecord | None:
    cache = _caches(session).contacts
    if email not in cache:
        row = (await session.execute(records.contacts_for_update(_CONTACTS.c.email == email))).first()
        cache[email] = hold(session, ContactRecord.from_row(row) if row is not None else None)
    return cache[email]


async def prefetch(session: AsyncSession, emails: set[str], domains: set[str]) -> None:
    """Load the contacts (with their timelines) and accounts a batch will touch, in a few queries."""
    contacts = _caches(session).contacts
    wanted = sorted(e for e in emails if e not in contacts)
    ids: list[str] = []
    for chunk in in_chunks(wanted):
        rows = (await session.execute(records.contacts_for_update(_CONTACTS.c.email.in_(chunk)))).all()
        found = {r.email: r for r in map(ContactRecord.from_row, rows)}
        for email in chunk:
            contacts[email] = hold(session, found.get(email))  # the record held if one already is
        ids += [c.id for c in found.values()]
    caches = _caches(session)
    caches.consents_unread.update(i for i in ids if i not in caches.consents)
    timelines = _caches(session).timelines
    ids = [i for i in ids if i not in timelines]
    for chunk in in_chunks(ids):
        for contact_id in chunk:
            timelines[contact_id] = Timeline()
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(_FACT_COLUMNS[1].in_(chunk)).order_by(_FACT_COLUMNS[-1], _FACT_COLUMNS[0])
        )
        for touch in rows.all():
            timelines[touch[1]].add(touch)
        opportunities = _caches(session).opportunities
        rows = await session.execute(
            select(Opportunity.contact_id, Opportunity.id).where(Opportunity.contact_id.in_(chunk))
            .order_by(Opportunity.qualified_at.desc())
        )
        for contact_id in chunk:
            opportunities.setdefault(contact_id, None)
        for contact_id, opportunity_id in rows:
            opportunities[contact_id] = opportunity_id  # ends on the earliest
    entered = _caches(session).entered
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
    accounts = _caches(session).accounts
    domains = [d for d in domains if d not in accounts]
    for chunk in in_chunks(domains):
        rows = (await session.execute(records.accounts(Account.domain.in_(chunk)))).all()
        found = {r.domain: r for r in map(AccountRecord.from_row, rows)}
        for domain in chunk:
            accounts[domain] = found.get(domain)


def add_contact(session: AsyncSession, contact: ContactRecord) -> None:
    contact.new = True
    hold(session, contact)
    _caches(session).contacts[contact.email] = contact
    _caches(session).timelines[contact.id] = Timeline()
    _caches(session).opportunities[contact.id] = None  # a new contact has none yet
    _caches(session).consents[contact.id] = []  # nor a consent ledger


async def contact_by_id(session: AsyncSession, contact_id: str, *, lock: bool = False) -> ContactRecord | None:
    """The contact; ``lock`` reads it FOR UPDATE (a re-score then waits for a worker's batch
    holding it, and a worker for the re-score: neither overwrites the other) and writes it
    back when the unit of work commits."""
    query = select(_CONTACTS).where(_CONTACTS.c.id == contact_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        return None
    contact = ContactRecord.from_row(row)
    return hold(session, contact) if lock else contact


async def account_by_domain(session: AsyncSession, domain: str) -> AccountRecord | None:
    """The account as this transaction knows it (read once, not held: see above), with the
    batch's changes; ``None`` if it was not stored when read and the batch made none."""
    accounts = _caches(session).accounts
    if domain not in accounts:
        row = (await session.execute(records.accounts(Account.domain == domain))).first()
        accounts[domain] = AccountRecord.from_row(row) if row is not None else None
    return accounts[domain]


async def ensure_account(session: AsyncSession, domain: str, at: datetime) -> AccountRecord:
    """The account of ``domain``; one not stored is created in memory, inserted at commit
    (``_write_accounts``: insert-if-absent, as another worker may create it meanwhile)."""
    account = await account_by_domain(session, domain)
    if account is None:
        account = AccountRecord(new=True, domain=domain, firmographics={}, created_at=at, updated_at=at)
        _caches(session).accounts[domain] = account
        records.add_account(session, account)
    return account


async def timeline(session: AsyncSession, contact_id: str) -> Timeline:
    """Every fact about a contact (stored, and added in this transaction), without payloads."""
    cache = _caches(session).timelines
    if contact_id not in cache:
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(_FACT_COLUMNS[1] == contact_id).order_by(_FACT_COLUMNS[-1], _FACT_COLUMNS[0])
        )
        found = cache[contact_id] = Timeline()
        for row in rows.all():
            found.add(row)
    return cache[contact_id]


_ERASED = ErasedSubject.__table__


def unknown(session: AsyncSession, emails: set[str]) -> list[str]:
    """The emails of ``emails`` that ``prefetch`` found no contact for."""
    contacts = _caches(session).contacts
    return [e for e in emails if e in contacts and contacts[e] is None]


async def prefetch_erased(session: AsyncSession, subjects: list[str]) -> None:
    """Whether the people a batch would create were erased, in one query (``erased`` answers)."""
    if subjects:
        await prefetch_rows(session, _ERASED.c.subject, subjects, _ERASED.c.requested_at)


async def erased(session: AsyncSession, subject: str) -> datetime | None | bool:
    """``None`` if ``subject`` was not erased; else when the erasure was asked (``True`` when unknown)."""
    known = prefetched(session, _ERASED.c.subject)
    if subject in known:
        row = known[subject]
    else:
        found = (await session.execute(
            select(_ERASED.c.subject, _ERASED.c.requested_at).where(_ERASED.c.subject == subject))).first()
        row = dict(found._mapping) if found else None
    if row is None:
        return None
    return row["requested_at"] or True


@dataclass(slots=True)
class _Created:
    """The subjects of the people this unit of work creates, checked at commit."""

    subjects: set[str] = field(default_factory=set)


def check_not_erased(session: AsyncSession, subject: str) -> None:
    """At commit, before anything is written: raise ``WriteConflict`` if the person of
    ``subject``, whom this unit of work creates, was erased after it read that they were not
    (an erasure committed while the batch computed). The batch runs again and drops the fact,
    instead of bringing back a person whose erasure was reported complete. The check takes
    each subject's lock first (``lock_subjects``), as the erasure does."""
    created = staging_of(session).state(_Created)
    if not created.subjects:
        before_inserts(session, "qualification.not-erased", _check_not_erased)
    created.subjects.add(subject)


async def _check_not_erased(writer: AsyncSession) -> None:
    subjects = sorted(staging_of(writer).state(_Created).subjects)
    await lock_subjects(writer, subjects)
    for chunk in in_chunks(subjects):
        if (await writer.execute(select(_ERASED.c.subject).where(_ERASED.c.subject.in_(chunk)).limit(1))).first():
            raise WriteConflict("a person the batch creates was erased since it read")


def lift_erasure(session: AsyncSession, subject: str) -> None:
    """Forget that ``subject`` was erased (a new opt-in), when the unit of work commits."""
    async def lift(writer: AsyncSession) -> None:
        await writer.execute(delete(_ERASED).where(_ERASED.c.subject == subject))

    before_inserts(session, f"qualification.lift.{subject}", lift)


async def add_touch(session: AsyncSession, row: dict[str, Any]) -> None:
    """Queue the touch's insert and add it to the contact's timeline."""
    (await timeline(session, row["contact_id"])).add([row.get(key) for key in _FACT_KEYS])
    records.stage_fact(session, Touch.__table__, row)
    rollups.count_fact(session, row)


def add_score(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, Score.__table__, row)  # not a fact about the contact: its result


def add_stage_change(session: AsyncSession, row: dict[str, Any]) -> None:
    records.stage_fact(session, StageChange.__table__, row)
    if row["to_stage"] in _WATCHED_ENTRIES:
        _caches(session).entered[(row["contact_id"], row["to_stage"])] = row["changed_at"]


async def opportunity_of(session: AsyncSession, contact_id: str) -> str | None:
    """The id of the contact's qualified opportunity (one per contact: qualification creates it once)."""
    cache = _caches(session).opportunities
    if contact_id not in cache:
        cache[contact_id] = (
            await session.execute(
                select(Opportunity.id).where(Opportunity.contact_id == contact_id)
                .order_by(Opportunity.qualified_at).limit(1)
            )
        ).scalar_one_or_none()
    return cache[contact_id]


async def opportunity_qualified_at(session: AsyncSession, contact_id: str, opportunity_id: str) -> datetime | None:
    """When the contact's opportunity qualified (created in this transaction or stored)."""
    added = _caches(session).opportunities_added.get(contact_id)
    if added is not None:
        return added["qualified_at"]
    return (await session.execute(select(Opportunity.qualified_at).where(Opportunity.id == opportunity_id))
            ).scalar_one_or_none()


async def update_opportunity(session: AsyncSession, contact_id: str, opportunity_id: str,
                             values: dict[str, Any]) -> None:
    """Change the contact's opportunity: its queued row if created in this transaction."""
    added = _caches(session).opportunities_added.get(contact_id)
    if added is not None:
        added.update(values)
        return
    await session.execute(update(Opportunity).where(Opportunity.id == opportunity_id).values(**values))


async def reopen_nurtured(session: AsyncSession, opportunity_id: str, at: datetime) -> tuple | None:
    """Open the opportunity again at ``sql`` if sales nurtured it (its contact qualified
    again); its stored (stage, amount, estimated) before, or ``None`` when it was not nurtured."""
    row = (await session.execute(
        update(Opportunity).where(Opportunity.id == opportunity_id, Opportunity.stage == "nurture")
        .values(stage="sql", closed_at=None, close_reason=None, updated_at=at)
        .returning(Opportunity.amount, Opportunity.amount_estimated))).first()
    return None if row is None else ("nurture", row[0], bool(row[1]))


# what a consent entry is read as (without its row id)
_CONSENT_COLUMNS = tuple(c for c in ConsentEntry.__table__.c if c.key != "id")


def add_consent(session: AsyncSession, row: dict[str, Any]) -> None:
    """Queue a consent ledger entry's insert (every column but the id, as one multi-row INSERT)."""
    records.stage_fact(session, ConsentEntry.__table__, row)
    _caches(session).consents_added.setdefault(row["contact_id"], []).append(row)


async def consents_of(session: AsyncSession, contact_id: str) -> list[dict[str, Any]]:
    """The contact's consent ledger entries, stored and added in this transaction (in no order:
    ``shared.consent`` orders them). Read only when asked (an ``opportunity.qualified`` event
    carries them), not for every fact; then the ledgers of every contact the batch prefetched
    are read with it, so a batch in which many contacts qualify reads them in one query."""
    caches = _caches(session)
    if contact_id not in caches.consents:
        wanted = sorted(caches.consents_unread | {contact_id})
        caches.consents_unread.clear()
        for chunk in in_chunks(wanted):
            for one in chunk:
                caches.consents[one] = []
            rows = await session.execute(select(*_CONSENT_COLUMNS).where(ConsentEntry.contact_id.in_(chunk)))
            for row in rows:
                caches.consents[row.contact_id].append(dict(row._mapping))
    return caches.consents[contact_id] + caches.consents_added.get(contact_id, [])


# every column, so the opportunities of a batch go as one multi-row INSERT (same keys in each row)
_OPPORTUNITY_FIELDS = {c.key: None for c in Opportunity.__table__.columns} | {"currency": "USD",
                                                                             "amount_estimated": False}


def add_opportunity(session: AsyncSession, row: dict[str, Any]) -> None:
    row = _OPPORTUNITY_FIELDS | row
    records.stage_fact(session, Opportunity.__table__, row)
    caches = _caches(session)
    caches.opportunities[row["contact_id"]] = row["id"]
    caches.opportunities_added[row["contact_id"]] = row


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
    cache = _caches(session).entered
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


async def mql_cause(session: AsyncSession, contact_id: str) -> str | None:
    """The event that first moved the contact to ``mql`` (from its stage history)."""
    return (
        await session.execute(
            select(StageChange.cause_event_id)
            .where(StageChange.contact_id == contact_id, StageChange.to_stage == "mql")
            .order_by(StageChange.id).limit(1)
        )
    ).scalar_one_or_none()
