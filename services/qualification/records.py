"""The qualification unit of work's records: contacts and accounts as plain mutable rows,
held once per transaction and written back when it commits.

A batch of events is applied in one transaction. Contacts and accounts are read with Core
(no ORM identity map, attribute instrumentation or flush) into ``Record`` objects; the
records a transaction reads or creates are held in one identity map (``hold``: one
record per row), and at commit (``before_inserts``) the records that changed are written
back in one executemany UPDATE per table and new contacts in one INSERT, before the
append-only facts that refer to them (``stage_insert``).

The invariant: **a fact about a contact changes the contact's row.** Any transaction
that stores a touch, a stage change, an opportunity or a consent ledger entry of a contact
also changes at least one column of that contact's ``contacts`` row (a new contact is
inserted). Qualification reads a contact's history (timeline, the stage entries it watches,
its opportunity, its consent ledger) through that row, so an unchanged row proves an
unchanged history; the SQLite snapshot check (``_check_contacts``) compares only contact
rows, and relies on it. It holds for every writer of the pipeline store: qualification's
handlers (a touch moves ``last_activity_at`` and ``updated_at``; a consent entry comes only
with a touch), its re-score (a stage move changes ``stage``) and the pipeline's manual moves
(``stage``, ``updated_at``). For qualification's own
transactions it is checked at every commit (``_write_records``): a fact of a contact
that is neither new nor written back raises ``UnchangedContact``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sqlalchemy import Table, Text, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import Account, ConsentEntry, Contact, Opportunity, StageChange, Touch
from services.qualification import rollups
from shared.db import (
    WriteConflict, before_inserts, check_before_write, in_chunks, insert_many, insert_missing, is_unique_violation,
    json_text, stage_insert, staging_of, update_many,
)

_WRITE_BACK = "qualification.records"
# a first or last touch as a contact's or an opportunity's columns, each with the attribute
# of the touch it holds
TOUCH_COLUMNS = {which: tuple((f"{which}_touch_{attribute}", attribute) for attribute in (
    "motion", "channel", "campaign", "form_id", "sequence", "event_id")) + ((f"{which}_touch_at", "occurred_at"),)
    for which in ("first", "last")}
_SNAPSHOT_CHECK = "qualification.contacts"


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
CONTACT_UPDATE = frozenset(c for c in ContactRecord.columns if c not in _FIXED)
_ACCOUNT_UPDATE = frozenset(("company", "industry", "employees", "country", "website", "firmographics",
                             "updated_at"))
_JSON = frozenset(("firmographics", "fit_reasons", "engagement_reasons"))
_CONTACTS = Contact.__table__
_ACCOUNTS = Account.__table__
# the facts about a contact, each row naming it in ``contact_id`` (the invariant above)
FACT_TABLES = (Touch.__table__, StageChange.__table__, Opportunity.__table__, ConsentEntry.__table__)

# A fact's re-qualification replaces a contact's reasons without reading them: they are
# loaded as their stored JSON text (not decoded), and a record whose reasons are not
# replaced writes nothing back for them (unchanged by identity).
_REPLACED_UNREAD = ("fit_reasons", "engagement_reasons")
CONTACT_COLUMNS = tuple(type_coerce(c, Text).label(c.key) if c.key in _REPLACED_UNREAD else c for c in _CONTACTS.c)


def touch_values(which: str, touch: Any) -> dict[str, Any]:
    """``touch`` (an ``attribution.Touch`` or ``None``) as the ``which`` ("first", "last")
    touch columns of a contact or an opportunity."""
    return {column: None if touch is None else getattr(touch, attribute)
            for column, attribute in TOUCH_COLUMNS[which]}


def set_touch(row: Any, which: str, touch: Any) -> None:
    """Set ``row``'s (a record's or a mapped row's) ``which`` touch columns to ``touch``."""
    for column, value in touch_values(which, touch).items():
        setattr(row, column, value)


