"""Qualification keeps the motion balance rollups (``pipeline_store/rollups.py``) in the
transaction of the facts it applies: the facts it stores count as effort (``count_fact``),
and when its records are written back each contact that changed moves its contribution
(``write``, called by ``records``' write-back at commit, after the contacts are written)."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import rollups
from pipeline_store.models import Contact, Opportunity
from shared.db import in_chunks, staging_of
from shared.times import same_values

# a contact record's columns are the table's, in order (records.py)
_COLUMNS = [c.key for c in Contact.__table__.columns]
_POSITIONS = tuple(_COLUMNS.index(name) for name in rollups.CONTACT_FIELDS)
_LOADED = itemgetter(*_POSITIONS)
_CURRENT = attrgetter(*rollups.CONTACT_FIELDS)
_SAME = same_values(rollups.CONTACT_FIELDS)


def _unmoved(record: Any) -> bool:
    """Whether the fields a contribution reads are as loaded (times compared as instants: a
    time loaded naive from SQLite is written back aware)."""
    return record.loaded is not None and _SAME(_LOADED(record.loaded), _CURRENT(record))


class _AsLoaded:
    """A contact as its row was read (``Record.loaded``), with the fields a contribution reads."""

    __slots__ = rollups.CONTACT_FIELDS

    def __init__(self, loaded: Sequence[Any]) -> None:
        for name, position in zip(rollups.CONTACT_FIELDS, _POSITIONS):
            setattr(self, name, loaded[position])


def count_fact(session: AsyncSession, row: dict[str, Any]) -> None:
    """A fact staged for insertion (a touch row) counts as effort when the batch commits."""
    staging_of(session).state(rollups.Deltas).fact(row["event_type"], row["motion"], row["occurred_at"])


async def write(session: AsyncSession, contacts: Sequence[Any]) -> None:
    """Move the contributions of ``contacts`` (inserted or written back in this transaction)
    and add the facts counted, in one upsert per rollup table.

    Qualification never changes an opportunity's stage or amount, so amounts move only with a
    contact whose cohort row changes (a late touch that moves its first touch); those few
    opportunities are read here, under the write lock, as they are stored."""
    staging = staging_of(session)
    deltas = staging.state(rollups.Deltas)
    staging.states[rollups.Deltas] = rollups.Deltas()  # written once
    moved: list[tuple[Any, Any]] = []
    for record in contacts:
        if _unmoved(record):
            continue  # its contribution did not move
        after = rollups.contribution(record)
        before = rollups.contribution(_AsLoaded(record.loaded)) if record.loaded is not None else None
        # an opportunity stored before this batch may carry an amount (one it creates has none)
        if before is not None and before.key != after.key and before.counters[2]:
            moved.append((record, _AsLoaded(record.loaded)))
            continue
        deltas.change(before, after)
    if moved:
        opportunities: dict[str, tuple[str, Any]] = {}
        for chunk in in_chunks([record.id for record, _ in moved]):
            rows = await session.execute(select(Opportunity.contact_id, Opportunity.stage, Opportunity.amount)
                                         .where(Opportunity.contact_id.in_(chunk)))
            opportunities |= {contact_id: (stage, amount) for contact_id, stage, amount in rows}
        for record, loaded in moved:
            stage, amount = opportunities.get(record.id, (None, None))
            deltas.change(rollups.contribution(loaded, stage, amount), rollups.contribution(record, stage, amount))
    await rollups.write(session, deltas)
