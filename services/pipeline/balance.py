"""Motion balance, pure parts: the figures per motion from the rollups' sums, and the diagnoses.

Which motion does the business need more of right now? Inbound brings volume with little
control over who enters; outbound gives control at the cost of effort. The repository sums
the rollups (``pipeline_store/rollups.py``) over the range and the two trend windows; this
module turns those sums into the answer and judges it. No I/O.

Motions are the way a contact entered (its first touch's motion): every contact is
``inbound`` or ``outbound`` there, so their shares add up to the whole. ``blended``, shown
apart, is the part of both that the other motion also touched before qualification (the
contact's motion is ``blended``): the *assisted* opportunities.

Each figure a diagnosis rests on is the rounded one the answer shows (shares to 4 places),
so a rule at its threshold fires as a reader of the answer would expect. The rules:

- ``weak_control``: inbound's share of qualified pipeline ≥ ``majority`` while outbound's
  fit share exceeds inbound's by ``fit_gap`` or more.
- ``weak_inbound_interest``: outbound's share ≥ ``majority`` at an effort per opportunity
  ≥ ``effort_high`` touches, or rising (last 28 days ≥ the 28 days before × (1 + ``effort_rise``)).
- ``motion_dependency``, ``channel_dependency``: the sources answer's dependency warnings
  (``analytics.dependencies``) over the same cohort.
- ``share_shift``: a motion's (the one that gained) or a channel's share of qualified
  pipeline moved by more than ``shift`` between the 28 days before and the last 28 days.
- ``working_together``: the assisted share of qualified opportunities ≥ ``assisted``.

All but the dependency warnings need ``min_opportunities`` qualified opportunities (in each
window for ``share_shift``) before they judge.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.pipeline.analytics import Thresholds, dependencies, percent

MOTIONS = ("inbound", "outbound")
WINDOW_DAYS = 28
EFFORT_KINDS = {"inbound": "form_submissions", "outbound": "touches"}
COLUMNS = (
    "motion", "entrants", "fit_ab", "fit_share", "qualified_opportunities", "share", "pipeline_amount",
    "amount_share", "won", "won_amount", "entrant_to_sql", "sql_to_customer", "median_days_to_sql",
    "effort_kind", "effort", "effort_per_sql", "effort_per_sql_recent", "effort_per_sql_prior",
    "recent_share", "prior_share", "share_change_pp", "assisted", "assisted_share",
)


@dataclass(frozen=True)
class BalanceThresholds:
    """The diagnoses' thresholds (settings ``LEADSTREAM_BALANCE_*``, docs/operations.md)."""

    majority: float = 0.6  # share of qualified pipeline that makes a motion the main supplier
    fit_gap: float = 0.2  # outbound's fit share above inbound's (0–1) that makes control weak
    effort_high: float = 20.0  # outbound touches per qualified opportunity
    effort_rise: float = 0.25  # effort per opportunity up by this fraction between the windows
    shift: float = 0.15  # share of qualified pipeline moved between the windows (0–1)
    assisted: float = 0.3  # share of opportunities touched by both motions before qualification
    min_opportunities: int = 10  # qualified opportunities needed before judging


@dataclass(frozen=True)
class Diagnosis:
    rule: str
    sentence: str
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "sentence": self.sentence, "figures": self.figures}


# ---- the sums the repository hands in --------------------------------------------------


@dataclass(frozen=True)
class CohortSum:
    """The rollups of one (entry motion, motion, first-touch channel) summed over days."""

    entry_motion: str
    motion: str
    channel: str | None
    entrants: int = 0
    fit_ab: int = 0
    sql: int = 0
    won: int = 0
    pipeline_amount: Decimal = Decimal(0)
    won_amount: Decimal = Decimal(0)


@dataclass(frozen=True)
class Sums:
    """Everything the answer is made of, summed by the repository from the rollups.

    ``cohort``: over the range; ``days_to_sql``: (entry motion, motion, whole days, contacts)
    over the range; ``effort``: motion → (forms, touches) over the range; ``window``: (day,
    entry motion, motion, channel, sql) over the two trend windows; ``window_effort``:
    (day, motion, forms, touches) over them."""

    cohort: Sequence[CohortSum] = ()
    days_to_sql: Sequence[tuple[str, str, int, int]] = ()
    effort: dict[str, tuple[int, int]] = field(default_factory=dict)
    window: Sequence[tuple[date, str, str, str | None, int]] = ()
    window_effort: Sequence[tuple[date, str, int, int]] = ()