def replace_json(record: Record, name: str, value: Any) -> None:
    """Give the JSON column ``name`` of ``record`` the value ``value``, unless it holds that
    already: then it keeps its object, and a record read in this transaction writes nothing
    back for it (unchanged by identity). A re-qualification recomputes a contact's reasons
    after every fact, and they are most often the same (fit reasons, nearly always); a
    reasons column read as its stored text (``_REPLACED_UNREAD``) is compared as the text
    ``value`` is stored as."""
    current = getattr(record, name)
    if current is value:
        return
    same = current == json_text(value) if isinstance(current, str) else current == value
    if not same:
        setattr(record, name, value)


def contacts_for_update(condition):  # noqa: ANN001, ANN201
    """Contacts as ``ContactRecord.from_row`` reads them, locked, in email order (two batches
    lock in the same order)."""
    return select(*CONTACT_COLUMNS).where(condition).order_by(_CONTACTS.c.email).with_for_update()


def accounts(condition):  # noqa: ANN001, ANN201
    return select(_ACCOUNTS).where(condition)


def _accounts_for_update(condition):  # noqa: ANN001, ANN202
    """In domain order, as contacts are in email order, so two batches lock in the same order."""
    return accounts(condition).order_by(_ACCOUNTS.c.domain).with_for_update()


@dataclass(eq=False, slots=True)
class _Held:
    """What this module keeps for a unit of work (``shared.db.Staging.state``): the identity
    map and the account changes, written back at commit (``None``: nothing to write), and
    the table of each fact staged, by the id of its contact (checked at commit)."""

    records: dict[tuple[str, Any], Record] | None = None
    account_changes: dict[str, tuple[AccountRecord, list[Callable[[AccountRecord], None]]]] | None = None
    facts: dict[str, str] = field(default_factory=dict)


def _state(session: AsyncSession) -> _Held:
    return staging_of(session).state(_Held)


class UnchangedContact(AssertionError):
    """A fact about a contact was stored without a change to the contact's row (the
    invariant above): a fault of the code that stored it, never of the data."""


# ---------------------------------------------------------------------- the identity map


def _held(session: AsyncSession) -> dict[tuple[str, Any], Record]:
    """Every record of this transaction by (table, key), written back at commit."""
    state = _state(session)
    if state.records is None:
        state.records = {}
        before_inserts(session, _WRITE_BACK, _write_records)
        check_before_write(session, _SNAPSHOT_CHECK, _check_contacts)
    return state.records


def hold(session: AsyncSession, record: Record | None) -> Record | None:
    """The transaction's one record of ``record``'s row (``record`` itself if none is held
    yet), written back at commit; ``None`` stays ``None``."""
    if record is not None:
        key = (record.table.name, getattr(record, record.key))
        return _held(session).setdefault(key, record)
    return None


async def _check_contacts(writer: AsyncSession) -> None:
    """Before a batch read in a snapshot is written (SQLite, ``Database.snapshot_unit_of_work``):
    every contact it read is as it was read, and none it creates exists. By the invariant,
    an unchanged row also means an unchanged timeline, stage history and opportunity."""
    held = [r for r in (_state(writer).records or {}).values() if isinstance(r, ContactRecord)]
    found = [r for r in held if r.loaded is not None]
    for chunk in in_chunks(found):
        rows = (await writer.execute(select(*CONTACT_COLUMNS).where(_CONTACTS.c.id.in_([r.id for r in chunk])))).all()
        current = {row[0]: tuple(row) for row in rows}
        if any(current.get(r.id) != r.loaded for r in chunk):
            raise WriteConflict("contacts of the batch changed since its snapshot")
    new = [r.email for r in held if r.new]
    for chunk in in_chunks(new):
        if (await writer.execute(select(_CONTACTS.c.id).where(_CONTACTS.c.email.in_(chunk)).limit(1))).first():
            raise WriteConflict("contacts the batch creates were created since its snapshot")


