"""All SQL of the pipeline service: lists, details, transitions and the sources analytics.

Every figure is computed by the database, in SQL that PostgreSQL and SQLite (3.30+) both run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Float, String, and_, any_, bindparam, case, delete, func, literal, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from pipeline_store import rollups, source_rollups
from pipeline_store.models import (
    Account,
    AttributionCredit,
    BalanceDay,
    BalanceDaysToSql,
    BalanceEffort,
    ConsentEntry,
    Contact,
    DashboardSession,
    Opportunity,
    PipelineApiKey,
    QualifyDaysRollup,
    Score,
    SourceRollup,
    StageChange,
    Touch,
    TransitionRequest,
)
from services.pipeline import balance
from services.pipeline.cursor import Position
from shared.db import in_chunks

C, O = Contact, Opportunity  # noqa: E741 - short aliases for the queries below

OPEN_OR_WON = ("sql", "opportunity", "customer")


# ---- portable SQL pieces ---------------------------------------------------------------


class days_between(FunctionElement):  # noqa: N801 - reads as SQL
    """Fractional days from ``start`` to ``end`` (julianday on SQLite, epoch seconds elsewhere)."""

    type = Float()
    inherit_cache = True
    name = "days_between"


@compiles(days_between)
def _days_between_default(element, compiler, **kw):  # noqa: ANN001, ANN202
    end, start = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION) / 86400.0)"


@compiles(days_between, "sqlite")
def _days_between_sqlite(element, compiler, **kw):  # noqa: ANN001, ANN202
    end, start = (compiler.process(c, **kw) for c in element.clauses)
    return f"(julianday({end}) - julianday({start}))"


class utc_day(FunctionElement):  # noqa: N801 - reads as SQL
    """The UTC calendar day of a stored instant (text ``YYYY-MM-DD`` on SQLite, which keeps
    instants as UTC text; a ``date`` elsewhere)."""

    type = String()
    inherit_cache = True
    name = "utc_day"


@compiles(utc_day)
def _utc_day_default(element, compiler, **kw):  # noqa: ANN001, ANN202
    (column,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(({column}) AT TIME ZONE 'UTC' AS DATE)"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element, compiler, **kw):  # noqa: ANN001, ANN202
    (column,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"date({column})"


class unindexed(FunctionElement):  # noqa: N801 - reads as SQL
    """A column whose condition no index should answer: ``+column`` on SQLite, the column
    itself elsewhere. A cohort's motion filter (``motion IN (…)``) is one. Without statistics
    (a SQLite file is rarely ``ANALYZE``d) SQLite took the motion index over the cohort's
    range, reading every contact of the motion: 2 s instead of 4 ms for half an hour's
    contacts of one motion over 1,000,000 contacts."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = column.type  # values are bound as the column's


