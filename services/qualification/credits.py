"""Attribution credits and the sources rollups, kept in the transaction of the facts.

Every contact a fact (or a re-score) re-qualifies is noted here; when the unit of work
commits (``before_inserts``, after the contacts are written back) this module

1. replaces the credits of each opportunity whose counting touches changed in the
   transaction (qualification, or a late touch that occurred before it): one DELETE of
   the old rows and one multi-row INSERT of the new;
2. adds to the rollups what each noted contact now contributes less what it contributed
   when the transaction read it (``pipeline_store.source_rollups``): one batched upsert per
   rollup table for the whole batch, never a read-modify-write per event.

A contact whose rollup columns did not change and whose credits were not recomputed adds
nothing (most touches: the same channel and campaign as the last). The stored credits and
opportunities of a contact qualified before the transaction are read only when its
contribution must be recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import source_rollups
from pipeline_store.models import AttributionCredit
from services.qualification.domain.attribution_models import Credit, order_key
from services.qualification.records import ContactRecord
from shared.db import before_inserts, in_chunks, insert_many, staging_of
from shared.times import same_values

_HOOK = "qualification.credits"
_CREDITS = AttributionCredit.__table__
_NO_CREDITS = dict.fromkeys(source_rollups.CREDIT_COLUMNS.values())
_COLUMNS = source_rollups.CONTACT_COLUMNS
# the rollup columns of a record as loaded (``ContactRecord.loaded``) and as it is now
_LOADED = itemgetter(*(ContactRecord.columns.index(name) for name in _COLUMNS))
_CURRENT = attrgetter(*_COLUMNS)
_SAME = same_values(_COLUMNS)  # equal, or equal once their times are read as UTC
_SQL_AT = _COLUMNS.index("sql_at")

Credits = Mapping[str, tuple[Credit, ...]]


@dataclass(eq=False, slots=True)
class _Noted:
    """What this unit of work changed that credits and rollups follow (``Staging.state``)."""

    contacts: dict[str, ContactRecord] = field(default_factory=dict)
    # contact id → (opportunity id, each model's credits): recomputed in this transaction
    credits: dict[str, tuple[str, Credits]] = field(default_factory=dict)
    # contact id → the opportunities created in this transaction, as (stage, amount)
    opened: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    # contact id → its nurtured opportunity as stored before this transaction opened it again
    reopened: dict[str, tuple] = field(default_factory=dict)
    hooked: bool = False


def _noted(session: AsyncSession) -> _Noted:
    noted = staging_of(session).state(_Noted)
    if not noted.hooked:
        noted.hooked = True
        before_inserts(session, _HOOK, _write)
    return noted


def note_contact(session: AsyncSession, contact: ContactRecord) -> None:
    """A contact re-qualified in this transaction: its rollups follow its changes at commit."""
    _noted(session).contacts.setdefault(contact.id, contact)


def note_opportunity(session: AsyncSession, contact: ContactRecord, stage: str, amount: Any = None) -> None:
    """An opportunity of ``contact`` created in this transaction."""
    noted = _noted(session)
    noted.contacts.setdefault(contact.id, contact)
    noted.opened.setdefault(contact.id, []).append((stage, amount))


def note_reopened(session: AsyncSession, contact: ContactRecord, was: tuple) -> None:
    """``contact``'s nurtured opportunity, stored as ``was`` (stage, amount, estimated), is open
    again in this transaction (the contact qualified again): the rollups count it as it was
    before and as it is now."""
    note_contact(session, contact)
    _noted(session).reopened.setdefault(contact.id, was)


def note_credits(session: AsyncSession, contact: ContactRecord, opportunity_id: str, credits: Credits) -> None:
    """The opportunity's credits as now computed; they replace the stored ones at commit."""
    noted = _noted(session)
    noted.contacts.setdefault(contact.id, contact)
    noted.credits[contact.id] = (opportunity_id, credits)


