"""Charts as server-rendered, accessible SVG (no JavaScript, nothing loaded from elsewhere)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from html import escape

PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d"]
REST = "all others"
REST_COLOUR = "#94a3b8"


def bar_chart(chart_id: str, title: str, rows: list[tuple[str, float]], *, percent: bool = False,
              width: int = 560, bar: int = 22) -> str:
    """Horizontal bars with their values written out; labels wrap in the table beside it, not here."""
    if not rows:
        return f'<p class="empty">No data for “{escape(title)}” in this range.</p>'
    top = max(v for _, v in rows) or 1
    label_w, value_w = 170, 70
    plot = width - label_w - value_w
    height = len(rows) * (bar + 8) + 8
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'preserveAspectRatio="xMinYMin meet" class="chart">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">' + escape("; ".join(f"{k}: {_fmt(v, percent)}" for k, v in rows)) + "</desc>",
    ]
    for i, (label, value) in enumerate(rows):
        y = 8 + i * (bar + 8)
        w = max(1, int(plot * value / top)) if value else 0
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<g><title>{escape(label)}: {_fmt(value, percent)}</title>'
            f'<text x="0" y="{y + bar * 0.7}" class="label">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar}" fill="{PALETTE[i % len(PALETTE)]}" rx="3"/>'
            f'<text x="{label_w + w + 6}" y="{y + bar * 0.7}" class="value">{_fmt(value, percent)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def week_of(moment: date) -> date:
    """The Monday of ``moment``'s week (a datetime's own calendar day)."""
    day = moment.date() if isinstance(moment, datetime) else moment
    return day - timedelta(days=day.weekday())


Point = tuple[date, str] | tuple[date, str, int]  # a moment and a name; or a day, a name and a count


def weekly_series(points: Iterable[Point]) -> tuple[list[date], dict[str, list[int]]]:
    """Counts per week (Monday) and series name, with empty weeks filled in. A point is a
    moment and a name, counting one, or a day, a name and how many it counts."""
    counted = [(week_of(p[0]), p[1] or "unattributed", p[2] if len(p) > 2 else 1) for p in points]
    if not counted:
        return [], {}
    first, last = min(p[0] for p in counted), max(p[0] for p in counted)
    weeks = [first + timedelta(weeks=n) for n in range((last - first).days // 7 + 1)]
    index = {w: i for i, w in enumerate(weeks)}
    series: dict[str, list[int]] = {}
    for week, name, count in counted:
        series.setdefault(name, [0] * len(weeks))[index[week]] += count
    return weeks, dict(sorted(series.items(), key=lambda kv: -sum(kv[1])))


def top_series(series: dict[str, list[int]], keep: int = len(PALETTE) - 1) -> dict[str, list[int]]:
    """The ``keep`` biggest series, the rest summed into one (so no two series share a colour)."""
    if len(series) <= keep + 1:
        return series
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    kept = dict(ranked[:keep])
    rest = [sum(column) for column in zip(*(values for _, values in ranked[keep:]))]
    return kept | {REST: rest}


def stacked_columns(chart_id: str, title: str, weeks: list[date], series: dict[str, list[int]],
                    *, width: int = 640, height: int = 220) -> str:
    """Weekly stacked columns with a legend; every value is in the description for screen readers."""
    if not weeks:
        return f'<p class="empty">No qualified pipeline for “{escape(title)}” in this range.</p>'
    totals = [sum(s[i] for s in series.values()) for i in range(len(weeks))]
    top = max(totals) or 1
    plot_h, left, bottom = height - 40, 30, 24
    col = max(2, (width - left) // len(weeks) - 2)
    desc = "; ".join(f"week of {w.isoformat()}: " + ", ".join(f"{n} {s[i]}" for n, s in series.items() if s[i])
                     for i, w in enumerate(weeks) if totals[i])
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {width} {height + 20 * ((len(series) + 3) // 4)}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" class="chart">',
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>',
        f'<text x="0" y="12" class="axis">{top}</text><text x="0" y="{plot_h}" class="axis">0</text>',
    ]
    colours = {name: REST_COLOUR if name == REST else PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    for i, _ in enumerate(weeks):
        x = left + i * (col + 2)
        y = plot_h
        for name, values in series.items():
            h = int((plot_h - 10) * values[i] / top)
            if h:
                y -= h
                parts.append(f'<rect x="{x}" y="{y}" width="{col}" height="{h}" fill="{colours[name]}">'
                             f'<title>{escape(name)}, week of {weeks[i].isoformat()}: {values[i]}</title></rect>')
    parts.append(f'<text x="{left}" y="{plot_h + bottom - 8}" class="axis">{weeks[0].isoformat()}</text>')
    parts.append(
        f'<text x="{width}" y="{plot_h + bottom - 8}" class="axis" text-anchor="end">{weeks[-1].isoformat()}</text>'
    )
    for i, name in enumerate(series):
        lx, ly = (i % 4) * (width // 4), height + 4 + 20 * (i // 4)
        parts.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colours[name]}"/>'
                     f'<text x="{lx + 16}" y="{ly + 11}" class="legend">{escape(name[:22])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.0f}%"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
