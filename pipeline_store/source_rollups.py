"""The sources question kept as rollups: what one contact adds to them, under every model.

Both writers of the pipeline store keep ``source_rollups`` and ``qualify_days_rollups`` in
the transaction of the facts they apply: qualification (facts, qualification, credits) and
the pipeline service (sales' moves and amounts). Each computes what a contact contributes
before and after its change (:func:`contribution`, pure), and adds the difference
(:func:`add_difference`) with one batched upsert per table (:func:`write`), never a
read-modify-write. Analytics then sum rollup rows over a day range instead of reading
contacts; :func:`rebuild` recomputes them from the raw rows (re-scoring, seeding).

What a contact contributes, per model (``MODELS``):

- The cohort day is the UTC day of its first touch (``created_at`` where none was kept),
  as ``GET /v1/analytics/sources`` has always counted; the key is its motion and a touch's
  channel, campaign, form and sequence.
- Its weight is spread over the touches its opportunity's credits name under the model
  (``attribution_credits``, written by qualification; they sum to 1). A contact without
  credits under the model (not qualified yet, or with no counting touch) puts all its
  weight on its first touch, or its last touch before qualification under ``last``.
- Counts (contacts, leads, MQL, SQL, opportunities, won: the milestones it reached) and
  its opportunities (qualified count, pipeline amount of open and won ones and the part of
  it estimated from ``scoring.yaml``'s expected amounts, won amount) are multiplied by that
  weight: credited sums, fractional where a model splits.
- Days from first touch to ``sql``: a histogram (``BUCKET_EDGES``) of credited weight and
  credited days per key, from which the weighted median is read: each bucket stands for
  its mean, so the median is exact when each middle value is alone in its bucket, and
  otherwise the mean of the middle bucket's (or the two middle buckets') means, within
  their bounds.
- Every difference is stored four times (``grain``): in its hour's row (``day`` and
  ``hour``), its day's, its month's and its year's (``day`` the period's first day, ``hour``
  0), so a range reads whole years from year rows, and only its ragged ends from month, day
  and hour rows; the raw rows only for the at most two partial hours of date-time bounds.

Nothing here is personal data: keys are channels, campaigns, forms and sequences.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from operator import itemgetter
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import AttributionCredit, Contact, Opportunity, QualifyDaysRollup, SourceRollup
from shared.db import add_many, in_chunks
from shared.times import as_utc

MODELS = ("first", "last", "linear", "position", "time_decay", "w_shaped")
# each model's column of ``attribution_credits`` (one row per touch; NULL: not credited)
CREDIT_COLUMNS = {model: f"credit_{model}" for model in MODELS}
DEFAULT_MODEL = "first"
METRICS = ("contacts", "leads", "mql", "sql", "opportunities", "won", "qualified_opportunities",
           "pipeline_amount", "pipeline_amounts", "won_amount", "won_amounts", "estimated_pipeline_amount",
           "estimated_pipeline_amounts")
KEY = ("model", "grain", "day", "hour", "motion", "channel", "campaign", "form_id", "sequence")
# the grains: each difference is added to its hour's row, its day's, its month's and its year's
HOUR, DAY, MONTH, YEAR = "h", "d", "m", "y"
TOUCH_KEY = ("channel", "campaign", "form_id", "sequence")
OPEN_OR_WON = ("sql", "opportunity", "customer")
_N = len(METRICS)

TouchKey = tuple[str, str, str, str]  # channel, campaign, form_id, sequence ("" for none)
RollupKey = tuple[str, date, int, str, str, str, str, str]  # KEY's values but the grain

# the contact's columns a contribution reads (in the order ``facts_of_values`` unpacks): a change
# elsewhere changes no rollup
CONTACT_COLUMNS = (
    "first_touch_at", "created_at", "motion", "lead_at", "mql_at", "sql_at", "opportunity_at", "customer_at",
    "first_touch_channel", "first_touch_campaign", "first_touch_form_id", "first_touch_sequence",
    "last_touch_channel", "last_touch_campaign", "last_touch_form_id", "last_touch_sequence",
)


def key_text(value: str | None) -> str:
    """A key column's stored value: ``""`` for none (NULLs never match in a unique key)."""
    return value if value is not None else ""


def key_value(text: str) -> str | None:
    """A stored key column as the answer shows it: ``None`` for ``""``."""
    return text if text != "" else None


# bucket edges in days: an hour, 4 and 12 hours, then days; the median of a histogram reads
# each bucket as the mean of its values, so few buckets keep the rows few and the answer near
BUCKET_EDGES = (1 / 24, 4 / 24, 12 / 24, 1, 2, 3, 5, 7, 10, 14, 21, 30, 45, 60, 90, 180)


