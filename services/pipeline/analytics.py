"""The sources question, pure parts: the figures from rollup sums, concentration,
dependency warnings, the CSV table.

The sums come from the rollups (``pipeline_store/source_rollups.py``, read in ``repository.py``):
per key (motion, channel, campaign, form, sequence) the credited counts and amounts, and
per key and bucket the days from first touch to ``sql``. This module groups them, derives
rates, shares and medians, and judges and renders them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import add, itemgetter
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pipeline_store.source_rollups import METRICS as SUMS

METRICS = (
    "contacts", "leads", "mql", "sql", "opportunities", "won",
    "lead_to_mql", "mql_to_sql", "sql_to_opportunity", "opportunity_to_won",
    "qualified_opportunities", "pipeline_amount", "estimated_pipeline_amount", "won_amount",
    "median_days_to_qualify", "share", "amount_share",
)


@dataclass(frozen=True)
class Thresholds:
    """Share of qualified pipeline above which one source is a dependency (0–1)."""

    channel: float = 0.5
    campaign: float = 0.3
    motion: float = 0.8


def concentration_index(shares: Iterable[float]) -> float | None:
    """Herfindahl–Hirschman index over shares that sum to 1: 1/n for n equal sources, 1 for one.

    ``None`` when there is nothing to concentrate (no qualified pipeline).
    """
    values = [s for s in shares if s]
    if not values:
        return None
    return sum(s * s for s in values)


def percent(share: float) -> int:
    """A share as whole percent, rounded half up (0.705 is 71%, as a person rounds)."""
    return int((Decimal(str(share)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def dependencies(
    shares: dict[str, Sequence[tuple[str | None, float]]], thresholds: Thresholds, *, skip: Iterable[str] = ()
) -> list[tuple[str, str, float, str]]:
    """Every source carrying more than its dimension's threshold: (dimension, name, share,
    plain-language warning).

    ``shares`` maps ``channel``/``campaign``/``motion`` to (name, share) pairs; unattributed
    sources (name ``None``) are never a dependency. Biggest first within a dimension.
    """
    skipped = set(skip)
    out = []
    for dimension in ("channel", "campaign", "motion"):
        if dimension in skipped:
            continue
        limit = getattr(thresholds, dimension)
        for name, share in sorted(shares.get(dimension, ()), key=lambda p: (-p[1], p[0] or "")):
            if name is None or share <= limit:
                continue
            pct = percent(share)
            if dimension == "channel":
                sentence = f"{pct}% of qualified pipeline comes from {name}"
            elif dimension == "campaign":
                sentence = f"{pct}% of qualified pipeline comes from the {name} campaign"
            else:
                sentence = f"{pct}% of qualified pipeline comes from the {name} motion"
            out.append((dimension, name, share, sentence))
    return out


def dependency_warnings(
    shares: dict[str, Sequence[tuple[str | None, float]]], thresholds: Thresholds, *, skip: Iterable[str] = ()
) -> list[str]:
    """The warnings of ``dependencies``, in its order."""
    return [sentence for *_, sentence in dependencies(shares, thresholds, skip=skip)]


GROUP_KEYS = {"motion": (), "channel": ("channel",), "campaign": ("campaign",), "form": ("form_id",),
              "sequence": ("sequence",)}
KEY_NAMES = ("motion", "channel", "campaign", "form_id", "sequence")
_EPS = 1e-9
_COUNTS = ("contacts", "leads", "mql", "sql", "opportunities", "won", "qualified_opportunities")
_RATES = (("lead_to_mql", "mql", "leads"), ("mql_to_sql", "sql", "mql"),
          ("sql_to_opportunity", "opportunities", "sql"), ("opportunity_to_won", "won", "opportunities"))


def credited(value: float) -> int | float:
    """A credited count as answered: whole numbers as integers (every count under ``first``
    and ``last``), fractions to 4 decimals."""
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


def _rate(numerator: float, denominator: float) -> float | None:
    return None if abs(denominator) < _EPS else round(numerator / denominator, 4)


def weighted_median(cells: Sequence[tuple[int, float, float]]) -> float | None:
    """The median of a histogram of (bucket, weight, weighted sum of days): the mean of the
    lower and upper medians by weight, each bucket standing for its mean. With weights of 1
    it is the middle value, or the mean of the two middle values."""
    merged: dict[int, list[float]] = {}
    for bucket, weight, days in cells:  # a bucket's cells from several periods as one
        cell = merged.setdefault(bucket, [0.0, 0.0])
        cell[0] += weight
        cell[1] += days
    cells = sorted((b, w, d) for b, (w, d) in merged.items() if w > _EPS)
    total = sum(w for _, w, _ in cells)
    if total <= _EPS:
        return None
    half, seen = total / 2, 0.0
    lower = upper = None
    for _, weight, days in cells:
        seen += weight
        if lower is None and seen >= half - _EPS:
            lower = days / weight
        if seen > half + _EPS:
            upper = days / weight
            break
    if upper is None:
        upper = lower
    return (lower + upper) / 2  # type: ignore[operator]


@dataclass
class _Group:
    sums: list[float]
    days: list[tuple[int, float, float]]


def _figures(sums: Sequence[float], days: Sequence[tuple[int, float, float]]) -> dict[str, Any]:
    values = dict(zip(SUMS, sums))
    out: dict[str, Any] = {name: credited(values[name]) for name in _COUNTS[:6]}
    for name, numerator, denominator in _RATES:
        out[name] = _rate(values[numerator], values[denominator])
    out["qualified_opportunities"] = credited(values["qualified_opportunities"])
    out["pipeline_amount"] = round(values["pipeline_amount"], 2) if values["pipeline_amounts"] > _EPS else None
    # the part of it scoring.yaml's expected amounts stand for: 0 when amounts are set and none is estimated
    out["estimated_pipeline_amount"] = (
        round(values["estimated_pipeline_amount"], 2) if values["estimated_pipeline_amounts"] > _EPS
        else 0.0 if out["pipeline_amount"] is not None else None)
    out["won_amount"] = round(values["won_amount"], 2) if values["won_amounts"] > _EPS else None
    return out


def _median(days: Sequence[tuple[int, float, float]]) -> float | None:
    median = weighted_median(days)
    return None if median is None else round(median, 2)


def _grouped(sums: dict[tuple, list[float]], days: dict[tuple, list[tuple[int, float, float]]],
             columns: Sequence[int]) -> dict[tuple, _Group]:
    pick = itemgetter(*columns) if columns else (lambda _key: ())
    totals: dict[Any, list[float]] = {}
    for key, values in sums.items():
        name = pick(key)
        found = totals.get(name)
        totals[name] = list(values) if found is None else list(map(add, found, values))
    groups = {name if isinstance(name, tuple) else (name,): _Group(values, []) for name, values in totals.items()}
    for key, cells in days.items():
        name = pick(key)
        group = groups.get(name if isinstance(name, tuple) else (name,))
        if group is not None:
            group.days.extend(cells)
    return groups


def _shares(sums: dict[tuple, list[float]], column: int) -> list[tuple[str | None, float]]:
    """Each name's share of the qualified opportunities (``METRICS`` index 6)."""
    counts: dict[str | None, float] = {}
    for key, values in sums.items():
        counts[key[column]] = counts.get(key[column], 0.0) + values[6]
    n = sum(counts.values())
    return [(name, count / n) for name, count in counts.items() if count > _EPS] if n > _EPS else []


