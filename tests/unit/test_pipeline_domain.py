"""Pure parts of the pipeline service: cursors, transition rules, concentration and warnings, CSV."""

from __future__ import annotations

import base64
import csv
import io
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.pipeline.analytics import (
    METRICS,
    Thresholds,
    concentration_index,
    dependency_warnings,
    percent,
    to_csv,
)
from services.pipeline.cursor import BadCursor, decode_cursor, encode_cursor
from services.pipeline.transitions import allowed_transitions, is_allowed, missing_fields
from shared.events import STAGES

# ---- cursors -----------------------------------------------------------------------------

AT = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


@given(
    at=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)),
    row_id=st.text(min_size=1, max_size=40),
    order=st.sampled_from(["asc", "desc"]),
)
def test_cursor_round_trips(at, row_id, order):
    cursor = encode_cursor("opportunities", order, at, row_id)
    assert set(cursor) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )  # url-safe, no padding
    position = decode_cursor(cursor, "opportunities", order)
    assert (position.at, position.id) == (at, row_id)


def test_cursor_keeps_microseconds_and_treats_naive_times_as_utc():
    naive = AT.replace(tzinfo=None)
    assert decode_cursor(encode_cursor("contacts", "desc", naive, "c1"), "contacts", "desc").at == AT
    other_zone = AT.astimezone(timezone(timedelta(hours=-5)))
    assert decode_cursor(encode_cursor("contacts", "desc", other_zone, "c1"), "contacts", "desc").at == AT


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("cursor", [
    "", "!!!", "not-a-cursor", _b64(b"[]"), _b64(b'{"x": 1}'), _b64(b'["opportunities", "desc", "yesterday", "o1"]'),
    _b64(b'["opportunities", "desc", "2025-01-01T00:00:00+00:00", ""]'),
    _b64(b'["opportunities", "desc", "2025-01-01T00:00:00+00:00", 5]'),
    _b64(b'["contacts", "desc", "2025-01-01T00:00:00+00:00", "c1"]'),
    _b64(b'["opportunities", "asc", "2025-01-01T00:00:00+00:00", "o1"]'),
    encode_cursor("opportunities", "desc", AT, "o1")[:-2],
])
def test_bad_cursors_are_refused(cursor):
    with pytest.raises(BadCursor):
        decode_cursor(cursor, "opportunities", "desc")


# ---- transitions --------------------------------------------------------------------------

EXPECTED = {
    "sql": {"opportunity", "lost", "disqualified", "nurture"},
    "opportunity": {"customer", "lost", "disqualified", "nurture"},
}


@pytest.mark.parametrize("current", STAGES)
@pytest.mark.parametrize("to", ["opportunity", "customer", "lost", "disqualified", "nurture"])
def test_transition_table(current, to):
    legal = to in EXPECTED.get(current, set())
    assert is_allowed(current, to) is legal
    assert set(allowed_transitions(current)) == EXPECTED.get(current, set())


@pytest.mark.parametrize("to,reason,amount,missing", [
    ("opportunity", None, None, []),
    ("customer", None, None, ["amount"]),
    ("customer", None, Decimal("10"), []),
    ("lost", None, None, ["reason"]),
    ("lost", "  ", None, ["reason"]),
    ("disqualified", "spam", None, []),
    ("nurture", None, Decimal("5"), ["reason"]),
])
def test_what_each_move_requires(to, reason, amount, missing):
    assert [e["field"] for e in missing_fields(to, reason, amount)] == missing


# ---- concentration and warnings -------------------------------------------------------------


@pytest.mark.parametrize("shares,expected", [
    ([], None),
    ([1.0], 1.0),
    ([0.5, 0.5], 0.5),
    ([0.25] * 4, 0.25),
    ([0.5, 1 / 6, 1 / 6, 1 / 6], 1 / 4 + 3 / 36),
    ([0.75, 0.25], 0.625),
    ([0.0, 1.0], 1.0),
])
def test_concentration_index(shares, expected):
    assert concentration_index(shares) == (None if expected is None else pytest.approx(expected))


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=30))
def test_concentration_index_is_between_1_over_n_and_1(counts):
    total = sum(counts)
    hhi = concentration_index(c / total for c in counts)
    assert 1 / len(counts) - 1e-9 <= hhi <= 1 + 1e-9