def bucket_of(days: float) -> int:
    """The histogram bucket of a duration (0 … ``len(BUCKET_EDGES)``)."""
    return bisect.bisect_right(BUCKET_EDGES, days)


@dataclass(frozen=True, slots=True)
class OpportunityFacts:
    stage: str
    amount: float | None
    estimated: bool = False  # the amount is scoring.yaml's expected one (``amount_estimated``)


@dataclass(frozen=True, slots=True)
class ContactFacts:
    """What the rollups read of one contact (and its opportunities and credits)."""

    day: date
    motion: str
    reached: tuple[int, int, int, int, int]  # leads, mql, sql, opportunities, won
    first: TouchKey
    last: TouchKey
    days_to_qualify: float | None
    opportunities: tuple[OpportunityFacts, ...] = ()
    credits: Mapping[str, Sequence[tuple[TouchKey, float]]] = field(default_factory=dict)
    hour: int = 0  # the UTC hour of ``day`` of the first touch (0-23)


_CONTACT_VALUES = itemgetter(*CONTACT_COLUMNS)


def facts_of(contact: Mapping[str, Any], opportunities: Iterable[tuple[str, Any]] = (),
             credits: Mapping[str, Sequence[tuple[TouchKey, float]]] | None = None) -> ContactFacts:
    """A contact's :class:`ContactFacts` from its columns (``CONTACT_COLUMNS`` at least), its
    opportunities as (stage, amount[, estimated]) and its credits per model (touch key, credit)."""
    return facts_of_values(_CONTACT_VALUES(contact), opportunities, credits)


def facts_of_values(values: Sequence[Any], opportunities: Iterable[tuple[str, Any]] = (),
                    credits: Mapping[str, Sequence[tuple[TouchKey, float]]] | None = None) -> ContactFacts:
    """As :func:`facts_of`, from the values of ``CONTACT_COLUMNS`` in their order."""
    first_touch_at, created_at, motion, lead_at, mql_at, sql_at, opportunity_at, customer_at, *touches = values
    first_at = as_utc(first_touch_at) or as_utc(created_at)
    # a milestone counts as reached when it or a later one was (a contact may skip stages)
    won = int(customer_at is not None)
    opportunity = won or int(opportunity_at is not None)
    sql = opportunity or int(sql_at is not None)
    mql = sql or int(mql_at is not None)
    lead = mql or int(lead_at is not None)
    days = None if sql_at is None else (as_utc(sql_at) - first_at).total_seconds() / 86_400
    return ContactFacts(
        day=first_at.date(), hour=first_at.hour, motion=motion, reached=(lead, mql, sql, opportunity, won),
        first=tuple(map(key_text, touches[:4])),  # type: ignore[arg-type]
        last=tuple(map(key_text, touches[4:])),  # type: ignore[arg-type]
        days_to_qualify=days,
        opportunities=tuple(OpportunityFacts(o[0], None if o[1] is None else float(o[1]), bool(o[2:] and o[2]))
                            for o in opportunities),
        credits=credits or {},
    )


def _values(facts: ContactFacts) -> list[float]:
    values = [1.0, *map(float, facts.reached)] + [0.0] * 7
    for opp in facts.opportunities:
        values[6] += 1.0
        if opp.amount is not None and opp.stage in OPEN_OR_WON:
            values[7] += opp.amount
            values[8] += 1.0
            if opp.estimated:
                values[11] += opp.amount
                values[12] += 1.0
        if opp.amount is not None and opp.stage == "customer":
            values[9] += opp.amount
            values[10] += 1.0
    return values


Sums = dict[RollupKey, list[float]]
Days = dict[tuple[RollupKey, int], list[float]]


@dataclass(slots=True)
class Rollups:
    """Rows to add: metric sums per key, and the days histogram per key and bucket."""

    sums: Sums = field(default_factory=dict)
    days: Days = field(default_factory=dict)

    def add(self, facts: ContactFacts, sign: float = 1.0, models: Sequence[str] = MODELS) -> None:
        """Add (``sign`` 1) or take away (-1) what ``facts`` contribute under every model
        (under ``models`` only, when given: an answer about one model needs only its own)."""
        values = _non_zero(_values(facts))
        for model in models:
            _add_model(self, facts, model, _credited(facts, model), values, sign)

    def merge(self, other: Rollups) -> None:
        for key, values in other.sums.items():
            row = self.sums.setdefault(key, [0.0] * _N)
            for i, value in enumerate(values):
                row[i] += value
        for key, values in other.days.items():
            cell = self.days.setdefault(key, [0.0, 0.0])
            cell[0] += values[0]
            cell[1] += values[1]

    def __bool__(self) -> bool:
        return bool(self.sums or self.days)