def _day_at(ordinal: int) -> date:
    """The day of a proleptic ordinal, saturated at the calendar's first day: the windows of a
    range ending in January of year 1 begin before it (as the sources answer's ranges saturate)."""
    return date.fromordinal(max(ordinal, 1))


@dataclass(frozen=True)
class Windows:
    """The last ``WINDOW_DAYS`` days of the range (ending on ``end``) and the ones before."""

    end: date

    @property
    def _last(self) -> int:
        return self.end.toordinal()

    @property
    def recent(self) -> tuple[date, date]:
        return _day_at(self._last - WINDOW_DAYS + 1), self.end

    @property
    def prior(self) -> tuple[date, date]:
        return _day_at(self._last - 2 * WINDOW_DAYS + 1), _day_at(self._last - WINDOW_DAYS)

    def which(self, day: date) -> str | None:
        behind = self._last - day.toordinal()
        if 0 <= behind < WINDOW_DAYS:
            return "recent"
        if WINDOW_DAYS <= behind < 2 * WINDOW_DAYS:
            return "prior"
        return None

    def week(self, day: date) -> int:
        """0–7: the week of the two windows ``day`` falls in, oldest first."""
        return (day.toordinal() - (self._last - 2 * WINDOW_DAYS + 1)) // 7

    def week_days(self, week: int) -> tuple[date, date]:
        """The first and last day of ``week`` (0–7), saturated at the calendar's first day."""
        first = self._last - 2 * WINDOW_DAYS + 1 + 7 * week
        return _day_at(first), _day_at(first + 6)


# ---- the figures -----------------------------------------------------------------------


def _ratio(numerator: float | Decimal | None, denominator: float | Decimal | None, places: int = 4) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(float(numerator) / float(denominator), places)


