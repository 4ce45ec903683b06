"""All SQL of the qualification service, over the pipeline store (``pipeline_store/models.py``)."""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, Text, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import Account, Contact, Opportunity, Score, StageChange, Touch
from services.qualification.domain import attribution
from shared.db import (
    WriteConflict, before_inserts, check_before_write, in_chunks, insert_many, insert_missing, is_unique_violation,
    stage_insert, staging_of, update_many,
)

# A batch of events is applied in one transaction. Contacts and accounts are read and written
# with Core as plain records (no ORM identity map, attribute instrumentation or flush): the
# batch writes the records that changed back in one executemany UPDATE per table, and new
# contacts in one INSERT, when the unit of work commits (``before_inserts``). The
# append-only rows (touches, scores, stage changes, opportunities) are queued as multi-row
# inserts (``stage_insert``). These per-transaction caches keep what was added visible
# meanwhile, so nothing is written mid-batch.

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
        fact = attribution.Touch(motion, channel or "other", utc(occurred_at), campaign, form_id, form_type,
                                 sequence, event_id, outcome)
        if channel is not None:
            self.real.add(event_id)
        if not self.facts or _fact_order(self.facts[-1]) <= _fact_order(fact):
            self.facts.append(fact)  # rows come in time order: the usual case
        else:
            bisect.insort(self.facts, fact, key=_fact_order)


def _fact_order(fact: attribution.Touch) -> tuple:
    return fact.occurred_at, fact.event_id


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC (SQLite gives naive datetimes back; clients may send other offsets)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(eq=False, slots=True)
class _Batch:
    """What this transaction read and changed, kept with its unit of work's staging
    (``shared.db.Staging.state``): the caches keep what was added visible meanwhile; ``held``
    and ``account_changes`` are written back at commit (``None``: nothing to write)."""

    contacts: dict[str, ContactRecord | None] = field(default_factory=dict)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    opportunities: dict[str, str | None] = field(default_factory=dict)
    entered: dict[tuple[str, str], datetime | None] = field(default_factory=dict)
    accounts: dict[str, AccountRecord | None] = field(default_factory=dict)
    held: dict[tuple[str, Any], Record] | None = None
    account_changes: dict[str, tuple[AccountRecord, list[Callable[[AccountRecord], None]]]] | None = None


def _batch(session: AsyncSession) -> _Batch:
    return staging_of(session).state(_Batch)


class Record:
    """A row of one table as a mutable object with the columns as attributes.

    ``new``: not stored yet (written with an INSERT at commit); otherwise the records read in
    the transaction that changed are written back with one UPDATE per table, of the columns
    that changed. A JSON value counts as changed when another object is assigned: assign
    new values, never change a loaded dict or list in place. ``entering``: a contact whose
    entry stage change is still to be recorded (by its first re-qualification).
    """

    __slots__ = ("new", "entering", "loaded")
    table: Table
    columns: tuple[str, ...]
    key: str  # the primary key's column

    def __init__(self, new: bool = False, **values: Any) -> None:
        self.new, self.entering, self.loaded = new, False, None
        for name in self.columns:
            setattr(self, name, values.get(name))

    @classmethod
    def from_row(cls, row: Any) -> Record:
        """From a row of ``select(table)`` (its columns in table order)."""
        record = cls.__new__(cls)
        record.new, record.entering, record.loaded = False, False, tuple(row)
        for name, value in zip(cls.columns, row):
            setattr(record, name, value)
        return record

    def changed(self, updatable: frozenset[str], by_identity: frozenset[str]) -> list[str]:
        """The ``updatable`` columns whose value differs from the one loaded (all of them for
        a record that was not read from the database)."""
        if self.loaded is None:
            return [name for name in self.columns if name in updatable]
        out = []
        for name, old in zip(self.columns, self.loaded):
            if name in updatable:
                value = getattr(self, name)
                if value is not old and (name in by_identity or value != old):
                    out.append(name)
        return out

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.columns}


def _record_class(table: Table) -> type[Record]:
    columns = tuple(c.key for c in table.columns)
    (key,) = (c.key for c in table.primary_key.columns)
    return type(f"{table.name.title()}Record", (Record,),
                {"__slots__": columns, "table": table, "columns": columns, "key": key})


ContactRecord = _record_class(Contact.__table__)
AccountRecord = _record_class(Account.__table__)