@compiles(unindexed)
def _unindexed_default(element, compiler, **kw):  # noqa: ANN001, ANN202
    (column,) = (compiler.process(c, **kw) for c in element.clauses)
    return column


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element, compiler, **kw):  # noqa: ANN001, ANN202
    (column,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"+{column}"


def _instant(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, time.min, tzinfo=timezone.utc)


def within(column: Any, start: date | datetime | None, end: date | datetime | None) -> list[ColumnElement]:
    """``start`` inclusive; ``end`` inclusive (a plain date covers its whole day)."""
    conditions = []
    if start is not None:
        conditions.append(column >= _instant(start))
    if end is not None:
        if isinstance(end, datetime):
            conditions.append(column <= end)
        else:
            conditions.append(column < _instant(end + timedelta(days=1)))
    return conditions


def after(at_column: Any, id_column: Any, position: Position, order: str) -> ColumnElement:
    """Rows strictly past ``position`` in (time, id) order; the first term lets an index range-scan."""
    if order == "desc":
        return and_(at_column <= position.at, or_(at_column < position.at, id_column < position.id))
    return and_(at_column >= position.at, or_(at_column > position.at, id_column > position.id))


def _sorted(at_column: Any, id_column: Any, order: str) -> list[Any]:
    return [at_column.desc(), id_column.desc()] if order == "desc" else [at_column.asc(), id_column.asc()]


def touch_columns(model: Any, attribution: str) -> dict[str, Any]:
    prefix = "first_touch_" if attribution == "first" else "last_touch_"
    return {
        name: getattr(model, prefix + name, None)
        for name in ("motion", "channel", "campaign", "form_id", "sequence")
    }


# ---- contacts --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactQuery:
    email: str | None = None
    stages: Sequence[str] | None = None
    motions: Sequence[str] | None = None
    channels: Sequence[str] | None = None
    campaign: str | None = None
    account: str | None = None
    owner: str | None = None
    attribution: str = "first"
    created_from: date | datetime | None = None
    created_to: date | datetime | None = None
    qualified_from: date | datetime | None = None
    qualified_to: date | datetime | None = None


def _contact_filters(q: ContactQuery) -> list[ColumnElement]:
    touch = touch_columns(C, q.attribution)
    where: list[ColumnElement] = []
    if q.email is not None:
        where.append(C.email == q.email)
    if q.stages:
        where.append(C.stage.in_(q.stages))
    if q.motions:
        where.append(C.motion.in_(q.motions))
    if q.channels:
        where.append(touch["channel"].in_(q.channels))
    if q.campaign is not None:
        where.append(touch["campaign"] == q.campaign)
    if q.account is not None:
        where.append(C.account_domain == q.account)
    if q.owner is not None:
        where.append(C.owner == q.owner)
    where += within(C.created_at, q.created_from, q.created_to)
    where += within(C.sql_at, q.qualified_from, q.qualified_to)
    return where


async def list_contacts(
    session: AsyncSession, q: ContactQuery, *, limit: int, position: Position | None
) -> list[tuple[Contact, str | None]]:
    """One page (plus one row, to tell whether another page follows), newest first."""
    stmt = (
        select(C, Account.company)
        .outerjoin(Account, Account.domain == C.account_domain)
        .where(*_contact_filters(q))
        .order_by(*_sorted(C.created_at, C.id, "desc"))
        .limit(limit + 1)
    )
    if position is not None:
        stmt = stmt.where(after(C.created_at, C.id, position, "desc"))
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def contact(session: AsyncSession, contact_id: str) -> tuple[Contact, Account | None] | None:
    row = (
        await session.execute(
            select(C, Account).outerjoin(Account, Account.domain == C.account_domain).where(C.id == contact_id)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def stage_history(session: AsyncSession, contact_id: str) -> Sequence[StageChange]:
    stmt = (
        select(StageChange).where(StageChange.contact_id == contact_id).order_by(StageChange.changed_at, StageChange.id)
    )
    return (await session.execute(stmt)).scalars().all()


async def score_history(session: AsyncSession, contact_id: str) -> Sequence[Score]:
    stmt = select(Score).where(Score.contact_id == contact_id).order_by(Score.scored_at, Score.id)
    return (await session.execute(stmt)).scalars().all()


async def timeline(session: AsyncSession, contact_id: str) -> Sequence[Touch]:
    stmt = (
        select(Touch)
        .where(Touch.contact_id == contact_id)
        .order_by(Touch.occurred_at, Touch.recorded_at, Touch.event_id)
    )
    return (await session.execute(stmt)).scalars().all()


async def consents(session: AsyncSession, contact_id: str) -> Sequence[ConsentEntry]:
    stmt = select(ConsentEntry).where(ConsentEntry.contact_id == contact_id).order_by(ConsentEntry.occurred_at,
                                                                                      ConsentEntry.id)
    return (await session.execute(stmt)).scalars().all()


# ---- accounts --------------------------------------------------------------------------


async def account(session: AsyncSession, domain: str) -> Account | None:
    return await session.get(Account, domain)


async def account_contacts(session: AsyncSession, domain: str, limit: int) -> Sequence[Contact]:
    stmt = select(C).where(C.account_domain == domain).order_by(C.created_at, C.id).limit(limit)
    return (await session.execute(stmt)).scalars().all()


async def motion_mix(session: AsyncSession, domain: str) -> dict[str, dict[str, int]]:
    contacts = select(C.motion, func.count()).where(C.account_domain == domain).group_by(C.motion)
    opps = select(O.motion, func.count()).where(O.account_domain == domain).group_by(O.motion)
    return {
        "contacts": {m: n for m, n in (await session.execute(contacts)).all()},
        "opportunities": {m: n for m, n in (await session.execute(opps)).all()},
    }


# ---- opportunities ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpportunityQuery:
    stages: Sequence[str] | None = None
    motions: Sequence[str] | None = None
    channels: Sequence[str] | None = None
    campaign: str | None = None
    form: str | None = None
    sequence: str | None = None
    owner: str | None = None
    account: str | None = None
    grade: str | None = None
    contact_id: str | None = None
    attribution: str = "first"
    qualified_from: date | datetime | None = None
    qualified_to: date | datetime | None = None
    closed_from: date | datetime | None = None
    closed_to: date | datetime | None = None


def _opportunity_filters(q: OpportunityQuery) -> list[ColumnElement]:
    touch = touch_columns(O, q.attribution)
    where: list[ColumnElement] = []
    if q.stages:
        where.append(O.stage.in_(q.stages))
    if q.motions:
        where.append(O.motion.in_(q.motions))
    if q.channels:
        where.append(touch["channel"].in_(q.channels))
    if q.campaign is not None:
        where.append(touch["campaign"] == q.campaign)
    if q.form is not None:
        where.append(O.first_touch_form_id == q.form)
    if q.sequence is not None:
        where.append(O.first_touch_sequence == q.sequence)
    if q.owner is not None:
        where.append(O.owner == q.owner)
    if q.account is not None:
        where.append(O.account_domain == q.account)
    if q.grade is not None:
        where.append(O.grade == q.grade)
    if q.contact_id is not None:
        where.append(O.contact_id == q.contact_id)
    where += within(O.qualified_at, q.qualified_from, q.qualified_to)
    where += within(O.closed_at, q.closed_from, q.closed_to)
    return where


async def list_opportunities(
    session: AsyncSession, q: OpportunityQuery, *, limit: int, position: Position | None, order: str = "desc"
) -> list[tuple[Opportunity, str]]:
    """One page (plus one row) in (qualified_at, id) order, with each contact's email."""
    stmt = (
        select(O, C.email)
        .join(C, C.id == O.contact_id)
        .where(*_opportunity_filters(q))
        .order_by(*_sorted(O.qualified_at, O.id, order))
        .limit(limit + 1)
    )
    if position is not None:
        stmt = stmt.where(after(O.qualified_at, O.id, position, order))
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def opportunities_of(session: AsyncSession, *, contact_id: str | None = None, domain: str | None = None,
                           limit: int = 1000) -> list[tuple[Opportunity, str]]:
    stmt = select(O, C.email).join(C, C.id == O.contact_id).order_by(O.qualified_at.desc(), O.id.desc()).limit(limit)
    if contact_id is not None:
        stmt = stmt.where(O.contact_id == contact_id)
    if domain is not None:
        stmt = stmt.where(O.account_domain == domain)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def opportunity(session: AsyncSession, opportunity_id: str) -> tuple[Opportunity, str] | None:
    row = (
        await session.execute(select(O, C.email).join(C, C.id == O.contact_id).where(O.id == opportunity_id))
    ).first()
    return (row[0], row[1]) if row else None


async def opportunity_for_update(session: AsyncSession, opportunity_id: str) -> Opportunity | None:
    """The opportunity, row-locked on PostgreSQL so transitions of one opportunity queue up
    (SQLite's writer already holds the database lock)."""
    stmt = select(O).where(O.id == opportunity_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def contact_for_update(session: AsyncSession, contact_id: str) -> Contact:
    return (await session.execute(select(C).where(C.id == contact_id).with_for_update())).scalar_one()


async def transition_request(session: AsyncSession, key: str) -> TransitionRequest | None:
    return await session.get(TransitionRequest, key)


def add(session: AsyncSession, *rows: Any) -> None:
    session.add_all(rows)


async def move_balance(session: AsyncSession, before: rollups.Contribution, after: rollups.Contribution) -> None:
    """A transition's change to the motion balance rollups (won, amounts), in its transaction."""
    deltas = rollups.Deltas()
    deltas.change(before, after)
    await rollups.write(session, deltas)


# ---- the sources question --------------------------------------------------------------

@dataclass(frozen=True)
class SourcesFilter:
    start: date | datetime | None = None
    end: date | datetime | None = None
    motions: Sequence[str] | None = None
    attribution: str = "first"


def _first_touch_in(bounded: Callable[[Any], list[ColumnElement]]) -> ColumnElement:
    """Contacts whose first touch (``created_at`` where none was kept) meets ``bounded``:
    each branch can use its column's index (a ``coalesce`` of the two could not: the
    database would read every contact)."""
    return or_(and_(C.first_touch_at.is_not(None), *bounded(C.first_touch_at)),
               and_(C.first_touch_at.is_(None), *bounded(C.created_at)))


def _cohort(f: SourcesFilter) -> list[ColumnElement]:
    """Contacts whose first touch is in the filter's range, of its motions."""
    where = []
    if f.start is not None or f.end is not None:
        where.append(_first_touch_in(lambda column: within(column, f.start, f.end)))
        if f.motions:  # the range's index, not the motion's
            where.append(unindexed(C.motion).in_(f.motions))
    elif f.motions:
        where.append(C.motion.in_(f.motions))
    return where


# ---- the sources question from rollups ----------------------------------------------------

_KEY_NAMES = ("motion", "channel", "campaign", "form_id", "sequence")


@dataclass(frozen=True)
class RollupRange:
    """What one sources answer reads: whole days from the rollups (``first_day``/``last_day``,
    ``None`` unbounded; none when ``first_day > last_day``) and partial days' windows
    ``(start, end, end included)``, each within one UTC day, read as whole hours from hour
    rows and partial hours from the raw rows (``_window_periods``)."""

    model: str
    motions: Sequence[str] | None = None
    first_day: date | None = None
    last_day: date | None = None
    whole_days: bool = True
    windows: tuple[tuple[datetime, datetime, bool], ...] = ()
    days_key: tuple[str, ...] | None = None  # the key names the days histogram keeps (all: None)


Sums = dict[tuple, list[float]]
DayCells = dict[tuple, list[tuple[int, float, float]]]


# A period of rollup rows an answer reads: (sign, grain, first day, last day, first hour, last
# hour); the hours only for the hour grain (then both days are the hour rows' day).
Period = tuple[float, str, date, date, int | None, int | None]
_COARSE = (source_rollups.YEAR, source_rollups.MONTH, source_rollups.DAY)
_ONE_DAY, _ONE_HOUR = timedelta(days=1), timedelta(hours=1)


def _unit_start(grain: str, day: date) -> date:
    return day.replace(month=1, day=1) if grain == source_rollups.YEAR else day.replace(day=1)


def _unit_end(grain: str, day: date) -> date:
    if grain == source_rollups.YEAR or day.month == 12:
        return day.replace(month=12, day=31)
    return day.replace(month=day.month + 1, day=1) - _ONE_DAY


def _signed_periods(first_day: date | None, last_day: date | None) -> list[Period]:
    """The rollup rows a whole-day range reads (``None``: unbounded): whole years from year
    rows, then whole months of the ragged years from month rows, then the ragged days from
    day rows. Each ragged end is read the shorter way: its part of the year (month), or the
    year's (month's) row less its parts outside the range (sign -1), whichever covers fewer
    days; so at most half a year of months and half a month of days per end."""
    out: list[Period] = []
    low, high = first_day or date.min, last_day or date.max
    if low <= high:
        _span(0, low, high, 1.0, out)
    return out


def _span(level: int, low: date, high: date, sign: float, out: list[Period]) -> None:
    """Add the periods of grain ``_COARSE[level]`` and finer covering the days ``low``–``high``."""
    grain = _COARSE[level]
    if grain == source_rollups.DAY:
        out.append((sign, grain, low, high, None, None))
        return
    first_whole: date | None = low
    if _unit_start(grain, low) != low:  # the unit after low's (none after the calendar's last)
        end = _unit_end(grain, low)
        first_whole = None if end == date.max else end + _ONE_DAY
    last_whole: date | None = high  # the last day of the last whole unit
    if _unit_end(grain, high) != high:
        start = _unit_start(grain, high)
        last_whole = None if start == date.min else start - _ONE_DAY
    if first_whole is not None and last_whole is not None and first_whole <= last_whole:
        out.append((sign, grain, first_whole, _unit_start(grain, last_whole), None, None))
        if low < first_whole:
            _ragged(level, low, first_whole - _ONE_DAY, sign, out)
        if last_whole < high:
            _ragged(level, last_whole + _ONE_DAY, high, sign, out)
        return
    cut = _unit_end(grain, low)  # no whole unit: the range lies in one unit or two
    if high <= cut:
        _ragged(level, low, high, sign, out)
    else:
        _ragged(level, low, cut, sign, out)
        _ragged(level, cut + _ONE_DAY, high, sign, out)


def _ragged(level: int, low: date, high: date, sign: float, out: list[Period]) -> None:
    """``low``–``high`` inside one unit of ``_COARSE[level]``: the finer rows inside, or the
    unit's row less the finer rows outside, whichever covers fewer days."""
    grain = _COARSE[level]
    start, end = _unit_start(grain, low), _unit_end(grain, low)
    inside = (high - low).days + 1
    outside = (end - start).days + 1 - inside
    if outside < inside:
        out.append((sign, grain, start, start, None, None))
        if start < low:
            _span(level + 1, start, low - _ONE_DAY, -sign, out)
        if high < end:
            _span(level + 1, high + _ONE_DAY, end, -sign, out)
    else:
        _span(level + 1, low, high, sign, out)


Window = tuple[float, datetime, datetime, bool]  # sign, start, end (included when the flag is set)


def _window_periods(start: datetime, end: datetime, inclusive: bool) -> tuple[list[Period], list[Window]]:
    """A partial day's window (``start`` to ``end``, within one UTC day) as rollup rows and
    raw rows: its whole hours from hour rows (or the day's row less the hours outside, when
    that reads fewer), its at most two partial hours from the contacts (or the hour's row
    less the contacts of the hour outside the window, whichever spans less time)."""
    day = start.date()
    midnight = datetime.combine(day, time(0), tzinfo=timezone.utc)
    # offsets from midnight, the window [a, b) (an included end is 1 µs later: times are
    # kept to the microsecond; 24 h on the calendar's last day, which has no midnight after)
    a = start - midnight
    b = (end - midnight) + (timedelta(microseconds=1) if inclusive else timedelta(0))
    if a >= b:
        return [], []
    first, last = -(-a // _ONE_HOUR), b // _ONE_HOUR  # the whole hours: first … last - 1
    hours = [0.0] * 24
    day_sign = 0.0
    raw: list[tuple[float, timedelta, timedelta]] = []

    def partial(x: timedelta, y: timedelta) -> None:  # [x, y) inside one hour
        hour = x // _ONE_HOUR
        if _ONE_HOUR - (y - x) < y - x:
            hours[hour] += 1.0
            raw.extend(p for p in ((-1.0, hour * _ONE_HOUR, x), (-1.0, y, (hour + 1) * _ONE_HOUR)) if p[1] < p[2])
        else:
            raw.append((1.0, x, y))

    if first < last:
        if 24 - (last - first) < last - first:
            day_sign += 1.0
            for hour in (*range(first), *range(last, 24)):
                hours[hour] -= 1.0
        else:
            for hour in range(first, last):
                hours[hour] += 1.0
        if a < first * _ONE_HOUR:
            partial(a, first * _ONE_HOUR)
        if last * _ONE_HOUR < b:
            partial(last * _ONE_HOUR, b)
    elif a // _ONE_HOUR == (b - timedelta(microseconds=1)) // _ONE_HOUR:
        partial(a, b)
    else:  # across one hour's start
        partial(a, first * _ONE_HOUR)
        partial(first * _ONE_HOUR, b)
    periods: list[Period] = [(day_sign, source_rollups.DAY, day, day, None, None)] if day_sign else []
    hour = 0
    while hour < 24:  # runs of hours of one sign
        run = hour
        while run + 1 < 24 and hours[run + 1] == hours[hour]:
            run += 1
        if hours[hour]:
            periods.append((hours[hour], source_rollups.HOUR, day, day, hour, run))
        hour = run + 1
    last_instant = datetime.max.replace(tzinfo=timezone.utc)
    windows: list[Window] = []
    for sign, x, y in raw:
        if y == b:
            windows.append((sign, midnight + x, end, inclusive))
        elif y == timedelta(days=1) and day == date.max:
            windows.append((sign, midnight + x, last_instant, True))
        else:
            windows.append((sign, midnight + x, midnight + y, False))
    return periods, windows


def _net(periods: list[Period]) -> list[Period]:
    """The periods with equal ones' signs added (a day row taken away by the whole days'
    periods and added back by a partial day's); those netting to zero left out."""
    signs: dict[tuple, float] = {}
    for sign, *rest in periods:
        signs[tuple(rest)] = signs.get(tuple(rest), 0.0) + sign
    return [(sign, *rest) for rest, sign in signs.items() if sign]  # type: ignore[misc]


PeriodShape = tuple[tuple[bool, bool, bool], ...]  # per period: an hour row's, bounded below, above


def _periods_shape(periods: list[Period]) -> tuple[tuple[PeriodShape, bool], dict[str, Any]]:
    """What a statement of ``periods`` depends on (each period's kind of bounds, and whether
    rows are weighed by their periods' signs), and the values it binds."""
    shape: list[tuple[bool, bool, bool]] = []
    values: dict[str, Any] = {}
    top = date.max.replace(month=1, day=1)
    for i, (_, grain, low, high, first_hour, last_hour) in enumerate(periods):
        hour = grain == source_rollups.HOUR
        kind = (hour, hour or low > date.min, not hour and high < top)
        shape.append(kind)
        values[f"g{i}"] = grain
        if kind[1]:
            values[f"lo{i}"] = low
        if kind[2]:
            values[f"hi{i}"] = high
        if hour:
            values[f"fh{i}"], values[f"lh{i}"] = first_hour, last_hour
    signed = len(periods) > 1 and any(p[0] != 1.0 for p in periods)
    if signed:
        values |= {f"s{i}": p[0] for i, p in enumerate(periods)}
    return (tuple(shape), signed), values


@functools.lru_cache(maxsize=512)
def _rollup_statement(days_key: tuple[str, ...] | None, shape: tuple[PeriodShape, bool], motions: bool) -> Any:
    """The sum of one model's rollup rows over periods of ``shape`` (``_periods_shape``), per
    key (``days_key is None``: ``source_rollups``' table, every key name; else the days
    histogram's, its names and bucket), with every value a bound parameter: built once per
    shape, as building the conditions of every period took most of a small answer's CPU."""
    table = SourceRollup.__table__ if days_key is None else QualifyDaysRollup.__table__
    periods, signed = shape

    def period(i: int, hour: bool, low: bool, high: bool) -> ColumnElement:
        out = [table.c.model == bindparam("model"), table.c.grain == bindparam(f"g{i}")]
        if hour:
            out += [table.c.day == bindparam(f"lo{i}"), table.c.hour >= bindparam(f"fh{i}"),
                    table.c.hour <= bindparam(f"lh{i}")]
        else:
            if low:
                out.append(table.c.day >= bindparam(f"lo{i}"))
            if high:
                out.append(table.c.day <= bindparam(f"hi{i}"))
        return and_(*out)

    conditions = [period(i, *kind) for i, kind in enumerate(periods)]
    where = [or_(*conditions)]
    if motions:
        where.append(table.c.motion.in_(bindparam("motions", expanding=True)))
    sign: Any = None  # one period, or all added and apart: each row once
    if signed:
        sign = sum((case((c, bindparam(f"s{i}", type_=Float)), else_=0.0) for i, c in enumerate(conditions)),
                   start=literal(0.0))

    def total(column: Any) -> Any:
        return func.sum(column if sign is None else column * sign)

    if days_key is None:
        keys = [table.c[name] for name in _KEY_NAMES]
        return select(*keys, *(total(table.c[name]) for name in source_rollups.METRICS)).where(*where).group_by(*keys)
    keys = [table.c[name] for name in days_key]
    return (select(*keys, table.c.bucket, total(table.c.weight), total(table.c.days)).where(*where)
            .group_by(*keys, table.c.bucket))


async def rollup_sums(session: AsyncSession, r: RollupRange) -> tuple[Sums, DayCells]:
    """The rollups of the model summed over the range per key, and the days histogram per
    key (the key's ``days_key`` names only, the others ``None``). One query per table: the
    periods' rows (``_signed_periods``, then the partial days' ``_window_periods``) summed by
    the database, each row times the sum of the signs of the periods it falls in; then the
    partial hours' contacts."""
    sums: Sums = {}
    days: DayCells = {}
    periods = _signed_periods(r.first_day, r.last_day) if r.whole_days else []
    raw: list[Window] = []
    for window in r.windows:
        more, windows = _window_periods(*window)
        periods += more
        raw += windows
    periods = _net(periods)
    if periods:
        shape, values = _periods_shape(periods)
        params: dict[str, Any] = {"model": r.model, **values}
        if r.motions:
            params["motions"] = list(r.motions)
        stmt = _rollup_statement(None, shape, bool(r.motions))
        for row in (await session.execute(stmt, params)).all():
            sums[tuple(map(source_rollups.key_value, row[:5]))] = [float(v or 0.0) for v in row[5:]]
        names = r.days_key or _KEY_NAMES
        at = [_KEY_NAMES.index(name) for name in names]
        stmt = _rollup_statement(tuple(names), shape, bool(r.motions))
        for row in (await session.execute(stmt, params)).all():
            key: list[str | None] = [None] * 5
            for i, value in zip(at, row):
                key[i] = source_rollups.key_value(value)
            days.setdefault(tuple(key), []).append((int(row[-3]), float(row[-2] or 0.0), float(row[-1] or 0.0)))
    if raw:  # the partial hours' contacts, added or taken away (the windows never overlap)
        partial = source_rollups.Rollups()
        models = (r.model,)

        def inside(windows: list[Window]) -> ColumnElement:
            return or_(*(_cohort_window(start, end, inclusive) for _, start, end, inclusive in windows))

        where = [inside(raw)]
        if r.motions:  # the windows' index, not the motion's
            where.append(unindexed(C.motion).in_(r.motions))
        taken = [w for w in raw if w[0] < 0]
        contact_sign = case((inside(taken), -1.0), else_=1.0) if taken else None
        for facts, contacts in await _window_facts(session, where, r.model, contact_sign):
            partial.add(facts, contacts, models=models)
        _merge(sums, days, partial, r.model)
    return sums, days


_SOMETIME = datetime(2000, 1, 1, tzinfo=timezone.utc)  # a milestone reached (its time is not read)


async def _window_facts(session: AsyncSession, where: list[ColumnElement], model: str,
                        sign: ColumnElement | None = None) -> list[tuple[source_rollups.ContactFacts, float]]:
    """``source_rollups.raw_facts`` of the partial hours' contacts for one model, each with
    the number of contacts it stands for (times ``sign``, a contact's -1 or 1, when given).

    Plain contacts (not qualified, no opportunity, no credit under the model) add only
    their milestones' counts to the touch the model falls back to: the database counts
    them by motion, that touch and the milestones reached, one fact per group. The others
    are read one by one, with their opportunities and the model's credits looked up by
    contact (``contact_id IN`` the window's contacts: the ``contact_id`` indexes); the other
    models' credits are never read."""
    A = AttributionCredit.__table__  # noqa: N806
    postgres = (await session.connection()).dialect.name == "postgresql"
    if postgres:  # the subplans' estimates would have it compile these small queries (tens of ms)
        await session.execute(text("SET LOCAL jit = off"))
    has_opportunity = select(O.id).where(O.contact_id == C.id).exists()
    credit = A.c[source_rollups.CREDIT_COLUMNS[model]]
    has_credits = select(A.c.contact_id).where(A.c.contact_id == C.id, credit.is_not(None)).exists()
    side = "last" if model == "last" else "first"
    touch = [getattr(C, f"{side}_touch_{name}") for name in source_rollups.TOUCH_KEY]
    milestones = ("lead_at", "mql_at", "opportunity_at", "customer_at")
    reached = [getattr(C, name).is_not(None) for name in milestones]
    unqualified = case((C.sql_at.is_(None), 1), else_=0) == 1  # not a condition an index could answer
    signs = [] if sign is None else [sign]
    stmt = (select(C.motion, *touch, *reached, *signs, func.count())
            .where(*where, unqualified, ~has_opportunity, ~has_credits).group_by(C.motion, *touch, *reached, *signs))
    facts_of = source_rollups.facts_of
    out: list[tuple[source_rollups.ContactFacts, float]] = []
    for motion, *values in (await session.execute(stmt)).all():
        plain: dict[str, Any] = {"first_touch_at": None, "created_at": _SOMETIME, "motion": motion, "sql_at": None}
        for name, value in zip(source_rollups.TOUCH_KEY, values[:4]):
            plain[f"first_touch_{name}"] = plain[f"last_touch_{name}"] = value
        for name, value in zip(milestones, values[4:8]):
            plain[name] = _SOMETIME if value else None
        out.append((facts_of(plain), float(values[-1]) * (float(values[8]) if signs else 1.0)))
    where = [*where, or_(C.sql_at.is_not(None), has_opportunity, has_credits)]
    contacts = (await session.execute(select(C.id, *(getattr(C, name) for name in source_rollups.CONTACT_COLUMNS),
                                             *signs).where(*where))).all()
    if not contacts:
        return out
    opportunities: dict[str, list[tuple]] = {}
    credits: dict[str, dict[str, list[tuple[source_rollups.TouchKey, float]]]] = {}
    key_text = source_rollups.key_text
    # by the contacts' ids: one array on PostgreSQL (no list of parameters to render)
    for chunk in [[row[0] for row in contacts]] if postgres else in_chunks([row[0] for row in contacts], 10_000):

        def of(column: Any, chunk: Sequence[str] = chunk) -> ColumnElement:
            return column == any_(bindparam(None, chunk, type_=ARRAY(String))) if postgres else column.in_(chunk)

        stmt = select(O.contact_id, O.stage, O.amount, O.amount_estimated).where(of(O.contact_id))
        for contact_id, stage, amount, estimated in (await session.execute(stmt)).all():
            opportunities.setdefault(contact_id, []).append((stage, amount, bool(estimated)))
        stmt = (select(A.c.contact_id, A.c.channel, A.c.campaign, A.c.form_id, A.c.sequence, credit)
                .where(of(A.c.contact_id), credit.is_not(None)).order_by(A.c.contact_id, A.c.position))
        for contact_id, channel, campaign, form_id, sequence, credit in (await session.execute(stmt)).all():
            touch_key = (key_text(channel), key_text(campaign), key_text(form_id), key_text(sequence))
            credits.setdefault(contact_id, {}).setdefault(model, []).append((touch_key, credit))
    names = ("id", *source_rollups.CONTACT_COLUMNS)
    # a plain dict per row: a Row's mapping looks each name up far more slowly
    out += [(facts_of(dict(zip(names, row)), opportunities.get(row[0], ()), credits.get(row[0])),
             float(row[-1]) if signs else 1.0) for row in contacts]
    return out


def _merge(sums: Sums, days: DayCells, partial: source_rollups.Rollups, model: str) -> None:
    for key, values in partial.sums.items():
        if key[0] != model:
            continue
        name = tuple(map(source_rollups.key_value, key[3:]))
        row = sums.setdefault(name, [0.0] * len(source_rollups.METRICS))
        for i, value in enumerate(values):
            row[i] += value
    for (key, bucket), (weight, total) in partial.days.items():
        if key[0] == model:
            days.setdefault(tuple(map(source_rollups.key_value, key[3:])), []).append((bucket, weight, total))


def _cohort_window(start: datetime, end: datetime, inclusive: bool) -> ColumnElement:
    """Contacts whose first touch is in the window (``end`` included or not)."""
    return _first_touch_in(lambda column: [column >= start, column <= end if inclusive else column < end])


async def attribution_credits(session: AsyncSession, opportunity_id: str) -> list[AttributionCredit]:
    """An opportunity's stored credits, one row per touch (each model's credit in its
    ``credit_<model>`` column), in touch order."""
    stmt = (select(AttributionCredit).where(AttributionCredit.opportunity_id == opportunity_id)
            .order_by(AttributionCredit.position))
    return list((await session.execute(stmt)).scalars())


async def qualified_series(session: AsyncSession, f: SourcesFilter) -> list[tuple[date, str, str | None, int]]:
    """(UTC day of ``qualified_at``, motion, first-touch channel, opportunities) of the
    cohort's opportunities, counted by the database (a row per day and key, however many
    opportunities), oldest first.

    The dashboard's over-time charts sum these by week; the cohort filter is the one the
    source analytics use.
    """
    day = utc_day(O.qualified_at)
    stmt = select(day, O.motion, O.first_touch_channel, func.count()).select_from(O)
    cohort = _cohort(f)
    if cohort:  # every opportunity's contact exists (a foreign key): unfiltered, no join to read
        stmt = stmt.join(C, C.id == O.contact_id).where(*cohort)
    stmt = stmt.group_by(day, O.motion, O.first_touch_channel).order_by(day)
    return [(r[0] if isinstance(r[0], date) else date.fromisoformat(r[0]), r[1], r[2], r[3])
            for r in (await session.execute(stmt)).all()]


async def qualifying_scores(session: AsyncSession, opportunities: Sequence[Opportunity]) -> dict[str, Score]:
    """The score that qualified each opportunity: its contact's latest score at ``qualified_at``.

    Qualification writes that score row in the same transaction as the opportunity (same
    instant), so it is the one the ``opportunity.qualified`` event carried, with its reasons.
    """
    if not opportunities:
        return {}
    stmt = (
        select(Score)
        .where(Score.contact_id.in_({o.contact_id for o in opportunities}))
        .order_by(Score.contact_id, Score.scored_at, Score.id)
    )
    scores: dict[str, list[Score]] = {}
    for score in (await session.execute(stmt)).scalars():
        scores.setdefault(score.contact_id, []).append(score)
    def utc(moment: datetime) -> datetime:  # SQLite hands back naive UTC
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    out: dict[str, Score] = {}
    for opp in opportunities:
        at = utc(opp.qualified_at)
        before = [s for s in scores.get(opp.contact_id, []) if utc(s.scored_at) <= at]
        if before:
            out[opp.id] = before[-1]
    return out


# ---- dashboard sessions ------------------------------------------------------------------


def add_dashboard_session(
    session: AsyncSession, session_id: str, key_id: str, now: datetime, expires_at: datetime
) -> None:
    session.add(DashboardSession(id=session_id, key_id=key_id, created_at=now, expires_at=expires_at))


async def delete_expired_dashboard_sessions(session: AsyncSession, now: datetime) -> None:
    await session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))


async def delete_dashboard_session(session: AsyncSession, session_id: str) -> None:
    await session.execute(delete(DashboardSession).where(DashboardSession.id == session_id))


async def dashboard_session_key(session: AsyncSession, session_id: str, now: datetime) -> PipelineApiKey | None:
    """The key a live session signed in with, if the session has not expired and the key is not revoked."""
    stmt = (
        select(PipelineApiKey)
        .join(DashboardSession, DashboardSession.key_id == PipelineApiKey.id)
        .where(DashboardSession.id == session_id, DashboardSession.expires_at > now,
               PipelineApiKey.revoked_at.is_(None))
    )
    return (await session.execute(stmt)).scalar_one_or_none()


# ---- motion balance (from the rollups: pipeline_store/rollups.py) ------------------------


def _days(column: Any, start: date | None, end: date | None) -> list[ColumnElement]:
    return [c for c in (column >= start if start else None, column <= end if end else None) if c is not None]


async def balance_sums(session: AsyncSession, start: date | None, end: date | None,
                       windows: tuple[date, date]) -> balance.Sums:
    """The rollups summed over the days ``start``–``end`` (either open) and, day by day, over
    ``windows`` (the trend's two windows, first day to last): a few hundred rows at most."""
    d, h, e = BalanceDay, BalanceDaysToSql, BalanceEffort
    cohort = await session.execute(
        select(d.entry_motion, d.motion, d.channel, func.sum(d.entrants), func.sum(d.fit_ab), func.sum(d.sql),
               func.sum(d.won), func.sum(d.pipeline_amount), func.sum(d.won_amount))
        .where(*_days(d.day, start, end)).group_by(d.entry_motion, d.motion, d.channel)
    )
    rows = [balance.CohortSum(entry, motion, channel or None, int(n), int(fit), int(sql), int(won),
                              Decimal(str(pipeline or 0)), Decimal(str(won_amount or 0)))
            for entry, motion, channel, n, fit, sql, won, pipeline, won_amount in cohort]
    days = await session.execute(
        select(h.entry_motion, h.motion, h.days, func.sum(h.contacts))
        .where(*_days(h.day, start, end)).group_by(h.entry_motion, h.motion, h.days)
    )
    effort = await session.execute(
        select(e.motion, func.sum(e.forms), func.sum(e.touches)).where(*_days(e.day, start, end)).group_by(e.motion)
    )
    window = await session.execute(
        select(d.day, d.entry_motion, d.motion, d.channel, func.sum(d.sql))
        .where(*_days(d.day, *windows), d.sql != 0).group_by(d.day, d.entry_motion, d.motion, d.channel)
    )
    window_effort = await session.execute(
        select(e.day, e.motion, e.forms, e.touches).where(*_days(e.day, *windows))
    )
    return balance.Sums(
        cohort=rows,
        days_to_sql=[(entry, motion, int(days_), int(n)) for entry, motion, days_, n in days if n],
        effort={motion: (int(forms), int(touches)) for motion, forms, touches in effort},
        window=[(_date(day), entry, motion, channel or None, int(n)) for day, entry, motion, channel, n in window],
        window_effort=[(_date(day), motion, int(forms), int(touches)) for day, motion, forms, touches in window_effort],
    )


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
