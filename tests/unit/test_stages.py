"""The lifecycle: automatic qualification (against the shipped policy). Manual moves are
the pipeline's (``tests/unit/test_pipeline_domain.py``)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.qualification.domain.attribution import Touch
from services.qualification.domain.policy import load_policies, parse_policies
from services.qualification.domain.scoring import engagement_score, fit_score
from services.qualification.domain.stages import evaluate

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config" / "scoring.yaml"
POLICY = load_policies(SHIPPED)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

BUSINESS = {"company": "Acme", "title": "Marketing Coordinator", "employees": 12}  # a poor fit, yet complete
IDEAL = {"company": "Acme", "title": "VP Sales", "employees": 500, "industry": "SaaS", "country": "US"}


def inbound(form_type: str, days_ago: float = 0) -> Touch:
    return Touch("inbound", "organic_search", NOW - timedelta(days=days_ago), form_type=form_type)


def outbound(outcome: str, days_ago: float = 0) -> Touch:
    return Touch("outbound", "cold_email", NOW - timedelta(days=days_ago), outcome=outcome)


def decide(stage, motion, firmographics, email, touches, flags=(), policy=POLICY):
    fit = fit_score(firmographics, email, policy)
    engagement = engagement_score(touches, NOW, policy)
    return evaluate(stage, motion, fit, engagement, flags, policy)


# ----------------------------------------------- the spec's default outcomes ----


@pytest.mark.parametrize("form_type", ["demo_request", "contact_sales", "pricing"])
@pytest.mark.parametrize("stage", [None, "lead", "mql"])
def test_a_hand_raiser_from_a_business_address_qualifies_at_once(form_type, stage):
    decision = decide(stage, "inbound", BUSINESS, "jo@acme.com", [inbound(form_type)])
    assert decision.to_stage == "sql"
    assert decision.qualified is True
    assert decision.rule == "inbound.sql.hand_raiser"
    assert decision.policy_version == POLICY.version


@pytest.mark.parametrize(
    ("firmographics", "email"),
    [
        (BUSINESS, "jo@gmail.com"),  # free mail
        ({"company": "Acme", "title": "Coordinator"}, "jo@acme.com"),  # no employee count
        ({"company": "Acme", "employees": 12}, "jo@acme.com"),  # no title
        ({"title": "Coordinator", "employees": 12}, "jo@acme.com"),  # no company
    ],
)
def test_an_unverifiable_hand_raiser_is_an_mql_not_an_sql(firmographics, email):
    decision = decide(None, "inbound", firmographics, email, [inbound("demo_request")])
    assert decision.to_stage == "mql"
    assert decision.qualified is False


@pytest.mark.parametrize("firmographics", [{}, BUSINESS, IDEAL])
@pytest.mark.parametrize("touches", [[inbound("newsletter")], [inbound("content_download")]])
def test_a_newsletter_or_a_single_content_download_alone_never_qualifies(firmographics, touches):
    decision = decide(None, "inbound", firmographics, "jo@acme.com", touches)
    assert decision.steps == ("lead",)
    assert decision.qualified is False


@pytest.mark.parametrize("outcome", ["meeting_booked", "positive_reply"])
@pytest.mark.parametrize("firmographics", [{}, IDEAL])
def test_an_outbound_prospect_qualifies_on_a_meeting_or_a_positive_reply(outcome, firmographics):
    decision = decide("prospect", "outbound", firmographics, "jo@acme.com", [outbound(outcome)])
    assert decision.steps == ("lead", "mql", "sql")
    assert decision.qualified is True
    assert decision.rule == f"outbound.sql.{outcome}"


@pytest.mark.parametrize("many", [1, 10, 1000])
def test_opens_and_clicks_alone_never_qualify_however_many(many):
    touches = [outbound("opened")] * many + [outbound("clicked")] * many
    decision = decide("prospect", "outbound", IDEAL, "jo@acme.com", touches)
    assert decision.to_stage == "lead"  # a click is interest, not qualification
    assert decision.qualified is False


def test_opens_alone_do_not_even_make_a_lead():
    decision = decide("prospect", "outbound", IDEAL, "jo@acme.com", [outbound("opened")] * 50)
    assert decision.steps == ()
    assert decision.to_stage == "prospect"


@pytest.mark.parametrize("outcome", ["bounced", "unsubscribed", "not_interested"])
@pytest.mark.parametrize("history", [[], [outbound("meeting_booked", 1)], [outbound("clicked", 1)] * 20])
def test_bounced_unsubscribed_and_not_interested_never_qualify(outcome, history):
    decision = decide("prospect", "outbound", IDEAL, "jo@acme.com", [*history, outbound(outcome)], {outcome})
    assert decision.qualified is False
    assert "sql" not in decision.steps


@pytest.mark.parametrize(
    ("outcome", "stage", "steps", "email_invalid", "unsubscribed"),
    [
        ("bounced", "prospect", (), True, False),
        ("bounced", "mql", (), True, False),
        ("unsubscribed", "prospect", ("disqualified",), False, True),
        ("unsubscribed", "lead", ("disqualified",), False, True),
        ("unsubscribed", "nurture", ("disqualified",), False, True),
        ("unsubscribed", "sql", (), False, True),  # sales owns it from sql on
        ("not_interested", "prospect", ("nurture",), False, False),
        ("not_interested", "mql", ("nurture",), False, False),
        ("not_interested", "nurture", (), False, False),
        ("not_interested", "opportunity", (), False, False),
        ("unsubscribed", None, ("prospect", "disqualified"), False, True),
    ],
)
def test_outcome_side_effects(outcome, stage, steps, email_invalid, unsubscribed):
    decision = decide(stage, "outbound", IDEAL, "jo@acme.com", [outbound(outcome)], {outcome})
    assert decision.steps == steps
    assert decision.email_invalid is email_invalid
    assert decision.unsubscribed is unsubscribed
    assert decision.rule == f"outcome.{outcome}"


# ---------------------------------------------------- thresholds per motion ----

THRESHOLDS = parse_policies(
    """