def contribution(facts: ContactFacts) -> Rollups:
    """What one contact contributes to the rollups under every model."""
    out = Rollups()
    out.add(facts)
    return out


def _credited(facts: ContactFacts, model: str) -> tuple[tuple[TouchKey, float], ...]:
    """The touches ``facts`` credits under ``model``: its credits, else the first touch (the
    last under ``last``) in full."""
    credited = facts.credits.get(model)
    if not credited:
        return (((facts.last if model == "last" else facts.first), 1.0),)
    return tuple(credited)


def _add_model(rollups: Rollups, facts: ContactFacts, model: str, credited: Iterable[tuple[TouchKey, float]],
               values: Sequence[tuple[int, float]], sign: float, histogram: bool = True) -> None:
    """What ``facts`` add under one model: ``values`` are the non-zero (index, value) of
    ``_values(facts)``; ``histogram=False`` leaves the days histogram alone."""
    sums, days_rows = rollups.sums, rollups.days
    days = facts.days_to_qualify if histogram else None
    bucket = None if days is None else bucket_of(days)
    for touch, credit in credited:
        key = (model, facts.day, facts.hour, facts.motion, *touch)
        weight = sign * credit
        row = sums.get(key)
        if row is None:
            row = sums[key] = [0.0] * _N
        for i, value in values:
            row[i] += weight * value
        if bucket is not None:
            cell = days_rows.get((key, bucket))
            if cell is None:
                cell = days_rows[(key, bucket)] = [0.0, 0.0]
            cell[0] += weight
            cell[1] += weight * days  # type: ignore[operator]


def _non_zero(values: Sequence[float]) -> list[tuple[int, float]]:
    return [(i, value) for i, value in enumerate(values) if value]


def add_difference(rollups: Rollups, before: ContactFacts | None, after: ContactFacts | None) -> None:
    """Add to ``rollups`` what changes when a contact goes from ``before`` to ``after``
    (``None``: absent). Unchanged facts add nothing.

    The same sums as ``rollups.add(before, -1)`` then ``rollups.add(after, 1)``, computed by
    model: a model that credits the same touches on the same day and motion adds only the
    change of the values (nothing when they are equal: most changes move one model's key,
    e.g. a touch that moves the last touch), so no row is taken away and added back."""
    if before == after:
        return
    if before is None or after is None:
        facts, sign = (after, 1.0) if before is None else (before, -1.0)
        rollups.add(facts, sign)  # type: ignore[arg-type]
        return
    old, new = _values(before), _values(after)
    old_values, new_values = _non_zero(old), _non_zero(new)
    delta = _non_zero([b - a for a, b in zip(old, new)])
    same_place = before.day == after.day and before.hour == after.hour and before.motion == after.motion
    same_days = before.days_to_qualify == after.days_to_qualify
    for model in MODELS:
        was, now = _credited(before, model), _credited(after, model)
        if not (same_place and was == now):
            _add_model(rollups, before, model, was, old_values, -1.0)
            _add_model(rollups, after, model, now, new_values, 1.0)
            continue
        if delta:
            _add_model(rollups, after, model, now, delta, 1.0, histogram=False)
        if not same_days:
            _add_model(rollups, before, model, was, (), -1.0)
            _add_model(rollups, after, model, now, (), 1.0)


async def write_difference(session: AsyncSession, before: ContactFacts | None, after: ContactFacts | None) -> None:
    """Add what changes from ``before`` to ``after`` to the stored rollups (one contact)."""
    difference = Rollups()
    add_difference(difference, before, after)
    await write(session, difference)


def _grains(key: RollupKey) -> tuple[tuple, tuple, tuple, tuple]:
    model, day, hour, *rest = key
    return ((model, HOUR, day, hour, *rest), (model, DAY, day, 0, *rest), (model, MONTH, day.replace(day=1), 0, *rest),
            (model, YEAR, day.replace(month=1, day=1), 0, *rest))


_SUMS_COLUMNS = (*KEY, *METRICS)
_DAYS_COLUMNS = (*KEY, "bucket", "weight", "days")