def _median(histogram: dict[int, int]) -> float | None:
    """The median of a histogram of whole days (the mean of the two middle ones when even)."""
    n = sum(histogram.values())
    if n == 0:
        return None
    wanted = {(n - 1) // 2, n // 2}
    found, seen = [], 0
    for days in sorted(histogram):
        count = histogram[days]
        found += [days] * len({w for w in wanted if seen <= w < seen + count})
        seen += count
    return float(statistics.fmean(found))


def _pp(recent: float | None, prior: float | None) -> float | None:
    return None if recent is None or prior is None else round((recent - prior) * 100, 1)


@dataclass
class _Tally:
    entrants: int = 0
    fit_ab: int = 0
    sql: int = 0
    won: int = 0
    pipeline_amount: Decimal = Decimal(0)
    won_amount: Decimal = Decimal(0)
    assisted: int = 0
    recent: int = 0
    prior: int = 0
    days: dict[int, int] = field(default_factory=dict)

    def add(self, row: CohortSum) -> None:
        self.entrants += row.entrants
        self.fit_ab += row.fit_ab
        self.sql += row.sql
        self.won += row.won
        self.pipeline_amount += Decimal(row.pipeline_amount or 0)
        self.won_amount += Decimal(row.won_amount or 0)
        if row.motion == "blended":
            self.assisted += row.sql


def answer(sums: Sums, windows: Windows) -> dict[str, Any]:
    """The figures per motion (rows ``inbound``, ``outbound``, ``blended``), the trend and
    the shares the diagnoses read, from the rollups' sums."""
    tallies = {m: _Tally() for m in (*MOTIONS, "blended")}
    by_motion: dict[str, int] = {}
    by_channel: dict[str | None, int] = {}
    for row in sums.cohort:
        entry = row.entry_motion if row.entry_motion in MOTIONS else "inbound"
        tallies[entry].add(row)
        if row.motion == "blended":
            tallies["blended"].add(row)
        by_motion[row.motion] = by_motion.get(row.motion, 0) + row.sql
        by_channel[row.channel] = by_channel.get(row.channel, 0) + row.sql
    for entry, motion, days, contacts in sums.days_to_sql:
        for name in {entry if entry in MOTIONS else "inbound", *(["blended"] if motion == "blended" else [])}:
            histogram = tallies[name].days
            histogram[days] = histogram.get(days, 0) + contacts
    weeks = [{m: 0 for m in tallies} for _ in range(2 * WINDOW_DAYS // 7)]
    channel_windows: dict[str | None, dict[str, int]] = {}
    for day, entry, motion, channel, sql in sums.window:
        which = windows.which(day)
        if which is None or not sql:
            continue
        names = [entry if entry in MOTIONS else "inbound"] + (["blended"] if motion == "blended" else [])
        for name in names:
            setattr(tallies[name], which, getattr(tallies[name], which) + sql)
            weeks[windows.week(day)][name] += sql
        slot = channel_windows.setdefault(channel, {"recent": 0, "prior": 0})
        slot[which] += sql
    window_effort = {(m, w): [0, 0] for m in MOTIONS for w in ("recent", "prior")}
    for day, motion, forms, touches in sums.window_effort:
        which = windows.which(day)
        if which is not None and motion in MOTIONS:
            window_effort[(motion, which)][0] += forms
            window_effort[(motion, which)][1] += touches

    total = sum(tallies[m].sql for m in MOTIONS)
    total_amount = sum(tallies[m].pipeline_amount for m in MOTIONS)
    total_recent = sum(tallies[m].recent for m in MOTIONS)
    total_prior = sum(tallies[m].prior for m in MOTIONS)
    rows = []
    for name, t in tallies.items():
        kind = EFFORT_KINDS.get(name)
        index = 0 if kind == "form_submissions" else 1
        effort = sums.effort.get(name, (0, 0))[index] if kind else None
        recent_share, prior_share = _ratio(t.recent, total_recent), _ratio(t.prior, total_prior)
        rows.append({
            "motion": name,
            "entrants": t.entrants,
            "fit_ab": t.fit_ab,
            "fit_share": _ratio(t.fit_ab, t.entrants),
            "qualified_opportunities": t.sql,
            "share": _ratio(t.sql, total),
            "pipeline_amount": float(t.pipeline_amount),
            "amount_share": _ratio(t.pipeline_amount, total_amount),
            "won": t.won,
            "won_amount": float(t.won_amount),
            "entrant_to_sql": _ratio(t.sql, t.entrants),
            "sql_to_customer": _ratio(t.won, t.sql),
            "median_days_to_sql": _median(t.days),
            "effort_kind": kind,
            "effort": effort,
            "effort_per_sql": _ratio(effort, t.sql, 2) if kind else None,
            "effort_per_sql_recent": _ratio(window_effort[(name, "recent")][index], t.recent, 2) if kind else None,
            "effort_per_sql_prior": _ratio(window_effort[(name, "prior")][index], t.prior, 2) if kind else None,
            "recent_share": recent_share,
            "prior_share": prior_share,
            "share_change_pp": _pp(recent_share, prior_share),
            "assisted": t.assisted if kind else None,
            "assisted_share": _ratio(t.assisted, t.sql) if kind else None,
        })
    week_rows = []
    for i, counts in enumerate(weeks):
        start, last = windows.week_days(i)
        week_total = counts["inbound"] + counts["outbound"]
        week_rows.append({"from": start.isoformat(), "to": last.isoformat(),
                          "qualified_opportunities": week_total, "counts": dict(counts),
                          **{m: _ratio(counts[m], week_total) for m in counts}})
    channels = [{"channel": c, "recent_share": _ratio(v["recent"], total_recent),
                 "prior_share": _ratio(v["prior"], total_prior)} for c, v in channel_windows.items()]
    return {
        "rows": rows,
        "totals": {"entrants": sum(tallies[m].entrants for m in MOTIONS), "qualified_opportunities": total,
                   "assisted": tallies["blended"].sql, "assisted_share": _ratio(tallies["blended"].sql, total)},
        "trend": {
            "days": WINDOW_DAYS,
            "recent": {"from": windows.recent[0].isoformat(), "to": windows.recent[1].isoformat(),
                       "qualified_opportunities": total_recent},
            "prior": {"from": windows.prior[0].isoformat(), "to": windows.prior[1].isoformat(),
                      "qualified_opportunities": total_prior},
            "weeks": week_rows,
            "channels": sorted(channels, key=lambda c: (c["channel"] is None, c["channel"] or "")),
        },
        "shares": {
            "motion": [(m, n / total) for m, n in sorted(by_motion.items()) if total and n],
            "channel": [(c, n / total) for c, n in sorted(by_channel.items(), key=lambda p: p[0] or "")
                        if total and n],
        },
    }


# ---- the diagnoses ---------------------------------------------------------------------


def _row(report: dict[str, Any], motion: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["motion"] == motion)


def _enough(report: dict[str, Any], t: BalanceThresholds) -> bool:
    return report["totals"]["qualified_opportunities"] >= t.min_opportunities


def _pct(share: float) -> str:
    return f"{percent(share)} %"


def weak_control(report: dict[str, Any], t: BalanceThresholds) -> Diagnosis | None:
    """Inbound supplies most of the pipeline while its entrants fit worse than outbound's."""
    inbound, outbound = _row(report, "inbound"), _row(report, "outbound")
    share, fit_in, fit_out = inbound["share"], inbound["fit_share"], outbound["fit_share"]
    if not _enough(report, t) or share is None or fit_in is None or fit_out is None:
        return None
    gap = round(fit_out - fit_in, 4)
    if share < t.majority or gap < t.fit_gap:
        return None
    return Diagnosis(
        "weak_control",
        f"{_pct(share)} of qualified pipeline is inbound, yet {_pct(fit_in)} of inbound entrants fit (A/B) "
        f"against {_pct(fit_out)} of outbound prospects: stronger prospecting would add control over who enters",
        {"inbound_share": share, "inbound_fit_share": fit_in, "outbound_fit_share": fit_out, "fit_gap": gap,
         "qualified_opportunities": report["totals"]["qualified_opportunities"],
         "thresholds": {"majority": t.majority, "fit_gap": t.fit_gap}},
    )


def weak_inbound_interest(report: dict[str, Any], t: BalanceThresholds) -> Diagnosis | None:
    """Outbound supplies most of the pipeline at a high or rising effort per opportunity."""
    inbound, outbound = _row(report, "inbound"), _row(report, "outbound")
    share, effort = outbound["share"], outbound["effort_per_sql"]
    recent, prior = outbound["effort_per_sql_recent"], outbound["effort_per_sql_prior"]
    if not _enough(report, t) or share is None or share < t.majority:
        return None
    high = effort is not None and effort >= t.effort_high
    rising = recent is not None and prior is not None and recent >= round(prior * (1 + t.effort_rise), 2)
    if not (high or rising):
        return None
    how = f"{effort:g} touches per opportunity" if effort is not None else "an effort per opportunity"
    if rising:
        how += f", rising from {prior:g} to {recent:g} over the last 28 days"
    return Diagnosis(
        "weak_inbound_interest",
        f"{_pct(share)} of qualified pipeline is outbound at {how}, while inbound brings "
        f"{_pct(inbound['share'] or 0)}: stronger lead generation would help",
        {"outbound_share": share, "inbound_share": inbound["share"], "effort_per_sql": effort,
         "effort_per_sql_recent": recent, "effort_per_sql_prior": prior, "high": high, "rising": rising,
         "thresholds": {"majority": t.majority, "effort_high": t.effort_high, "effort_rise": t.effort_rise}},
    )


def _dependency_diagnoses(report: dict[str, Any], dimension: str, limits: Thresholds) -> list[Diagnosis]:
    return [
        Diagnosis(f"{dimension}_dependency", sentence,
                  {dimension: name, "share": round(share, 4), "threshold": getattr(limits, dimension)})
        for _, name, share, sentence in dependencies({dimension: report["shares"][dimension]}, limits)
    ]


def motion_dependency(report: dict[str, Any], limits: Thresholds) -> list[Diagnosis]:
    """The sources answer's motion warnings over the same cohort. Their motion is the one
    that touched an opportunity before qualification (``blended`` apart), while this answer's
    rows count each opportunity under the motion it entered by: the sentence gives both
    shares when they differ, so it never seems to contradict the row beside it."""
    out = []
    for found in _dependency_diagnoses(report, "motion", limits):
        motion = found.figures["motion"]
        row = next((r for r in report["rows"] if r["motion"] == motion), None)
        entry = None if row is None or motion == "blended" else row["share"]
        if entry is not None and percent(entry) != percent(found.figures["share"]):
            other = "outbound" if motion == "inbound" else "inbound"
            found = Diagnosis(found.rule, f"{found.sentence} alone ({percent(entry)}% entered by it, counting "
                              f"those {other} also touched before qualification)",
                              {**found.figures, "entry_share": entry})
        out.append(found)
    return out


def channel_dependency(report: dict[str, Any], limits: Thresholds) -> list[Diagnosis]:
    """The sources answer's channel warnings (first-touch channel) over the same cohort."""
    return _dependency_diagnoses(report, "channel", limits)


def share_shift(report: dict[str, Any], t: BalanceThresholds) -> list[Diagnosis]:
    """A motion's or a channel's share of qualified pipeline moved by more than ``shift``."""
    trend = report["trend"]
    if min(trend["recent"]["qualified_opportunities"], trend["prior"]["qualified_opportunities"]) < t.min_opportunities:
        return []
    moved: list[tuple[str, str, float, float]] = []
    for motion in MOTIONS:  # their shares add up to 1: the one that gained says it
        row = _row(report, motion)
        recent, prior = row["recent_share"], row["prior_share"]
        if recent is not None and prior is not None and round(recent - prior, 4) > t.shift:
            moved.append(("motion", motion, prior, recent))
    for c in trend["channels"]:
        recent, prior = c["recent_share"] or 0.0, c["prior_share"] or 0.0
        if c["channel"] is not None and abs(round(recent - prior, 4)) > t.shift:
            moved.append(("channel", c["channel"], prior, recent))
    out = []
    for dimension, name, prior, recent in moved:
        change = round((recent - prior) * 100, 1)
        who = f"the {name} motion" if dimension == "motion" else name
        out.append(Diagnosis(
            "share_shift",
            f"{who}'s share of qualified pipeline moved from {_pct(prior)} to {_pct(recent)} "
            f"({change:+g} points) between the 28 days before and the last 28 days",
            {dimension: name, "prior_share": prior, "recent_share": recent, "change_pp": change,
             "thresholds": {"shift": t.shift}},
        ))
    return out


def working_together(report: dict[str, Any], t: BalanceThresholds) -> Diagnosis | None:
    """A large share of opportunities was touched by both motions before qualification."""
    share = report["totals"]["assisted_share"]
    if not _enough(report, t) or share is None or share < t.assisted:
        return None
    inbound, outbound = _row(report, "inbound"), _row(report, "outbound")
    per_motion = ", ".join(f"{m['motion']} {_pct(m['assisted_share'])}" for m in (inbound, outbound)
                           if m["assisted_share"] is not None)
    return Diagnosis(
        "working_together",
        f"{_pct(share)} of qualified opportunities were touched by both motions before qualification "
        f"(assisted: {per_motion}): keep both",
        {"assisted_share": share, "assisted": report["totals"]["assisted"],
         "inbound_assisted_share": inbound["assisted_share"], "outbound_assisted_share": outbound["assisted_share"],
         "thresholds": {"assisted": t.assisted}},
    )


RULES = ("weak_control", "weak_inbound_interest", "motion_dependency", "channel_dependency", "share_shift",
         "working_together")


def diagnose(report: dict[str, Any], t: BalanceThresholds, limits: Thresholds) -> list[Diagnosis]:
    """Every diagnosis that fires, in ``RULES`` order."""
    found: list[Diagnosis | None] = [weak_control(report, t), weak_inbound_interest(report, t)]
    found += motion_dependency(report, limits) + channel_dependency(report, limits)
    found += share_shift(report, t)
    found.append(working_together(report, t))
    return [d for d in found if d is not None]


# ---- CSV ---------------------------------------------------------------------------------


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """One row per motion, every figure a column (as the sources CSV)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return buffer.getvalue()
