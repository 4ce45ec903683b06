"""The motion balance's pure parts: each diagnosis at, just below and just above its
thresholds, none on a balanced history, the figures from the rollups' sums, and what one
contact contributes to the rollups."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest

from pipeline_store.rollups import Deltas, contribution
from services.pipeline.analytics import Thresholds
from services.pipeline.balance import (
    BalanceThresholds, CohortSum, Sums, Windows, _median, answer, channel_dependency, diagnose, motion_dependency,
    share_shift, weak_control, weak_inbound_interest, working_together,
)

T = BalanceThresholds()  # majority 0.6, fit_gap 0.2, effort_high 20, effort_rise 0.25, shift 0.15, assisted 0.3, min 10
LIMITS = Thresholds()  # channel 0.5, campaign 0.3, motion 0.8


def report(*, in_share: float = 0.5, in_fit: float = 0.4, out_fit: float = 0.45, qualified: int = 40,
           effort: float | None = 8.0, effort_recent: float | None = 8.0, effort_prior: float | None = 8.0,
           in_recent: float = 0.5, in_prior: float = 0.5, assisted: float = 0.1, recent_n: int = 20,
           prior_n: int = 20, channels: list | None = None, motion_shares: list | None = None,
           channel_shares: list | None = None) -> dict:
    """An answer as ``balance.answer`` shapes it, balanced unless told otherwise."""
    out_share = round(1 - in_share, 4)
    rows = [
        {"motion": "inbound", "share": in_share, "fit_share": in_fit, "effort_per_sql": 2.0,
         "effort_per_sql_recent": 2.0, "effort_per_sql_prior": 2.0, "recent_share": in_recent,
         "prior_share": in_prior, "assisted_share": assisted},
        {"motion": "outbound", "share": out_share, "fit_share": out_fit, "effort_per_sql": effort,
         "effort_per_sql_recent": effort_recent, "effort_per_sql_prior": effort_prior,
         "recent_share": round(1 - in_recent, 4), "prior_share": round(1 - in_prior, 4), "assisted_share": assisted},
        {"motion": "blended", "share": assisted},
    ]
    return {
        "rows": rows,
        "totals": {"qualified_opportunities": qualified, "assisted": round(assisted * qualified),
                   "assisted_share": assisted},
        "trend": {"recent": {"qualified_opportunities": recent_n}, "prior": {"qualified_opportunities": prior_n},
                  "channels": channels if channels is not None else [
                      {"channel": "paid_search", "recent_share": 0.3, "prior_share": 0.28},
                      {"channel": "cold_email", "recent_share": 0.3, "prior_share": 0.32},
                      {"channel": "organic_search", "recent_share": 0.4, "prior_share": 0.4}]},
        "shares": {"motion": motion_shares if motion_shares is not None else [
                       ("inbound", 0.45), ("outbound", 0.45), ("blended", 0.1)],
                   "channel": channel_shares if channel_shares is not None else [
                       ("paid_search", 0.3), ("cold_email", 0.3), ("organic_search", 0.4)]},
    }


def test_no_diagnosis_fires_on_a_balanced_history():
    assert diagnose(report(), T, LIMITS) == []


def test_no_diagnosis_fires_on_balanced_sums_either():
    """Both motions alike in volume, fit and effort, steady across the windows, few assisted."""
    end = date(2026, 11, 30)
    cohort = [CohortSum("inbound", "inbound", "paid_search", 200, 80, 18, 3),
              CohortSum("inbound", "inbound", "organic_search", 150, 60, 18, 3),
              CohortSum("outbound", "outbound", "cold_email", 300, 140, 20, 4),
              CohortSum("outbound", "outbound", "cold_call", 100, 45, 16, 3),
              CohortSum("inbound", "blended", "webinar", 20, 10, 4, 1),
              CohortSum("outbound", "blended", "cold_email", 10, 5, 4, 1)]
    window = [(end - timedelta(days=d), entry, motion, channel, 1)
              for d in range(0, 56, 2)
              for entry, motion, channel in (("inbound", "inbound", "paid_search"),
                                             ("outbound", "outbound", "cold_email"),
                                             ("inbound", "inbound", "organic_search"),
                                             ("outbound", "outbound", "cold_call"))]
    effort = [(end - timedelta(days=d), m, 2, 12) for d in range(56) for m in ("inbound", "outbound")]
    sums = Sums(cohort=cohort, days_to_sql=[("inbound", "inbound", 3, 40), ("outbound", "outbound", 9, 40)],
                effort={"inbound": (90, 0), "outbound": (0, 480)}, window=window, window_effort=effort)
    figures = answer(sums, Windows(end))
    assert [r["share"] for r in figures["rows"]] == [0.5, 0.5, 0.1]
    assert diagnose(figures, T, LIMITS) == []


# ---- weak_control: inbound share ≥ majority and outbound fit − inbound fit ≥ fit_gap ----------

@pytest.mark.parametrize("in_share,in_fit,out_fit,qualified,fires", [
    (0.6, 0.3, 0.5, 10, True),  # at both thresholds and at the minimum of opportunities
    (0.5999, 0.3, 0.5, 10, False),  # share just below
    (0.6, 0.3, 0.4999, 10, False),  # gap just below
    (0.6, 0.3, 0.5, 9, False),  # too few opportunities to judge
    (0.6001, 0.3, 0.5001, 11, True),  # just above
    (0.9, 0.6, 0.5, 100, False),  # inbound fits better: control is not the problem
])
def test_weak_control(in_share, in_fit, out_fit, qualified, fires):
    found = weak_control(report(in_share=in_share, in_fit=in_fit, out_fit=out_fit, qualified=qualified), T)
    assert (found is not None) == fires
    if fires:
        assert found.rule == "weak_control"
        assert found.figures["inbound_share"] == in_share and found.figures["fit_gap"] == round(out_fit - in_fit, 4)


def test_weak_control_sentence_states_its_figures():
    found = weak_control(report(in_share=0.72, in_fit=0.31, out_fit=0.64), T)
    assert found.sentence == ("72 % of qualified pipeline is inbound, yet 31 % of inbound entrants fit (A/B) "
                              "against 64 % of outbound prospects: stronger prospecting would add control over "
                              "who enters")
    assert found.figures == {"inbound_share": 0.72, "inbound_fit_share": 0.31, "outbound_fit_share": 0.64,
                             "fit_gap": 0.33, "qualified_opportunities": 40,
                             "thresholds": {"majority": 0.6, "fit_gap": 0.2}}


# ---- weak_inbound_interest: outbound share ≥ majority at high or rising effort ----------------

@pytest.mark.parametrize("in_share,effort,recent,prior,fires", [
    (0.4, 20.0, 8.0, 8.0, True),  # outbound 0.6, effort at effort_high
    (0.4, 19.99, 8.0, 8.0, False),  # effort just below, steady
    (0.4, 20.01, 8.0, 8.0, True),  # just above
    (0.4001, 25.0, 8.0, 8.0, False),  # outbound 0.5999: not the main supplier
    (0.3999, 20.0, 8.0, 8.0, True),  # outbound 0.6001: just above the majority
    (0.4, 10.0, 12.5, 10.0, True),  # rising by exactly effort_rise (25 %)
    (0.4, 10.0, 12.49, 10.0, False),  # rising just less
    (0.4, 10.0, 12.51, 10.0, True),  # rising just more
    (0.4, 10.0, 12.5, None, False),  # no prior window: rising is unknown
    (0.1, None, None, None, False),  # no touches recorded at all
])
def test_weak_inbound_interest(in_share, effort, recent, prior, fires):
    found = weak_inbound_interest(report(in_share=in_share, effort=effort, effort_recent=recent,
                                         effort_prior=prior), T)
    assert (found is not None) == fires


@pytest.mark.parametrize("qualified,fires", [(10, True), (9, False), (11, True)])
def test_weak_inbound_interest_waits_for_min_opportunities(qualified, fires):
    found = weak_inbound_interest(report(in_share=0.2, effort=30.0, qualified=qualified), T)
    assert (found is not None) == fires


def test_weak_inbound_interest_sentence():
    found = weak_inbound_interest(report(in_share=0.19, effort=24.5, effort_recent=26.0, effort_prior=18.0), T)
    assert found.sentence == ("81 % of qualified pipeline is outbound at 24.5 touches per opportunity, rising from 18 "
                              "to 26 over the last 28 days, while inbound brings 19 %: stronger lead generation "
                              "would help")
    assert found.figures["high"] and found.figures["rising"]
    high_only = weak_inbound_interest(report(in_share=0.3, effort=22.0), T)
    assert high_only.sentence == ("70 % of qualified pipeline is outbound at 22 touches per opportunity, while "
                                  "inbound brings 30 %: stronger lead generation would help")
    assert high_only.figures == {
        "outbound_share": 0.7, "inbound_share": 0.3, "effort_per_sql": 22.0, "effort_per_sql_recent": 8.0,
        "effort_per_sql_prior": 8.0, "high": True, "rising": False,
        "thresholds": {"majority": 0.6, "effort_high": 20.0, "effort_rise": 0.25}}


# ---- motion_dependency and channel_dependency: the sources answer's warnings --------------

@pytest.mark.parametrize("share,fires", [(0.8, False), (0.7999, False), (0.8001, True)])
def test_motion_dependency(share, fires):
    rest = round(1 - share, 4)
    found = motion_dependency(report(in_share=share, motion_shares=[("inbound", share), ("outbound", rest)]), LIMITS)
    assert [d.figures for d in found] == ([{"motion": "inbound", "share": share, "threshold": 0.8}] if fires else [])
    if fires:
        assert found[0].sentence == "80% of qualified pipeline comes from the inbound motion"


def test_motion_dependency_gives_the_entry_share_beside_it_when_they_differ():
    """The row says how opportunities entered (assisted ones included), the warning how many
    the motion touched alone: both figures, so the sentence never contradicts the row."""
    found = motion_dependency(report(in_share=0.8253, motion_shares=[("inbound", 0.8122), ("outbound", 0.1747),
                                                                        ("blended", 0.0131)]), LIMITS)
    assert [d.sentence for d in found] == [
        "81% of qualified pipeline comes from the inbound motion alone (83% entered by it, counting those "
        "outbound also touched before qualification)"]
    assert found[0].figures == {"motion": "inbound", "share": 0.8122, "threshold": 0.8, "entry_share": 0.8253}


@pytest.mark.parametrize("share,fires", [(0.5, False), (0.4999, False), (0.5001, True)])
def test_channel_dependency(share, fires):
    found = channel_dependency(report(channel_shares=[("paid_search", share), (None, 1 - share)]), LIMITS)
    assert [(d.rule, d.figures["channel"]) for d in found] == ([("channel_dependency", "paid_search")] if fires else [])


def test_an_unattributed_channel_is_never_a_dependency():
    assert channel_dependency(report(channel_shares=[(None, 0.9), ("direct", 0.1)]), LIMITS) == []


# ---- share_shift: a share moved by more than shift between the two windows ----------------

@pytest.mark.parametrize("in_prior,in_recent,window_n,fires", [
    (0.4, 0.55, 20, False),  # at the margin: not more than it
    (0.4, 0.5499, 20, False),
    (0.4, 0.5501, 20, True),
    (0.4, 0.5501, 9, False),  # too few opportunities in a window
    (0.4, 0.5501, 10, True),  # at the minimum
])
def test_share_shift_of_a_motion(in_prior, in_recent, window_n, fires):
    found = share_shift(report(in_prior=in_prior, in_recent=in_recent, recent_n=window_n), T)
    assert [d.figures.get("motion") for d in found] == (["inbound"] if fires else [])
    found = share_shift(report(in_prior=in_prior, in_recent=in_recent, prior_n=window_n), T)  # the prior window
    assert [d.figures.get("motion") for d in found] == (["inbound"] if fires else [])


def test_share_shift_names_the_motion_that_gained_once():
    found = share_shift(report(in_prior=0.7, in_recent=0.4), T)
    assert [(d.figures["motion"], d.figures["change_pp"]) for d in found] == [("outbound", 30.0)]
    assert found[0].sentence == ("the outbound motion's share of qualified pipeline moved from 30 % to 60 % "
                                 "(+30 points) between the 28 days before and the last 28 days")


@pytest.mark.parametrize("prior,recent,fires", [(0.3, 0.45, False), (0.3, 0.4501, True), (0.3, 0.1499, True),
                                                (0.3, 0.1501, False)])
def test_share_shift_of_a_channel(prior, recent, fires):
    channels = [{"channel": "paid_search", "recent_share": recent, "prior_share": prior},
                {"channel": None, "recent_share": 0.9, "prior_share": 0.1}]  # unattributed: never named
    found = share_shift(report(channels=channels), T)
    assert [d.figures.get("channel") for d in found] == (["paid_search"] if fires else [])


# ---- working_together: assisted share ≥ assisted ----------------------------------------

@pytest.mark.parametrize("assisted,qualified,fires", [
    (0.3, 10, True), (0.2999, 10, False), (0.3001, 10, True), (0.5, 9, False)])
def test_working_together(assisted, qualified, fires):
    found = working_together(report(assisted=assisted, qualified=qualified), T)
    assert (found is not None) == fires
    if fires:
        assert found.sentence.endswith(": keep both") and found.figures["assisted_share"] == assisted


def test_working_together_sentence_states_its_figures():
    found = working_together(report(assisted=0.35, qualified=40), T)
    assert found.sentence == ("35 % of qualified opportunities were touched by both motions before qualification "
                              "(assisted: inbound 35 %, outbound 35 %): keep both")
    assert found.figures == {"assisted_share": 0.35, "assisted": 14, "inbound_assisted_share": 0.35,
                             "outbound_assisted_share": 0.35, "thresholds": {"assisted": 0.3}}


def test_thresholds_are_the_settings():
    strict = BalanceThresholds(majority=0.9, fit_gap=0.5, min_opportunities=1)
    assert weak_control(report(in_share=0.72, in_fit=0.31, out_fit=0.64), strict) is None
    assert weak_control(report(in_share=0.95, in_fit=0.1, out_fit=0.64, qualified=1), strict) is not None


BALANCE_SETTINGS = {"majority": "0.7", "fit_gap": "0.1", "effort_high": "12", "effort_rise": "0.5", "shift": "0.2",
                    "assisted": "0.4", "min_opportunities": "25"}


def test_every_threshold_is_a_leadstream_balance_setting(monkeypatch):
    from services.pipeline.app import balance_thresholds
    from services.pipeline.settings import PipelineSettings

    assert balance_thresholds(PipelineSettings()) == BalanceThresholds()  # the same defaults
    for name, value in BALANCE_SETTINGS.items():
        monkeypatch.setenv(f"LEADSTREAM_BALANCE_{name.upper()}", value)
    assert balance_thresholds(PipelineSettings()) == BalanceThresholds(
        **{name: type(getattr(T, name))(value) for name, value in BALANCE_SETTINGS.items()})


def test_the_configuration_table_documents_each_thresholds_default():
    import re

    from tests.support import ROOT

    operations = (ROOT / "docs" / "operations.md").read_text()
    for name in BALANCE_SETTINGS:
        found = re.search(rf"^\| `LEADSTREAM_BALANCE_{name.upper()}` \| `([^`]+)` \|", operations, re.M)
        assert found and float(found.group(1)) == getattr(T, name), name


# ---- figures --------------------------------------------------------------------------------

@pytest.mark.parametrize("histogram,median", [
    ({}, None), ({4: 1}, 4.0), ({0: 7, 3: 1}, 0.0), ({2: 3, 5: 1}, 2.0), ({3: 1, 5: 1}, 4.0), ({1: 2, 9: 2}, 5.0),
    ({1: 1, 2: 1, 30: 1}, 2.0),
])
def test_median_of_a_histogram_of_whole_days(histogram, median):
    assert _median(histogram) == median


def test_windows_are_the_last_28_days_and_the_28_before():
    w = Windows(date(2026, 11, 10))
    assert w.recent == (date(2026, 10, 14), date(2026, 11, 10))
    assert w.prior == (date(2026, 9, 16), date(2026, 10, 13))
    assert [w.which(date(2026, 9, 15)), w.which(date(2026, 9, 16)), w.which(date(2026, 10, 14))] == [
        None, "prior", "recent"]
    assert (w.week(date(2026, 9, 16)), w.week(date(2026, 11, 10))) == (0, 7)


def test_windows_saturate_at_the_calendars_first_day():
    """A range ending in January of year 1 (as the sources answer's ranges, no overflow)."""
    w = Windows(date(1, 1, 20))
    assert w.recent == (date(1, 1, 1), date(1, 1, 20)) and w.prior == (date(1, 1, 1), date(1, 1, 1))
    assert (w.which(date(1, 1, 1)), w.week(date(1, 1, 1)), w.week(date(1, 1, 20))) == ("recent", 5, 7)
    weeks = answer(Sums(window=[(date(1, 1, 1), "inbound", "inbound", "paid_search", 2)]), w)["trend"]["weeks"]
    assert [(x["from"], x["to"]) for x in weeks[4:]] == [
        ("0001-01-01", "0001-01-01"), ("0001-01-01", "0001-01-06"), ("0001-01-07", "0001-01-13"),
        ("0001-01-14", "0001-01-20")]
    assert [x["qualified_opportunities"] for x in weeks] == [0, 0, 0, 0, 0, 2, 0, 0]


# ---- what a contact contributes to the rollups ------------------------------------------------

T0 = datetime(2026, 10, 1, 9, tzinfo=timezone.utc)


def contact(**kw) -> SimpleNamespace:  # noqa: ANN003
    values = dict(first_touch_at=T0, created_at=T0, first_touch_motion="inbound", motion="inbound",
                  first_touch_channel="paid_search", fit_grade="C", sql_at=None, opportunity_at=None,
                  customer_at=None)
    return SimpleNamespace(**(values | kw))


def test_a_contact_contributes_to_its_first_touch_day_entry_motion_motion_and_channel():
    c = contribution(contact(fit_grade="B", sql_at=T0 + timedelta(days=2, hours=23)))
    assert c.key == (date(2026, 10, 1), "inbound", "inbound", "paid_search")
    assert c.counters == (1, 1, 1, 0, Decimal(0), Decimal(0)) and c.days_to_sql == 2
    won = contribution(contact(motion="blended", first_touch_channel=None, sql_at=T0, customer_at=T0),
                       "customer", Decimal("1200.50"))
    assert won.key == (date(2026, 10, 1), "inbound", "blended", "")
    assert won.counters == (1, 0, 1, 1, Decimal("1200.50"), Decimal("1200.50")) and won.days_to_sql == 0
    lost = contribution(contact(sql_at=T0), "lost", 900.0)
    assert lost.counters[4:] == (Decimal(0), Decimal(0))
    # no touch kept: the first fact's time; SQLite's naive datetimes are UTC
    naive = contribution(contact(first_touch_at=None, created_at=datetime(2026, 10, 2, 23, 59)))
    assert naive.key[0] == date(2026, 10, 2)


def test_deltas_move_a_contribution_and_count_facts():
    deltas = Deltas()
    before = contribution(contact())
    deltas.change(None, before)
    later = contribution(contact(first_touch_at=T0 - timedelta(days=3), fit_grade="A", sql_at=T0))
    deltas.change(before, later)
    deltas.change(later, later)  # unchanged: nothing
    deltas.fact("io.leadstream.lead.captured.v1", "inbound", T0)
    deltas.fact("io.leadstream.touch.recorded.v1", "outbound", T0)
    deltas.fact("io.leadstream.prospect.added.v1", "outbound", T0)  # a prospect record is no effort
    days, to_sql, effort = deltas.rows()
    assert [(d["day"], d["entrants"], d["fit_ab"], d["sql"]) for d in days] == [(date(2026, 9, 28), 1, 1, 1)]
    assert to_sql == [{"day": date(2026, 9, 28), "entry_motion": "inbound", "motion": "inbound", "days": 3,
                       "contacts": 1}]
    assert effort == [{"day": date(2026, 10, 1), "motion": "inbound", "forms": 1, "touches": 0},
                      {"day": date(2026, 10, 1), "motion": "outbound", "forms": 0, "touches": 1}]