def stored_rows(rollups: Rollups) -> tuple[list[dict], list[dict]]:
    """The rows to add to ``source_rollups`` and ``qualify_days_rollups``, each difference at
    every grain, in key order; rows whose values are all zero are left out."""
    sums: dict[tuple, list[float]] = {}
    for key, values in rollups.sums.items():
        for stored in _grains(key):
            row = sums.get(stored)
            if row is None:
                sums[stored] = list(values)
            else:
                for i, value in enumerate(values):
                    row[i] += value
    days: dict[tuple, list[float]] = {}
    for (key, bucket), values in rollups.days.items():
        for stored in _grains(key):
            cell = days.setdefault((*stored, bucket), [0.0, 0.0])
            cell[0] += values[0]
            cell[1] += values[1]
    return ([dict(zip(_SUMS_COLUMNS, (*key, *values)))
             for key, values in sorted(sums.items()) if any(abs(v) > 1e-12 for v in values)],
            [dict(zip(_DAYS_COLUMNS, (*key, *values)))
             for key, values in sorted(days.items()) if any(abs(v) > 1e-12 for v in values)])


# ---- writing ------------------------------------------------------------------------------




async def write(session: AsyncSession, rollups: Rollups) -> None:
    """Add ``rollups`` to the stored rows: one executemany upsert per table, in key order
    (two writers take row locks in the same order). Rows whose values are all zero (a
    change that moved nothing) are left out."""
    if not rollups:
        return
    sums, days = stored_rows(rollups)
    await add_many(session, SourceRollup.__table__, sums)
    await add_many(session, QualifyDaysRollup.__table__, days)


# ---- reading the raw rows (rebuild, partial days, the tests' reference) ---------------------

_C = Contact.__table__
_O = Opportunity.__table__
_A = AttributionCredit.__table__
_CREDITS = tuple(_A.c[column] for column in CREDIT_COLUMNS.values())
_CONTACT_SELECT = (_C.c.id, *(_C.c[name] for name in CONTACT_COLUMNS))


async def credits_of(session: AsyncSession, contact_ids: Sequence[str]
                     ) -> dict[str, dict[str, list[tuple[TouchKey, float]]]]:
    """Stored credits by contact and model, in touch order (a model's NULLs skipped)."""
    out: dict[str, dict[str, list[tuple[TouchKey, float]]]] = {}
    for chunk in in_chunks(list(contact_ids)):
        rows = await session.execute(
            select(_A.c.contact_id, *(_A.c[name] for name in TOUCH_KEY), *_CREDITS)
            .where(_A.c.contact_id.in_(chunk)).order_by(_A.c.contact_id, _A.c.position)
        )
        for contact_id, channel, campaign, form_id, sequence, *credits in rows:
            touch = (key_text(channel), key_text(campaign), key_text(form_id), key_text(sequence))
            models = out.setdefault(contact_id, {})
            for model, credit in zip(MODELS, credits):
                if credit is not None:
                    models.setdefault(model, []).append((touch, credit))
    return out


async def opportunities_of(session: AsyncSession, contact_ids: Sequence[str]) -> dict[str, list[tuple]]:
    """Stored opportunities by contact: (stage, amount, estimated)."""
    out: dict[str, list[tuple]] = {}
    for chunk in in_chunks(list(contact_ids)):
        rows = await session.execute(select(_O.c.contact_id, _O.c.stage, _O.c.amount, _O.c.amount_estimated)
                                     .where(_O.c.contact_id.in_(chunk)))
        for contact_id, stage, amount, estimated in rows:
            out.setdefault(contact_id, []).append((stage, amount, bool(estimated)))
    return out


async def raw_facts(session: AsyncSession, *where: Any) -> list[ContactFacts]:
    """The facts of the contacts matching ``where`` (all without), read from the raw rows."""
    rows = (await session.execute(select(*_CONTACT_SELECT).where(*where))).all()
    ids = [row[0] for row in rows]
    opportunities = await opportunities_of(session, ids)
    credits = await credits_of(session, ids)
    return [facts_of(row._mapping, opportunities.get(row[0], ()), credits.get(row[0])) for row in rows]


async def rebuild(session: AsyncSession, *, page: int = 2000) -> int:
    """Recompute every rollup from the raw rows (contacts, opportunities, credits), in the
    caller's transaction; the number of contacts read.

    On PostgreSQL the rollup tables are locked first (writers' upserts wait for the
    rebuild's commit, then add their differences to it); SQLite's writer holds the lock."""
    if (await session.connection()).dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE source_rollups, qualify_days_rollups IN EXCLUSIVE MODE"))
    await session.execute(delete(SourceRollup.__table__))
    await session.execute(delete(QualifyDaysRollup.__table__))
    total, after = Rollups(), None
    count = 0
    while True:
        query = select(_C.c.id).order_by(_C.c.id).limit(page)
        if after is not None:
            query = query.where(_C.c.id > after)
        ids = list((await session.execute(query)).scalars())
        if not ids:
            break
        after = ids[-1]
        for facts in await raw_facts(session, _C.c.id.in_(ids)):
            total.add(facts)
            count += 1
    await write(session, total)
    return count
