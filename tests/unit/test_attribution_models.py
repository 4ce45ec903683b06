"""Attribution models (spec "Attribution models and channel rules"): ordering, lookback,
the six models' credits, and amount credits."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.qualification.domain.attribution import Touch
from services.qualification.domain.attribution_models import (
    DEFAULT_LOOKBACK,
    MODELS,
    amount_credits,
    attribute,
    ordered,
    within_lookback,
)

Q = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # the qualification moment
DAY = timedelta(days=1)


def touch(event_id: str | None, days_before: float, motion: str = "inbound", channel: str = "email") -> Touch:
    return Touch(
        motion=motion,  # type: ignore[arg-type]
        channel=channel,
        occurred_at=Q - timedelta(days=days_before),
        campaign=f"c-{event_id}",
        event_id=event_id,
    )


def chain(n: int, spacing_days: float = 1.0) -> list[Touch]:
    """n touches e00…, the first the oldest, the last at the qualification moment."""
    return [touch(f"e{i:02d}", (n - 1 - i) * spacing_days) for i in range(n)]


def credits_of(model: str, touches: list[Touch], mql: str | None = None) -> list[float]:
    return [c.credit for c in attribute(model, touches, Q, mql_event_id=mql)]


def _approx(values: list[float]):
    return pytest.approx(values, abs=1e-12)


# --- the models, n = 1, 2, 3, 10 ---------------------------------------------------------

_POS10 = [0.4] + [0.2 / 8] * 8 + [0.4]
_TD10 = [2.0 ** -(9 - i) for i in range(10)]  # 7-day spacing: weights 2^-9 … 2^0


@pytest.mark.parametrize(
    ("model", "n", "spacing", "expected"),
    [
        ("first", 1, 1, [1.0]),
        ("first", 2, 1, [1.0, 0.0]),
        ("first", 3, 1, [1.0, 0.0, 0.0]),
        ("first", 10, 1, [1.0] + [0.0] * 9),
        ("last", 1, 1, [1.0]),
        ("last", 2, 1, [0.0, 1.0]),
        ("last", 3, 1, [0.0, 0.0, 1.0]),
        ("last", 10, 1, [0.0] * 9 + [1.0]),
        ("linear", 1, 1, [1.0]),
        ("linear", 2, 1, [0.5, 0.5]),
        ("linear", 3, 1, [1 / 3] * 3),
        ("linear", 10, 1, [0.1] * 10),
        ("position", 1, 1, [1.0]),
        ("position", 2, 1, [0.5, 0.5]),
        ("position", 3, 1, [0.4, 0.2, 0.4]),
        ("position", 10, 1, _POS10),
        ("time_decay", 1, 7, [1.0]),
        ("time_decay", 2, 7, [1 / 3, 2 / 3]),
        ("time_decay", 3, 7, [1 / 7, 2 / 7, 4 / 7]),
        ("time_decay", 10, 7, [w / sum(_TD10) for w in _TD10]),
        ("time_decay", 2, 0, [0.5, 0.5]),  # same moment: same weight
        # w_shaped with the mql touch distinct from first and last where n allows
        ("w_shaped", 3, 1, [1 / 3, 1 / 3, 1 / 3]),
        ("w_shaped", 10, 1, [0.3, 0.1 / 7, 0.1 / 7, 0.1 / 7, 0.3] + [0.1 / 7] * 4 + [0.3]),
    ],
)
def test_model_credits(model: str, n: int, spacing: float, expected: list[float]) -> None:
    mql = "e04" if n == 10 else "e01"
    assert credits_of(model, chain(n, spacing), mql) == _approx(expected)


@pytest.mark.parametrize(
    ("n", "mql", "expected"),
    [
        # coinciding milestones add up, then scale to 1 when there is no other touch
        (1, "e00", [1.0]),
        (2, "e00", [2 / 3, 1 / 3]),
        (2, "e01", [1 / 3, 2 / 3]),
        (3, "e00", [0.6, 0.1, 0.3]),
        (3, "e02", [0.3, 0.1, 0.6]),
        (4, "e01", [0.3, 0.3, 0.1, 0.3]),
        (4, "e02", [0.3, 0.1, 0.3, 0.3]),
        (10, "e00", [0.6] + [0.1 / 8] * 8 + [0.3]),
        (10, "e09", [0.3] + [0.1 / 8] * 8 + [0.6]),
        # no mql touch known (none given, or not a counting touch): first and last keep
        # 0.3 each, the others 0.1, normalised
        (1, None, [1.0]),
        (2, None, [0.5, 0.5]),
        (3, None, [3 / 7, 1 / 7, 3 / 7]),
        (10, None, [3 / 7] + [1 / 56] * 8 + [3 / 7]),
        (3, "outside-lookback", [3 / 7, 1 / 7, 3 / 7]),
    ],
)
def test_w_shaped_milestones(n: int, mql: str | None, expected: list[float]) -> None:
    assert credits_of("w_shaped", chain(n), mql) == _approx(expected)


def test_time_decay_half_life_is_seven_days_from_qualification() -> None:
    # Δt measured to the qualification moment, not to the last touch: 7 and 14 days
    credits = credits_of("time_decay", [touch("a", 14), touch("b", 7)])
    assert credits == _approx([1 / 3, 2 / 3])


def test_time_decay_touches_years_old_do_not_underflow() -> None:
    credits = credits_of("time_decay", [touch("a", 40_000), touch("b", 39_993)])
    assert credits == _approx([1 / 3, 2 / 3])


# --- ordering: occurred_at, then event id; late arrivals take their place ----------------


@pytest.mark.parametrize("model", MODELS)
def test_equal_timestamps_are_ordered_by_event_id(model: str) -> None:
    b, a, c = touch("b", 3), touch("a", 3), touch("c", 1)
    result = attribute(model, [b, c, a], Q, mql_event_id="b")
    assert [r.touch.event_id for r in result] == ["a", "b", "c"]
    assert [r.credit for r in result] == _approx(credits_of(model, [a, b, c], "b"))


def test_equal_timestamps_first_and_last_follow_event_id() -> None:
    touches = [touch("z", 0), touch("y", 0), touch(None, 0)]
    assert [t.event_id for t in ordered(touches)] == [None, "y", "z"]
    assert attribute("first", touches, Q)[0].touch.event_id is None
    assert attribute("last", touches, Q)[-1].touch.event_id == "z"


@pytest.mark.parametrize("model", MODELS)
def test_late_arriving_earlier_touch_takes_its_place(model: str) -> None:
    # The lead is stored first; the outbound touch that occurred earlier is synced later.
    lead = touch("lead", 2, motion="inbound", channel="paid_search")
    later_synced = touch("call", 5, motion="outbound", channel="cold_call")
    middle = touch("mail", 1, motion="outbound", channel="cold_email")
    arrived = attribute(model, [lead, middle, later_synced], Q, mql_event_id="lead")
    assert [r.touch.event_id for r in arrived] == ["call", "lead", "mail"]
    in_order = attribute(model, [later_synced, lead, middle], Q, mql_event_id="lead")
    assert arrived == in_order
    if model == "first":
        assert [r.credit for r in arrived] == [1.0, 0.0, 0.0]


# --- lookback ----------------------------------------------------------------------------


def test_lookback_keeps_touches_within_ninety_days_inclusive_and_orders_them() -> None:
    at_qualification = touch("q", 0)
    after = touch("after", -0.5)
    edge = Touch(motion="outbound", channel="sms", occurred_at=Q - DEFAULT_LOOKBACK, event_id="edge")
    too_old = Touch(
        motion="outbound", channel="sms", occurred_at=Q - DEFAULT_LOOKBACK - timedelta(seconds=1), event_id="old"
    )
    middle = touch("mid", 30)
    kept = within_lookback([at_qualification, after, too_old, middle, edge], Q)
    assert [t.event_id for t in kept] == ["edge", "mid", "q"]


@pytest.mark.parametrize(
    ("lookback", "expected"),
    [(timedelta(days=10), ["b", "c"]), (timedelta(0), ["c"]), (timedelta(days=365), ["a", "b", "c"])],
)
def test_lookback_is_configurable(lookback: timedelta, expected: list[str]) -> None:
    touches = [touch("c", 0), touch("b", 10), touch("a", 100)]
    assert [t.event_id for t in within_lookback(touches, Q, lookback)] == expected


def test_negative_lookback_is_refused() -> None:
    with pytest.raises(ValueError, match="lookback"):
        within_lookback([touch("a", 1)], Q, -DAY)


# --- bad input ---------------------------------------------------------------------------


def test_unknown_model_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'u_shaped'"):
        attribute("u_shaped", chain(2), Q)


@pytest.mark.parametrize("model", MODELS)
def test_touch_after_qualification_is_refused(model: str) -> None:
    with pytest.raises(ValueError, match="after qualification"):
        attribute(model, [touch("a", 1), touch("late", -1)], Q)


@pytest.mark.parametrize("model", MODELS)
def test_no_touches_no_credit(model: str) -> None:
    assert attribute(model, [], Q) == ()


# --- amounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "amount", "expected"),
    [
        ("position", 1000.0, [400.0, 200.0, 400.0]),
        ("linear", Decimal("900.00"), [300.0, 300.0, 300.0]),
        ("first", 5000, [5000.0, 0.0, 0.0]),
        ("w_shaped", 700, [300.0, 100.0, 300.0]),  # no mql touch known: 3/7, 1/7, 3/7
        ("linear", 0, [0.0, 0.0, 0.0]),
    ],
)
def test_amount_credit_is_credit_times_amount(model: str, amount, expected: list[float]) -> None:
    credits = attribute(model, chain(3), Q)
    assert list(amount_credits(credits, amount)) == pytest.approx(expected, abs=1e-9)


# --- properties ---------------------------------------------------------------------------

_touches = st.lists(
    st.builds(
        Touch,
        motion=st.sampled_from(["inbound", "outbound"]),
        channel=st.sampled_from(["email", "cold_call", "paid_search"]),
        # anything from the qualification moment back to ten years before it, ties likely
        occurred_at=st.one_of(
            st.integers(0, 10 * 365 * 86_400).map(lambda s: Q - timedelta(seconds=s)),
            st.integers(0, 5).map(lambda d: Q - timedelta(days=d)),
        ),
        campaign=st.none() | st.just("spring"),
        event_id=st.none() | st.text("abcdef", min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=40,
)


@given(touches=_touches, mql=st.none() | st.text("abcdef", min_size=1, max_size=3), amount=st.floats(0, 1e9))
def test_credits_sum_to_one_and_are_non_negative_under_every_model(
    touches: list[Touch], mql: str | None, amount: float
) -> None:
    for model in MODELS:
        credits = attribute(model, touches, Q, mql_event_id=mql)
        assert len(credits) == len(touches)
        assert all(c.credit >= 0.0 for c in credits)
        assert abs(sum(c.credit for c in credits) - 1.0) <= 1e-9
        assert [c.touch for c in credits] == list(ordered(touches))
        amounts = amount_credits(credits, amount)
        assert all(a >= 0.0 for a in amounts)
        assert abs(sum(amounts) - amount) <= 1e-9 * max(1.0, amount)


@given(data=st.data(), n=st.integers(1, 15))
def test_credits_do_not_depend_on_arrival_order(data: st.DataObject, n: int) -> None:
    days = data.draw(st.lists(st.integers(0, 89), min_size=n, max_size=n))
    touches = [touch(f"e{i}", d) for i, d in enumerate(days)]
    shuffled = data.draw(st.permutations(touches))
    mql = data.draw(st.sampled_from([None, *(t.event_id for t in touches)]))
    for model in MODELS:
        assert attribute(model, shuffled, Q, mql_event_id=mql) == attribute(model, touches, Q, mql_event_id=mql)


def test_the_store_knows_the_same_models() -> None:
    from pipeline_store.source_rollups import MODELS as STORED

    assert tuple(MODELS) == STORED
