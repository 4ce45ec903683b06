"""The dashboard's SVG chart helpers: pure functions from figures to accessible SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta, timezone

import pytest

from services.pipeline.charts import PALETTE, REST, REST_COLOUR, bar_chart, stacked_columns, top_series, weekly_series

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    # inline SVG in HTML has no namespace declaration; add it to parse as XML (proves well-formedness)
    return ET.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)


# ---- bar_chart -------------------------------------------------------------------------


def test_bar_chart_is_a_labelled_image_with_every_value_written_out():
    svg = bar_chart("share", "Share by channel", [("paid_search", 0.71), ("referral", 0.29)], percent=True)
    root = parse(svg)
    assert root.get("role") == "img" and root.get("aria-labelledby") == "share-t share-d"
    assert root.find(f"{SVG}title").text == "Share by channel"
    assert root.find(f"{SVG}desc").text == "paid_search: 71%; referral: 29%"
    bars = root.findall(f".//{SVG}rect")
    assert len(bars) == 2
    widths = [int(b.get("width")) for b in bars]
    assert widths[0] > widths[1] > 0  # the biggest value has the longest bar
    assert "71%" in svg and "29%" in svg


@pytest.mark.parametrize(("value", "percent", "shown"), [
    (0.5, True, "50%"), (0.004, True, "0%"), (1, True, "100%"),
    (1234, False, "1,234"), (2.5, False, "2.5"), (0, False, "0"),
])
def test_bar_values_are_formatted_for_people(value, percent, shown):
    svg = bar_chart("c", "t", [("a", value)], percent=percent)
    assert f">{shown}</text>" in svg


def test_long_and_hostile_labels_are_shortened_and_escaped():
    long_name = "q4-enterprise-abm-retargeting-" * 5
    hostile = '<script>alert("x")</script>&'
    svg = bar_chart("c", "Campaigns", [(long_name, 3), (hostile, 1)])
    root = parse(svg)  # escaping kept it well-formed
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "label"]
    assert labels[0].endswith("…") and len(labels[0]) == 24
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    # the full name stays available: in the description and in each bar's tooltip
    assert long_name in root.find(f"{SVG}desc").text
    assert any(t.text.startswith(long_name) for t in root.iter(f"{SVG}title"))


def test_a_zero_value_draws_no_bar_and_all_zero_does_not_divide_by_zero():
    root = parse(bar_chart("c", "t", [("a", 0), ("b", 0)]))
    assert [r.get("width") for r in root.iter(f"{SVG}rect")] == ["0", "0"]


def test_no_rows_is_a_sentence_not_an_empty_chart():
    out = bar_chart("c", "Share by campaign", [])
    assert "<svg" not in out and "No data" in out and "Share by campaign" in out


# ---- weekly_series and top_series ------------------------------------------------------


def test_weeks_start_on_monday_and_empty_weeks_are_filled():
    weeks, series = weekly_series([(at("2026-11-02"), "inbound"), (at("2026-11-22", 23), "outbound"),
                                   (at("2026-11-17"), "inbound")])
    assert weeks == [date(2026, 11, 2), date(2026, 11, 9), date(2026, 11, 16)]
    assert all(w.weekday() == 0 for w in weeks)
    assert series == {"inbound": [1, 0, 1], "outbound": [0, 0, 1]}


def test_series_are_ordered_biggest_first_and_unnamed_points_are_unattributed():
    points = [(at("2026-11-03"), "referral")] + [(at("2026-11-04"), "paid_search")] * 3 + [(at("2026-11-04"), "")]
    weeks, series = weekly_series(points)
    assert list(series) == ["paid_search", "referral", "unattributed"]
    assert series["unattributed"] == [1]
    assert sum(map(sum, series.values())) == len(points)


def test_no_points_no_weeks():
    assert weekly_series([]) == ([], {})


def test_top_series_folds_the_tail_into_one_so_no_two_share_a_colour():
    series = {f"channel{i}": [i, 1] for i in range(12)}
    top = top_series(series)
    assert len(top) == len(PALETTE)
    assert list(top)[:3] == ["channel11", "channel10", "channel9"] and REST in top
    assert top[REST] == [sum(range(12 - len(PALETTE) + 1)), 12 - len(PALETTE) + 1]
    assert [sum(col) for col in zip(*top.values())] == [sum(col) for col in zip(*series.values())]  # nothing lost


def test_top_series_keeps_few_series_untouched():
    series = {"inbound": [1], "outbound": [2], "blended": [0]}
    assert top_series(series) == series


# ---- stacked_columns -------------------------------------------------------------------


def test_stacked_columns_describe_every_week_and_draw_one_legend_entry_per_series():
    weeks = [date(2026, 11, 2) + timedelta(weeks=n) for n in range(3)]
    series = {"inbound": [2, 0, 1], "outbound": [1, 0, 3]}
    root = parse(stacked_columns("m", "Qualified per week", weeks, series))
    assert root.get("role") == "img" and root.find(f"{SVG}title").text == "Qualified per week"
    desc = root.find(f"{SVG}desc").text
    assert desc == "week of 2026-11-02: inbound 2, outbound 1; week of 2026-11-16: inbound 1, outbound 3"
    legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend"]
    assert legend == ["inbound", "outbound"]
    columns = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(columns) == 4  # a rectangle per non-zero value, each with its own tooltip
    # the tallest stack (week 3: 4) reaches the top of the plot; heights are proportional
    heights = {r.find(f"{SVG}title").text: int(r.get("height")) for r in columns}
    assert abs(heights["outbound, week of 2026-11-16: 3"] - 3 * heights["outbound, week of 2026-11-02: 1"]) <= 3


def test_the_folded_series_is_grey_and_names_are_escaped():
    weeks = [date(2026, 11, 2)]
    svg = stacked_columns("c", "t", weeks, {"<b>bold</b>": [2], REST: [1]})
    parse(svg)
    assert "<b>" not in svg and f'fill="{REST_COLOUR}"' in svg


def test_no_weeks_is_a_sentence():
    out = stacked_columns("c", "Qualified per week", [], {})
    assert "<svg" not in out and "No qualified pipeline" in out