def credit_rows(contact_id: str, opportunity_id: str, credits: Credits) -> list[dict[str, Any]]:
    """The ``attribution_credits`` rows of one opportunity: one per touch some model credits
    (every model's chain holds the same counting touches), each model's credit in its
    column (``None`` where the model does not credit the touch), in the counting order."""
    rows: dict[Any, dict[str, Any]] = {}
    touches = []
    for model, chain in credits.items():
        column = source_rollups.CREDIT_COLUMNS[model]
        for c in chain:
            row = rows.get(c.touch.event_id)
            if row is None:
                t = c.touch
                touches.append(t)
                row = rows[t.event_id] = {
                    "opportunity_id": opportunity_id, "event_id": t.event_id, "contact_id": contact_id,
                    "position": 0, "motion": t.motion, "channel": t.channel, "campaign": t.campaign,
                    "form_id": t.form_id, "sequence": t.sequence, "occurred_at": t.occurred_at, **_NO_CREDITS}
            row[column] = c.credit
    touches.sort(key=order_key)  # already in order when the first chain holds every touch
    out = []
    for position, t in enumerate(touches):
        row = rows[t.event_id]
        row["position"] = position
        out.append(row)
    return out


def _rollup_credits(credits: Credits) -> dict[str, list[tuple[source_rollups.TouchKey, float]]]:
    return {model: [((source_rollups.key_text(c.touch.channel), source_rollups.key_text(c.touch.campaign),
                      source_rollups.key_text(c.touch.form_id), source_rollups.key_text(c.touch.sequence)), c.credit)
                    for c in chain] for model, chain in credits.items() if chain}


async def _write(session: AsyncSession) -> None:
    noted = staging_of(session).state(_Noted)
    contacts, noted.contacts = noted.contacts, {}
    recomputed, noted.credits = noted.credits, {}
    opened, noted.opened = noted.opened, {}
    reopened, noted.reopened = noted.reopened, {}
    noted.hooked = False
    changed: list[tuple[ContactRecord, tuple | None, tuple]] = []  # the rollup columns' values before and after
    for contact in contacts.values():
        loaded, now = contact.loaded, _CURRENT(contact)
        was = None if loaded is None else _LOADED(loaded)
        if (was is not None and contact.id not in recomputed and contact.id not in opened
                and contact.id not in reopened and _SAME(was, now)):
            continue
        changed.append((contact, was, now))
    # what the transaction read: the stored opportunities and credits, before they are replaced
    qualified_before = [c.id for c, before, _ in changed if before is not None and before[_SQL_AT] is not None]
    stored_opportunities = await source_rollups.opportunities_of(session, qualified_before) if qualified_before else {}
    stored_credits = await source_rollups.credits_of(session, qualified_before) if qualified_before else {}
    if recomputed:
        opportunities = sorted({opportunity_id for opportunity_id, _ in recomputed.values()})
        for chunk in in_chunks(opportunities):
            await session.execute(delete(_CREDITS).where(_CREDITS.c.opportunity_id.in_(chunk)))
        rows = [row for contact_id, (opportunity_id, credits) in recomputed.items()
                for row in credit_rows(contact_id, opportunity_id, credits)]
        await insert_many(session, _CREDITS, rows)
    if not changed:
        return
    difference = source_rollups.Rollups()
    for contact, before, after in changed:
        stored = stored_opportunities.get(contact.id, [])
        old_credits = stored_credits.get(contact.id)
        # a reopened opportunity is read as now stored; before this transaction it was nurtured
        was_stored = [reopened[contact.id]] if contact.id in reopened else stored
        was = None if before is None else source_rollups.facts_of_values(before, was_stored, old_credits)
        new_credits = _rollup_credits(recomputed[contact.id][1]) if contact.id in recomputed else old_credits
        now = source_rollups.facts_of_values(after, [*stored, *opened.get(contact.id, ())], new_credits)
        source_rollups.add_difference(difference, was, now)
    await source_rollups.write(session, difference)


def late_touch_counts(qualified_at: datetime | None, occurred_at: datetime, lookback_days: float) -> bool:
    """Whether a touch that occurred at ``occurred_at`` falls in the counting window of an
    opportunity qualified at ``qualified_at`` (``None``: not qualified)."""
    if qualified_at is None:
        return False
    return (qualified_at - occurred_at).total_seconds() <= lookback_days * 86_400 and occurred_at <= qualified_at