# Contacts are read FOR UPDATE (row locks on PostgreSQL; on SQLite the batch reads in a
# snapshot and ``_check_contacts`` finds them unchanged under the write lock, or the batch
# runs again), so the batch may write back the columns that changed in any of them at
# once (one statement; columns nobody changed, often indexed ones, are left alone).
_FIXED = {"id", "email", "email_as_typed", "created_at"}
_CONTACT_UPDATE = frozenset(c for c in ContactRecord.columns if c not in _FIXED)
_ACCOUNT_UPDATE = frozenset(("company", "industry", "employees", "country", "website", "firmographics",
                             "updated_at"))
_JSON = frozenset(("firmographics", "fit_reasons", "engagement_reasons"))
# stages whose latest entry time qualification reads (a nurtured contact re-qualifies on what came after)
_WATCHED_ENTRIES = ("nurture",)
_CONTACTS = Contact.__table__
_ACCOUNTS = Account.__table__


# A fact's re-qualification replaces a contact's reasons without reading them: they are
# loaded as their stored JSON text (not decoded), and a record whose reasons are not
# replaced writes nothing back for them (unchanged by identity).
_REPLACED_UNREAD = ("fit_reasons", "engagement_reasons")
_CONTACT_COLUMNS = tuple(type_coerce(c, Text).label(c.key) if c.key in _REPLACED_UNREAD else c for c in _CONTACTS.c)


def _contacts_for_update(condition):  # noqa: ANN001, ANN202
    return select(*_CONTACT_COLUMNS).where(condition).order_by(_CONTACTS.c.email).with_for_update()


def _accounts(condition):  # noqa: ANN001, ANN202
    return select(_ACCOUNTS).where(condition)


def _accounts_for_update(condition):  # noqa: ANN001, ANN202
    """In domain order, as contacts are in email order, so two batches lock in the same order."""
    return _accounts(condition).order_by(_ACCOUNTS.c.domain).with_for_update()


def _held(session: AsyncSession) -> dict[str, Record]:
    """Every record of this transaction by (table, key), written back at commit."""
    batch = _batch(session)
    if batch.held is None:
        batch.held = {}
        before_inserts(session, "qualification.records", _write_records)
        check_before_write(session, "qualification.contacts", _check_contacts)
    return batch.held


async def _check_contacts(writer: AsyncSession) -> None:
    """Before a batch read in a snapshot is written (SQLite, ``Database.snapshot_unit_of_work``):
    every contact it read is as it was read, and none it creates exists. Every fact about a
    contact (a touch, a stage move by sales or by a re-score) changes its row, so an unchanged
    row also means an unchanged timeline, stage history and opportunity."""
    batch = _batch(writer)
    found = [r for r in batch.contacts.values() if r is not None and r.loaded is not None]
    for chunk in in_chunks(found):
        rows = (await writer.execute(select(*_CONTACT_COLUMNS).where(_CONTACTS.c.id.in_([r.id for r in chunk])))).all()
        current = {row[0]: tuple(row) for row in rows}
        if any(current.get(r.id) != r.loaded for r in chunk):
            raise WriteConflict("contacts of the batch changed since its snapshot")
    new = [r.email for r in (batch.held or {}).values() if isinstance(r, ContactRecord) and r.new]
    for chunk in in_chunks(new):
        if (await writer.execute(select(_CONTACTS.c.id).where(_CONTACTS.c.email.in_(chunk)).limit(1))).first():
            raise WriteConflict("contacts the batch creates were created since its snapshot")


def _hold(session: AsyncSession, record: Record | None) -> Record | None:
    if record is not None:
        key = (record.table.name, getattr(record, record.key))
        return _held(session).setdefault(key, record)  # one record per row in a transaction
    return None


async def _write_records(session: AsyncSession) -> None:
    """Before the staged inserts (which refer to contacts): the accounts the batch changed
    (``_write_accounts``), new contacts in one INSERT, and the contacts read and changed in
    one executemany UPDATE."""
    batch = _batch(session)
    held, batch.held = batch.held or {}, None
    await _write_accounts(session)
    new_contacts = [r.values() for r in held.values() if isinstance(r, ContactRecord) and r.new]
    if new_contacts:
        try:
            await insert_many(session, _CONTACTS, new_contacts)
        except IntegrityError as exc:
            # The batch found these contacts absent, and another transaction has created one
            # since (on PostgreSQL ``FOR UPDATE`` cannot lock a row that does not exist yet):
            # the batch runs again, and then finds it. Only a duplicate key, never another
            # violation, which a new attempt would only repeat.
            if is_unique_violation(exc):
                raise WriteConflict("a contact the batch creates was created meanwhile") from exc
            raise
    await _update_changed(session, ContactRecord, _CONTACT_UPDATE,
                          [r for r in held.values() if isinstance(r, ContactRecord) and not r.new])


