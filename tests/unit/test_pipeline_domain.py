"""Pure parts of the pipeline service: cursors, transition rules, concentration and warnings, CSV."""

from __future__ import annotations

import base64
import csv
import io
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
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


Y, M, D, H = "y", "m", "d", "h"


def _p(sign: float, grain: str, low: date, high: date, hours: tuple | None = None) -> tuple:
    return (sign, grain, low, high, *(hours or (None, None)))


@pytest.mark.parametrize(("first", "last", "expected"), [
    (None, None, [_p(1, Y, date.min, date(9999, 1, 1))]),
    (date(2026, 3, 1), date(2026, 4, 30), [_p(1, M, date(2026, 3, 1), date(2026, 4, 1))]),
    (date(2026, 3, 17), date(2026, 4, 30), [_p(1, M, date(2026, 4, 1), date(2026, 4, 1)),
                                            _p(1, D, date(2026, 3, 17), date(2026, 3, 31))]),
    # a ragged end longer than half its month: the month's row less the days outside
    (date(2026, 3, 3), date(2026, 4, 30), [_p(1, M, date(2026, 4, 1), date(2026, 4, 1)),
                                           _p(1, M, date(2026, 3, 1), date(2026, 3, 1)),
                                           _p(-1, D, date(2026, 3, 1), date(2026, 3, 2))]),
    (date(2026, 3, 3), date(2026, 3, 4), [_p(1, D, date(2026, 3, 3), date(2026, 3, 4))]),
    # whole years from year rows, the ragged ones by months (or the year less its months outside)
    (date(2024, 1, 1), date(2026, 12, 31), [_p(1, Y, date(2024, 1, 1), date(2026, 1, 1))]),
    (date(2024, 3, 1), date(2026, 1, 31), [_p(1, Y, date(2025, 1, 1), date(2025, 1, 1)),
                                           _p(1, Y, date(2024, 1, 1), date(2024, 1, 1)),
                                           _p(-1, M, date(2024, 1, 1), date(2024, 2, 1)),
                                           _p(1, M, date(2026, 1, 1), date(2026, 1, 1))]),
    (None, date(2026, 2, 27), [_p(1, Y, date.min, date(2025, 1, 1)), _p(1, M, date(2026, 1, 1), date(2026, 1, 1)),
                               _p(1, M, date(2026, 2, 1), date(2026, 2, 1)), _p(-1, D, date(2026, 2, 28),
                                                                                date(2026, 2, 28))]),
    (date(2024, 2, 1), date(2024, 2, 29), [_p(1, M, date(2024, 2, 1), date(2024, 2, 1))]),  # a leap February
    # the calendar's ends: no unit after December 9999 nor before January of year 1
    (date(9999, 12, 17), None, [_p(1, D, date(9999, 12, 17), date.max)]),
    (date(9999, 12, 15), None, [_p(1, M, date(9999, 12, 1), date(9999, 12, 1)),
                                _p(-1, D, date(9999, 12, 1), date(9999, 12, 14))]),
    (date(9999, 12, 1), date.max, [_p(1, M, date(9999, 12, 1), date(9999, 12, 1))]),
    (None, date(1, 1, 15), [_p(1, D, date.min, date(1, 1, 15))]),
])
def test_a_range_reads_whole_years_then_months_then_days(first, last, expected):
    from services.pipeline.repository import _signed_periods

    assert _signed_periods(first, last) == expected


_UTC = timezone.utc
_LAST = datetime.max.replace(tzinfo=_UTC)


def _weight(periods: list, windows: list, at: datetime) -> float:
    """How many times ``at`` is counted: by the rollup rows the periods read and the raw windows."""
    from services.pipeline.repository import _unit_start

    total = 0.0
    for sign, grain, low, high, first_hour, last_hour in periods:
        if grain == "h":
            if at.date() == low and first_hour <= at.hour <= last_hour:
                total += sign
            continue
        day = at.date()
        row = day if grain == "d" else _unit_start({"y": "y", "m": "m"}[grain], day)
        if low <= row <= high:
            total += sign
    for sign, start, end, inclusive in windows:
        if start <= at and (at <= end if inclusive else at < end):
            total += sign
    return total


_instants = st.datetimes(min_value=datetime(2024, 11, 1), max_value=datetime(2027, 2, 1), timezones=st.just(_UTC))
_bound = st.one_of(st.none(), _instants.map(lambda t: t.date()), _instants,
                   _instants.map(lambda t: t.replace(minute=0, second=0, microsecond=0)),
                   st.sampled_from([datetime(9999, 12, 31, 22, 30, tzinfo=_UTC), _LAST, datetime(1, 1, 1, tzinfo=_UTC),
                                    datetime(1, 1, 1, 0, 30, tzinfo=_UTC), date(9999, 12, 30), date.min]))


@settings(max_examples=400, deadline=None)
@given(_bound, _bound, st.lists(_instants, max_size=6))
def test_the_rows_and_windows_read_count_each_instant_of_the_range_once(start, end, probes):
    """Whatever the bounds (dates, date-times inside hours, on the hour, the calendar's ends),
    the rollup rows and raw windows an answer reads count every instant in the range once
    and every other instant not at all."""
    from services.pipeline.repository import _net, _signed_periods, _window_periods
    from services.pipeline.schemas import SourcesQuery
    from services.pipeline.service import rollup_range

    def instant(value):  # noqa: ANN001, ANN202
        return value if isinstance(value, datetime) or value is None else datetime.combine(
            value, datetime.min.time(), tzinfo=_UTC)

    low, high = instant(start), instant(end)
    if isinstance(end, date) and not isinstance(end, datetime):
        high = _LAST if end == date.max else high + timedelta(days=1) - timedelta(microseconds=1)
    if low is not None and high is not None and low > high:
        return
    r = rollup_range(SourcesQuery.model_validate({"from": start, "to": end}))
    periods = _signed_periods(r.first_day, r.last_day) if r.whole_days else []
    windows = []
    for window in r.windows:
        more, raw = _window_periods(*window)
        periods += more
        windows += raw
    periods = _net(periods)
    one = timedelta(microseconds=1)
    near = []
    for t in (low, high):
        for step in (-one, 0 * one, one, timedelta(minutes=-30), timedelta(minutes=30), timedelta(hours=-2),
                     timedelta(hours=5), timedelta(days=-1), timedelta(days=1)):
            try:
                near.append(t + step)
            except (OverflowError, TypeError):  # past the calendar's ends; no bound
                pass
    for at in [*probes, *near]:
        inside = (low is None or at >= low) and (high is None or at <= high)
        assert _weight(periods, windows, at) == float(inside), (start, end, at, periods, windows)


@pytest.mark.parametrize("accept,csv", [
    ("text/csv", True),
    ("text/csv; charset=utf-8", True),
    ("text/csv, */*", True),  # the named type beats the wildcard
    ("text/csv;q=0.9, application/json;q=0.5", True),
    ("application/json, text/csv;q=0.1", False),
    ("text/csv;q=0", False),  # "not CSV"
    ("text/csv, application/json", False),  # a tie between named types: the default
    ("text/csv;q=0.5, */*", False),
    ("*/*", False),
    ("", False),
    ("application/json", False),
    ("TEXT/CSV;Q=0.8", True),
    ("text/csv;q=abc", False),
])
def test_csv_is_answered_when_the_accept_header_prefers_it(accept, csv):
    from services.pipeline.api import prefers_csv

    assert prefers_csv(accept) is csv
