"""The sources question, pure parts: concentration, dependency warnings, the CSV table.

The figures themselves (counts, rates, amounts, medians, shares) come from SQL in
``repository.py``; this module only judges and renders them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

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
