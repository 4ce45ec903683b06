"""Fit and engagement scores under the shipped policy."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.qualification.domain.attribution import Touch
from services.qualification.domain.policy import load_policies
from services.qualification.domain.scoring import (
    Reason,
    decayed,
    employee_count,
    engagement_score,
    fit_score,
)

POLICY = load_policies(Path(__file__).resolve().parents[2] / "deploy" / "config" / "scoring.yaml")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HALF_LIFE = timedelta(days=POLICY.half_life_days)

IDEAL = {
    "company": "Acme",
    "title": "VP of Marketing",
    "industry": "Computer Software",
    "employees": 500,
    "country": "United States",
}


def inbound(form_type: str, ago: timedelta = timedelta(0)) -> Touch:
    return Touch("inbound", "organic_search", NOW - ago, form_type=form_type)


def outbound(outcome: str, ago: timedelta = timedelta(0)) -> Touch:
    return Touch("outbound", "cold_email", NOW - ago, outcome=outcome)


def test_an_ideal_contact_fits_with_grade_a():
    fit = fit_score(IDEAL, "jo@acme.com", POLICY)
    assert fit.grade == "A"
    assert fit.points == 100
    assert set(fit.reasons) == {
        Reason("fit.industry.software", 25),
        Reason("fit.employees.200-999", 25),
        Reason("fit.country.core_markets", 15),
        Reason("fit.seniority.vp", 20),
        Reason("fit.department.marketing", 15),
    }
    assert fit.business_email is True
    assert fit.fields == frozenset(IDEAL)
    assert fit.policy_version == POLICY.version


@pytest.mark.parametrize(
    ("title", "seniority", "department"),
    [
        ("Vice President, Sales", "vp", "sales"),
        ("Chief Executive Officer", "c_level", None),
        ("CEO & Co-Founder", "c_level", None),
        ("Head of Growth", "vp", "marketing"),
        ("Director of Sales Operations", "director", "revops"),
        ("Senior Director, Demand Generation", "director", "marketing"),
        ("Managing Director", "c_level", None),
        ("Marketing Manager", "manager", "marketing"),
        ("SDR", "individual_contributor", "sales"),
        ("Executive Assistant to the CEO", "individual_contributor", None),
        ("Software Engineer", "individual_contributor", None),
        ("Chef", None, None),
        ("", None, None),
    ],
)
def test_title_seniority_and_department(title, seniority, department):
    rules = {reason.rule for reason in fit_score({"title": title}, "jo@acme.com", POLICY).reasons}
    assert {r for r in rules if r.startswith("fit.seniority.")} == (
        {f"fit.seniority.{seniority}"} if seniority else set())
    assert {r for r in rules if r.startswith("fit.department.")} == (
        {f"fit.department.{department}"} if department else set())


@pytest.mark.parametrize(
    ("value", "count"),
    [(250, 250), ("1,000", 1000), ("51-200", 51), ("10000+", 10000), ("about 40", 40), ("", None), (None, None),
     (True, None), (12.7, 12)],
)
def test_employee_count(value, count):
    assert employee_count(value) == count


@pytest.mark.parametrize(
    ("employees", "rule", "points"),
    [(5, "fit.employees.1-9", -10), (49, "fit.employees.10-49", 5), (50, "fit.employees.50-199", 20),
     (5000, "fit.employees.1000-5000", 20), (20000, "fit.employees.5001+", 10)],
)
def test_employee_bands(employees, rule, points):
    assert fit_score({"employees": employees}, "jo@acme.com", POLICY).reasons == (Reason(rule, points),)


def test_free_mail_costs_points_and_is_clamped_at_zero():
    fit = fit_score({}, "jo@gmail.com", POLICY)
    assert fit.reasons == (Reason("fit.free_mail", -20),)
    assert fit.points == 0 and fit.grade == "F"
    assert fit.business_email is False
    assert fit_score(IDEAL, "jo@googlemail.com", POLICY).points == 80


def test_fit_reads_merged_firmographics():
    merged = {
        field: {"value": value, "source": "lead.captured", "at": NOW.isoformat()} for field, value in IDEAL.items()
    }
    assert fit_score(merged, "jo@acme.com", POLICY) == fit_score(IDEAL, "jo@acme.com", POLICY)


@pytest.mark.parametrize(
    ("points", "grade"),
    [(100, "A"), (80, "A"), (79, "B"), (65, "B"), (50, "C"), (35, "D"), (20, "E"), (19, "F"), (0, "F")],
)
def test_grade_table(points, grade):
    assert POLICY.fit.grade(points) == grade


@pytest.mark.parametrize(
    ("half_lives", "expected"),
    [(0, 60), (1, 30), (2, 15), (3, 8)],  # 7.5 rounds to 8
)
def test_engagement_decays_with_the_half_life(half_lives, expected):
    score = engagement_score([inbound("demo_request", HALF_LIFE * half_lives)], NOW, POLICY)
    assert score.points == expected
    assert score.reasons == (Reason("inbound.form_type.demo_request", expected),)


@pytest.mark.parametrize(("age_days", "factor"), [(0, 1.0), (30, 0.5), (60, 0.25), (-5, 1.0)])
def test_decayed(age_days, factor):
    assert decayed(100, age_days, 30) == pytest.approx(100 * factor)


@pytest.mark.parametrize(
    ("touches", "points"),
    [
        ([inbound("newsletter")], 3),
        ([inbound("newsletter")] * 5, 6),  # capped
        ([inbound("content_download")], 12),
        ([inbound("content_download")] * 10, 36),  # capped
        ([inbound("webinar"), inbound("pricing")], 75),
        ([inbound("demo_request"), inbound("contact_sales")], 100),  # clamped at 100
        ([outbound("opened")] * 100, 10),
        ([outbound("clicked")] * 100 + [outbound("opened")] * 100, 30),
        ([outbound("sent"), outbound("delivered")], 0),
        ([outbound("bounced"), outbound("unsubscribed"), outbound("not_interested")], 0),
        ([outbound("meeting_booked")], 100),
        ([outbound("connected"), inbound("webinar")], 50),  # blended: each by its own motion
        ([], 0),
    ],
)
def test_engagement_points(touches, points):
    assert engagement_score(touches, NOW, POLICY).points == points


def test_engagement_signals_and_zero_reasons():
    score = engagement_score([outbound("sent"), outbound("opened"), inbound("newsletter")], NOW, POLICY)
    assert score.signals == {("outbound", "sent"), ("outbound", "opened"), ("inbound", "newsletter")}
    assert {r.rule for r in score.reasons} == {"outbound.outcome.opened", "inbound.form_type.newsletter"}


def test_engagement_since_ignores_older_touches():
    touches = [outbound("positive_reply", timedelta(days=10)), outbound("clicked", timedelta(days=1))]
    score = engagement_score(touches, NOW, POLICY, since=NOW - timedelta(days=5))
    assert score.signals == {("outbound", "clicked")}


def test_engagement_accepts_mappings_and_naive_times():
    touch = {"motion": "inbound", "form_type": "pricing", "occurred_at": NOW.replace(tzinfo=None)}
    assert engagement_score([touch], NOW, POLICY).points == 50