@pytest.mark.parametrize("share,pct", [(0.714, 71), (0.705, 71), (0.5, 50), (0.3333, 33), (1.0, 100), (0.005, 1)])
def test_percent_rounds_half_up(share, pct):
    assert percent(share) == pct


def test_warnings_name_each_dependency_in_plain_language():
    shares = {
        "channel": [("organic_search", 0.29), ("paid_search", 0.71)],
        "campaign": [(None, 0.6), ("brand", 0.35), ("spring", 0.05)],
        "motion": [("inbound", 0.85), ("outbound", 0.15)],
    }
    assert dependency_warnings(shares, Thresholds()) == [
        "71% of qualified pipeline comes from paid_search",
        "35% of qualified pipeline comes from the brand campaign",
        "85% of qualified pipeline comes from the inbound motion",
    ]


def test_warnings_need_more_than_the_threshold_and_respect_skips():
    shares = {"channel": [("paid_search", 0.5)], "campaign": [("brand", 0.3)], "motion": [("inbound", 0.8)]}
    assert dependency_warnings(shares, Thresholds()) == []
    lower = Thresholds(channel=0.49, campaign=0.29, motion=0.79)
    assert len(dependency_warnings(shares, lower)) == 3
    assert dependency_warnings(shares, lower, skip=["motion"]) == [
        "50% of qualified pipeline comes from paid_search", "30% of qualified pipeline comes from the brand campaign"]
    assert dependency_warnings({}, Thresholds()) == []


def test_csv_has_group_columns_then_metrics_and_defuses_formulas():
    rows = [{"motion": "inbound", "campaign": "=HYPERLINK(\"http://evil\")", "contacts": 3, "share": 0.5,
             "opportunity_to_won": None}]
    table = list(csv.reader(io.StringIO(to_csv(rows, ["motion", "campaign"]))))
    assert table[0] == ["motion", "campaign", *METRICS]
    row = dict(zip(table[0], table[1]))
    assert row["campaign"].startswith("'=")
    assert (row["contacts"], row["share"], row["opportunity_to_won"]) == ("3", "0.5", "")


@pytest.mark.parametrize(("first", "last", "expected"), [
    (None, None, [("m", None, None)]),
    (date(2026, 3, 1), date(2026, 4, 30), [("m", date(2026, 3, 1), date(2026, 4, 1))]),
    (date(2026, 3, 15), date(2026, 4, 30), [("m", date(2026, 4, 1), date(2026, 4, 1)),
                                            ("d", date(2026, 3, 15), date(2026, 3, 31))]),
    (date(2026, 3, 15), date(2026, 5, 2), [("m", date(2026, 4, 1), date(2026, 4, 1)),
                                           ("d", date(2026, 3, 15), date(2026, 3, 31)),
                                           ("d", date(2026, 5, 1), date(2026, 5, 2))]),
    (date(2026, 3, 3), date(2026, 3, 4), [("d", date(2026, 3, 3), date(2026, 3, 4))]),
    (date(2026, 3, 2), date(2026, 4, 29), [("d", date(2026, 3, 2), date(2026, 4, 29))]),
    (None, date(2026, 2, 27), [("m", None, date(2026, 1, 1)), ("d", date(2026, 2, 1), date(2026, 2, 27))]),
    (date(2025, 12, 31), None, [("m", date(2026, 1, 1), None), ("d", date(2025, 12, 31), date(2025, 12, 31))]),
    (date(2024, 2, 1), date(2024, 2, 29), [("m", date(2024, 2, 1), date(2024, 2, 1))]),  # a leap February
    # the calendar's ends: no month after December 9999 nor before January of year 1
    (date(9999, 12, 15), None, [("d", date(9999, 12, 15), None)]),
    (date(9999, 12, 1), date.max, [("m", date(9999, 12, 1), date(9999, 12, 1))]),
    (None, date(1, 1, 15), [("d", None, date(1, 1, 15))]),
    (None, date(9999, 12, 14), [("m", None, date(9999, 11, 1)), ("d", date(9999, 12, 1), date(9999, 12, 14))]),
])
def test_a_range_reads_whole_months_from_month_rows_and_its_ends_from_day_rows(first, last, expected):
    from services.pipeline.repository import _periods

    assert _periods(first, last) == expected