async def _update_changed(session: AsyncSession, cls: type[Record], updatable: frozenset[str],
                          records: list[Record], by_identity: frozenset[str] = _JSON) -> None:
    """One executemany UPDATE of the columns any of ``records`` changed, for those that changed."""
    dirty, columns = [], set()
    for record in records:
        changed = record.changed(updatable, by_identity)
        if changed:
            dirty.append(record)
            columns.update(changed)
    ordered = [c for c in cls.columns if c in columns]
    rows = [{"_key": getattr(r, cls.key), **{c: getattr(r, c) for c in ordered}} for r in dirty]
    if rows:
        await update_many(session, cls.table, cls.key, rows)


# Accounts are shared: contacts of one company sit on different partitions, so two workers
# may merge into one account at once, and its firmographics are one JSON value (a plain
# write-back of the later batch would drop what the earlier one merged). A batch therefore
# reads accounts without holding them and records each change it makes as a function
# (``change_account``); at commit it inserts the accounts it found missing (if still
# absent), reads every account it changed FOR UPDATE, in domain order, replays its changes
# onto the rows as they are then, and writes back what differs. A row is held only for
# the write-back and the commit, so workers whose batches share companies do not take
# turns for a whole batch, and no firmographic is lost to a concurrent merge (a merge
# keeps the latest observation per field whatever the order: replaying is exact).


def _account_changes(session: AsyncSession) -> dict[str, tuple[AccountRecord, list[Callable[[AccountRecord], None]]]]:
    batch = _batch(session)
    if batch.account_changes is None:
        batch.account_changes = {}
        before_inserts(session, "qualification.records", _write_records)  # the write-back at commit
    return batch.account_changes


def change_account(session: AsyncSession, account: AccountRecord, change: Callable[[AccountRecord], None]) -> None:
    """Apply ``change`` to the account now (the rest of the batch reads it) and again, at
    commit, to the row as it is then (see above). ``change`` must give the same result
    when replayed onto its own outcome."""
    change(account)
    _account_changes(session).setdefault(account.domain, (account, []))[1].append(change)


async def _write_accounts(session: AsyncSession) -> None:
    batch = _batch(session)
    changes, batch.account_changes = batch.account_changes or {}, None
    if not changes:
        return
    domains = sorted(changes)
    # inserted as they stand (the replay below then finds nothing to change); a concurrent
    # worker's row, if it got there first, is kept and our changes replayed onto it
    await insert_missing(session, _ACCOUNTS, [changes[d][0].values() for d in domains if changes[d][0].new],
                         key="domain")
    current: list[AccountRecord] = []
    for chunk in in_chunks(domains):
        rows = (await session.execute(_accounts_for_update(_ACCOUNTS.c.domain.in_(chunk)))).all()
        current += map(AccountRecord.from_row, rows)
    for record in current:
        for change in changes[record.domain][1]:
            change(record)
    # compared by value: a replay assigns equal firmographics anew to a row it just inserted
    await _update_changed(session, AccountRecord, _ACCOUNT_UPDATE, current, by_identity=frozenset())


async def contact_by_email(session: AsyncSession, email: str) -> ContactRecord | None:
    cache = _batch(session).contacts
    if email not in cache:
        row = (await session.execute(_contacts_for_update(_CONTACTS.c.email == email))).first()
        cache[email] = _hold(session, ContactRecord.from_row(row) if row is not None else None)
    return cache[email]


async def prefetch(session: AsyncSession, emails: set[str], domains: set[str]) -> None:
    """Load the contacts (with their timelines) and accounts a batch will touch, in a few queries."""
    contacts = _batch(session).contacts
    wanted = sorted(e for e in emails if e not in contacts)
    ids: list[str] = []
    for chunk in in_chunks(wanted):
        rows = (await session.execute(_contacts_for_update(_CONTACTS.c.email.in_(chunk)))).all()
        found = {r.email: r for r in map(ContactRecord.from_row, rows)}
        for email in chunk:
            contacts[email] = _hold(session, found.get(email))  # the record held if one already is
        ids += [c.id for c in found.values()]
    timelines = _batch(session).timelines
    ids = [i for i in ids if i not in timelines]
    for chunk in in_chunks(ids):
        for contact_id in chunk:
            timelines[contact_id] = Timeline()
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(_FACT_COLUMNS[1].in_(chunk)).order_by(_FACT_COLUMNS[-1], _FACT_COLUMNS[0])
        )
        for touch in rows.all():
            timelines[touch[1]].add(touch)
        opportunities = _batch(session).opportunities
        rows = await session.execute(
            select(Opportunity.contact_id, Opportunity.id).where(Opportunity.contact_id.in_(chunk))
            .order_by(Opportunity.qualified_at.desc())
        )
        for contact_id in chunk:
            opportunities.setdefault(contact_id, None)
        for contact_id, opportunity_id in rows:
            opportunities[contact_id] = opportunity_id  # ends on the earliest
    entered = _batch(session).entered
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
    accounts = _batch(session).accounts
    domains = [d for d in domains if d not in accounts]
    for chunk in in_chunks(domains):
        rows = (await session.execute(_accounts(_ACCOUNTS.c.domain.in_(chunk)))).all()
        found = {r.domain: r for r in map(AccountRecord.from_row, rows)}
        for domain in chunk:
            accounts[domain] = found.get(domain)