version: "t-1"
half_life_days: 30
fit:
  seniority: [{name: vp, points: 60, match: [vp]}]
  grades: {A: 50, F: 0}
inbound:
  weights: {webinar: 30, content_download: 10}
  mql: [{name: inbound_mql, min_fit: 20, min_engagement: 20}]
  sql: [{name: inbound_sql, min_fit: 50, min_engagement: 50}]
outbound:
  weights: {replied: 30, connected: 60}
  lead: [{name: replied, any_signal: [replied, connected]}]
  mql: [{name: outbound_mql, min_fit: 20, min_engagement: 30}]
  sql: [{name: outbound_sql, min_fit: 50, min_engagement: 60}]
"""
)


@pytest.mark.parametrize(
    ("motion", "title", "touches", "to_stage", "rule"),
    [
        ("inbound", "", [inbound("webinar")], "lead", None),  # no fit: below mql
        ("inbound", "VP", [inbound("content_download")], "lead", None),  # engagement 10 < 20
        ("inbound", "VP", [inbound("webinar")], "mql", "inbound.mql.inbound_mql"),
        ("inbound", "VP", [inbound("webinar"), inbound("webinar")], "sql", "inbound.sql.inbound_sql"),
        ("outbound", "VP", [outbound("replied")], "mql", "outbound.mql.outbound_mql"),
        ("outbound", "", [outbound("connected")], "lead", "outbound.lead.replied"),
        ("outbound", "VP", [outbound("connected")], "sql", "outbound.sql.outbound_sql"),
        # 30 meets outbound mql, not inbound sql
        ("outbound", "VP", [inbound("webinar")], "mql", "outbound.mql.outbound_mql"),
        # blended: judged by both policies, the better outcome wins
        ("blended", "VP", [inbound("webinar"), outbound("replied")], "sql", "inbound.sql.inbound_sql"),
        ("blended", "", [outbound("connected")], "lead", "outbound.lead.replied"),
    ],
)
def test_thresholds_per_motion(motion, title, touches, to_stage, rule):
    start = "lead" if motion == "inbound" else "prospect"
    decision = decide(start, motion, {"title": title}, "jo@acme.com", touches, policy=THRESHOLDS)
    assert decision.to_stage == to_stage
    assert decision.rule == rule


def test_the_same_engagement_qualifies_differently_by_motion():
    touches = [inbound("webinar"), inbound("webinar")]  # 60 points
    assert decide("lead", "inbound", {"title": "VP"}, "jo@acme.com", touches, policy=THRESHOLDS).to_stage == "sql"
    assert decide("lead", "outbound", {"title": "VP"}, "jo@acme.com", touches, policy=THRESHOLDS).to_stage == "sql"
    one = [inbound("webinar"), inbound("content_download"), inbound("content_download")]  # 50 points
    assert decide("lead", "inbound", {"title": "VP"}, "jo@acme.com", one, policy=THRESHOLDS).to_stage == "sql"
    assert decide("lead", "outbound", {"title": "VP"}, "jo@acme.com", one, policy=THRESHOLDS).to_stage == "mql"


# ----------------------------------------------------------- only forward ----


@pytest.mark.parametrize(
    ("stage", "steps"),
    [
        (None, ("lead", "mql", "sql")),
        ("prospect", ("lead", "mql", "sql")),
        ("lead", ("mql", "sql")),
        ("mql", ("sql",)),
        ("nurture", ("mql", "sql")),  # a recycled contact re-qualifies on new intent
        ("sql", ()),
        ("opportunity", ()),
        ("customer", ()),
        ("lost", ()),
        ("disqualified", ()),
    ],
)
def test_qualification_only_moves_forward_through_each_stage(stage, steps):
    decision = decide(stage, "inbound", IDEAL, "jo@acme.com", [inbound("demo_request")])
    assert decision.steps == steps
    assert decision.qualified is (steps != () and steps[-1] == "sql")
    assert decision.to_stage == (steps[-1] if steps else stage)


def test_a_weaker_signal_never_moves_a_contact_back():
    decision = decide("mql", "inbound", {}, "jo@gmail.com", [inbound("newsletter")])
    assert decision.steps == () and decision.to_stage == "mql" and not decision.changed


def test_a_nurtured_contact_stays_on_mere_interest():
    decision = decide("nurture", "inbound", {}, "jo@gmail.com", [inbound("newsletter")])
    assert decision.steps == () and decision.to_stage == "nurture"


@pytest.mark.parametrize(("motion", "entry"), [("inbound", "lead"), ("outbound", "prospect"), ("blended", "lead")])
def test_a_new_contact_enters_its_entry_stage(motion, entry):
    decision = decide(None, motion, {}, "jo@acme.com", [])
    assert decision.steps == (entry,)
