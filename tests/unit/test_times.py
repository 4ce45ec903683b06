"""``shared.times``: instants read as UTC, and rows of values compared as facts."""

from datetime import datetime, timedelta, timezone

from shared.times import as_utc, same_values

AWARE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
NAIVE = AWARE.replace(tzinfo=None)
PARIS = AWARE.astimezone(timezone(timedelta(hours=1)))

same = same_values(("email", "first_touch_at", "score", "sql_at"))


def test_as_utc_reads_naive_as_utc_and_converts_other_offsets():
    assert as_utc(None) is None
    assert as_utc(AWARE) is AWARE
    assert as_utc(NAIVE) == AWARE and as_utc(NAIVE).tzinfo is timezone.utc
    assert as_utc(PARIS) == AWARE and as_utc(PARIS).tzinfo is timezone.utc


def test_same_values_reads_a_naive_time_as_utc():
    assert same(("a@x.io", AWARE, 10, None), ("a@x.io", AWARE, 10, None))
    assert same(("a@x.io", NAIVE, 10, None), ("a@x.io", AWARE, 10, None))
    assert same(("a@x.io", NAIVE, 10, PARIS), ("a@x.io", AWARE, 10, AWARE))


def test_same_values_tells_a_changed_value_or_time():
    assert not same(("a@x.io", AWARE, 10, None), ("a@x.io", AWARE, 11, None))
    assert not same(("a@x.io", NAIVE, 10, None), ("a@x.io", AWARE + timedelta(seconds=1), 10, None))
    assert not same(("a@x.io", AWARE, 10, None), ("a@x.io", AWARE, 10, AWARE))


def test_same_values_with_one_plain_field():
    one = same_values(("stage", "sql_at"))
    assert one(("mql", NAIVE), ("mql", AWARE))
    assert not one(("mql", NAIVE), ("sql", AWARE))