def sources_figures(sums: dict[tuple, list[float]], days: dict[tuple, list[tuple[int, float, float]]],
                    group_by: str, thresholds: Thresholds, *, skip_motion: bool
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], float | None, list[str]]:
    """Rows, totals, concentration index and warnings from the summed rollups: ``sums`` maps
    a key (motion, channel, campaign, form_id, sequence; ``None`` for none) to ``METRICS``
    of ``pipeline_store.source_rollups``, ``days`` the same key to (bucket, weight, days) cells."""
    names = ("motion", *GROUP_KEYS[group_by])
    columns = [KEY_NAMES.index(n) for n in names]
    groups = {k: g for k, g in _grouped(sums, days, columns).items() if round(g.sums[0], 4) != 0}
    total_n = sum(g.sums[6] for g in groups.values())
    total_amount = sum(g.sums[7] for g in groups.values() if g.sums[8] > _EPS)
    any_amount = any(g.sums[8] > _EPS for g in groups.values())
    rows = []
    for key, group in groups.items():
        row = dict(zip(["motion"] if group_by == "motion" else ["motion", group_by], key))
        row.update(_figures(group.sums, group.days))
        row["share"] = _rate(group.sums[6], total_n)
        row["amount_share"] = _rate(group.sums[7], total_amount) if group.sums[8] > _EPS else None
        row["median_days_to_qualify"] = _median(group.days)
        rows.append((key, row))
    rows.sort(key=lambda kr: (-kr[1]["qualified_opportunities"], -kr[1]["contacts"],
                              *((k is None, k or "") for k in kr[0])))
    everything = _grouped(sums, days, []).get((), _Group([0.0] * len(SUMS), []))
    totals = _figures(everything.sums, everything.days)
    totals["share"] = _rate(total_n, total_n)
    totals["amount_share"] = _rate(total_amount, total_amount) if any_amount else None
    totals["median_days_to_qualify"] = _median(everything.days)
    shares = {dimension: _shares(sums, KEY_NAMES.index(dimension)) for dimension in ("channel", "campaign", "motion")}
    hhi = concentration_index(share for _, share in shares["channel"])
    warnings = dependency_warnings(shares, thresholds, skip=["motion"] if skip_motion else [])
    return [row for _, row in rows], totals, None if hhi is None else round(hhi, 4), warnings


def csv_name(report: dict[str, Any]) -> str:
    """The CSV file's name: ``sources-by-channel.csv``, the model added unless it is ``first``."""
    model = report["attribution"]
    return f"sources-by-{report['group_by']}{'' if model == 'first' else '-' + model}.csv"


def to_csv(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The rows as CSV: the group columns, then every metric; empty cell for none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    columns = [*keys, *METRICS]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    # Campaign names arrive from public UTM parameters: never let a spreadsheet run them.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