def stage_fact(session: AsyncSession, table: Table, row: dict[str, Any]) -> None:
    """Queue a fact's row (``stage_insert``; ``table`` one of ``FACT_TABLES``); the commit
    then checks that its contact's row changed (``_write_records``), even in a unit of
    work that holds no record. Facts are stored through here, never ``stage_insert`` alone."""
    _held(session)
    _state(session).facts.setdefault(row["contact_id"], table.name)
    stage_insert(session, table, row)


# ---------------------------------------------------------------------- write-back at commit


async def _write_records(session: AsyncSession) -> None:
    """Before the staged inserts (which refer to contacts): the accounts the batch changed
    (``_write_accounts``), new contacts in one INSERT, and the contacts read and changed in
    one executemany UPDATE; then the invariant is checked against the staged facts."""
    state = _state(session)
    held, state.records = state.records or {}, None
    await _write_accounts(session)
    contacts = [r for r in held.values() if isinstance(r, ContactRecord)]
    new_contacts = [r.values() for r in contacts if r.new]
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
    written = await _update_changed(session, ContactRecord, CONTACT_UPDATE, [r for r in contacts if not r.new])
    check_facts_change_contacts(session, {r.id for r in contacts if r.new} | written)
    await rollups.write(session, contacts)


def check_facts_change_contacts(session: AsyncSession, changed: set[str]) -> None:
    """Raise ``UnchangedContact`` if a fact staged in this unit of work (``stage_fact``) is
    about a contact whose row is not in ``changed`` (the ids of the contacts inserted or
    updated)."""
    state = _state(session)
    facts, state.facts = state.facts, {}
    for contact_id, table in facts.items():
        if contact_id not in changed:
            raise UnchangedContact(f"a {table} row of contact {contact_id} was stored without a change to "
                                   "the contact's row")


async def _update_changed(session: AsyncSession, cls: type[Record], updatable: frozenset[str],
                          records: list[Record], by_identity: frozenset[str] = _JSON) -> set[Any]:
    """One executemany UPDATE of the columns any of ``records`` changed, for those that
    changed; the keys of the records written."""
    dirty, columns = [], set()
    for record in records:
        changed = record.changed(updatable, by_identity)
        if changed:
            dirty.append(record)
            columns.update(changed)
    ordered = [c for c in cls.columns if c in columns]
    rows = [{"_key": getattr(r, cls.key), **{c: getattr(r, c) for c in ordered}} for r in dirty]
    # one statement writes the columns any record changed, in every record: a reasons column
    # another record changed is written here too, from its stored text (not as a JSON string)
    for name in _REPLACED_UNREAD if cls is ContactRecord else ():
        if name in columns:
            for row in rows:
                if isinstance(row[name], str):
                    row[name] = orjson.loads(row[name])
    if rows:
        await update_many(session, cls.table, cls.key, rows)
    return {row["_key"] for row in rows}


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
    state = _state(session)
    if state.account_changes is None:
        state.account_changes = {}
        before_inserts(session, _WRITE_BACK, _write_records)  # the write-back at commit
    return state.account_changes


def add_account(session: AsyncSession, account: AccountRecord) -> None:
    """A new account, inserted at commit (if still absent) even if nothing is merged into it."""
    _account_changes(session)[account.domain] = (account, [])


def change_account(session: AsyncSession, account: AccountRecord, change: Callable[[AccountRecord], None]) -> None:
    """Apply ``change`` to the account now (the rest of the batch reads it) and again, at
    commit, to the row as it is then (see above). ``change`` must give the same result
    when replayed onto its own outcome."""
    change(account)
    _account_changes(session).setdefault(account.domain, (account, []))[1].append(change)


async def _write_accounts(session: AsyncSession) -> None:
    state = _state(session)
    changes, state.account_changes = state.account_changes or {}, None
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