def add_contact(session: AsyncSession, contact: ContactRecord) -> None:
    contact.new = True
    _hold(session, contact)
    _batch(session).contacts[contact.email] = contact
    _batch(session).timelines[contact.id] = Timeline()
    _batch(session).opportunities[contact.id] = None  # a new contact has none yet


async def contact_by_id(session: AsyncSession, contact_id: str, *, lock: bool = False) -> ContactRecord | None:
    """The contact; ``lock`` reads it FOR UPDATE (a re-score then waits for a worker's batch
    holding it, and a worker for the re-score: neither overwrites the other) and writes it
    back when the unit of work commits."""
    query = select(_CONTACTS).where(_CONTACTS.c.id == contact_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        return None
    contact = ContactRecord.from_row(row)
    return _hold(session, contact) if lock else contact


async def account_by_domain(session: AsyncSession, domain: str) -> AccountRecord | None:
    """The account as this transaction knows it (read once, not held: see above), with the
    batch's changes; ``None`` if it was not stored when read and the batch made none."""
    accounts = _batch(session).accounts
    if domain not in accounts:
        row = (await session.execute(_accounts(_ACCOUNTS.c.domain == domain))).first()
        accounts[domain] = AccountRecord.from_row(row) if row is not None else None
    return accounts[domain]


async def ensure_account(session: AsyncSession, domain: str, at: datetime) -> AccountRecord:
    """The account of ``domain``; one not stored is created in memory, inserted at commit
    (``_write_accounts``: insert-if-absent, as another worker may create it meanwhile)."""
    account = await account_by_domain(session, domain)
    if account is None:
        account = AccountRecord(new=True, domain=domain, firmographics={}, created_at=at, updated_at=at)
        _batch(session).accounts[domain] = account
        _account_changes(session)[domain] = (account, [])  # inserted even if nothing is merged
    return account


async def timeline(session: AsyncSession, contact_id: str) -> Timeline:
    """Every fact about a contact (stored, and added in this transaction), without payloads."""
    cache = _batch(session).timelines
    if contact_id not in cache:
        rows = await session.execute(
            select(*_FACT_COLUMNS).where(_FACT_COLUMNS[1] == contact_id).order_by(_FACT_COLUMNS[-1], _FACT_COLUMNS[0])
        )
        found = cache[contact_id] = Timeline()
        for row in rows.all():
            found.add(row)
    return cache[contact_id]


async def add_touch(session: AsyncSession, row: dict[str, Any]) -> None:
    """Queue the touch's insert and add it to the contact's timeline."""
    (await timeline(session, row["contact_id"])).add([row.get(key) for key in _FACT_KEYS])
    stage_insert(session, Touch.__table__, row)


def add_score(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, Score.__table__, row)


def add_stage_change(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, StageChange.__table__, row)
    if row["to_stage"] in _WATCHED_ENTRIES:
        _batch(session).entered[(row["contact_id"], row["to_stage"])] = row["changed_at"]


async def opportunity_of(session: AsyncSession, contact_id: str) -> str | None:
    """The id of the contact's qualified opportunity (one per contact: qualification creates it once)."""
    cache = _batch(session).opportunities
    if contact_id not in cache:
        cache[contact_id] = (
            await session.execute(
                select(Opportunity.id).where(Opportunity.contact_id == contact_id)
                .order_by(Opportunity.qualified_at).limit(1)
            )
        ).scalar_one_or_none()
    return cache[contact_id]


# every column, so the opportunities of a batch go as one multi-row INSERT (same keys in each row)
_OPPORTUNITY_FIELDS = {c.key: None for c in Opportunity.__table__.columns} | {"currency": "USD"}


def add_opportunity(session: AsyncSession, row: dict[str, Any]) -> None:
    stage_insert(session, Opportunity.__table__, _OPPORTUNITY_FIELDS | row)
    _batch(session).opportunities[row["contact_id"]] = row["id"]


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
    cache = _batch(session).entered
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
