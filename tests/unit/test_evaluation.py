"""Qualification's pure evaluation (``domain/evaluation.py``) and derived ids (``domain/ids.py``):
attribution with prospect records, the profile a fit score reads, the evaluation after a
fact, the replay of a history under a policy, and what an opportunity names as its causes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.qualification.domain import ids
from services.qualification.domain.attribution import Touch
from services.qualification.domain.evaluation import (
    CAUSED_BY_LIMIT, attribute, caused_by, evaluate, fit_reasons, profile, reasons_of, replay_timeline,
)
from services.qualification.domain.policy import load_policies

POLICY = load_policies(Path(__file__).resolve().parents[2] / "deploy" / "config" / "scoring.yaml")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
IDEAL = {"company": "Acme", "title": "VP Sales", "employees": 500, "industry": "SaaS", "country": "US"}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def prospect(hours: float = 0, event_id: str = "p") -> Touch:
    return Touch("outbound", "other", at(hours), campaign="list", event_id=event_id)


def lead(form_type: str, hours: float, event_id: str, channel: str = "paid_search") -> Touch:
    return Touch("inbound", channel, at(hours), campaign="brand", form_type=form_type, event_id=event_id)


def touch(outcome: str, hours: float, event_id: str) -> Touch:
    return Touch("outbound", "cold_email", at(hours), sequence="q4", event_id=event_id, outcome=outcome)


# ------------------------------------------------------------------ attribution


@pytest.mark.parametrize(
    ("facts", "real", "qualified_at", "motion", "first", "last"),
    [
        # a prospect record counts for the motion, not for the touches when real ones exist
        ([prospect(0), touch("replied", 1, "t1")], {"t1"}, None, "outbound", "t1", "t1"),
        ([prospect(0)], set(), None, "outbound", "p", "p"),  # only a prospect record: it is both
        ([lead("newsletter", 0, "l1"), touch("replied", 1, "t1")], {"l1", "t1"}, None, "blended", "l1", "t1"),
        # after qualification: the motion and the last touch are those before it
        ([lead("demo_request", 0, "l1"), touch("replied", 2, "t1")], {"l1", "t1"}, at(1), "inbound", "l1", "l1"),
    ],
)
def test_attribute(facts, real, qualified_at, motion, first, last):
    found = attribute(facts, real, qualified_at)
    assert (found[0], found[1].event_id, found[2].event_id) == (motion, first, last)


def test_profile_takes_the_contacts_values_then_its_accounts():
    firmographics = {"title": {"value": "CTO", "source": "lead", "at": T0.isoformat()}, "company": "Acme Inc"}
    account = {"domain": "acme.com", "company": "Acme", "employees": 250, "industry": None}
    assert profile(firmographics, account) == {"title": "CTO", "company": "Acme Inc", "employees": 250}
    assert profile(None, {}) == {}


# ------------------------------------------------------------------ evaluation


def test_a_demo_request_from_an_ideal_business_contact_enters_and_qualifies():
    facts = [lead("demo_request", 0, "l1")]
    result = evaluate(POLICY, None, "jo@acme.com", IDEAL, facts, {"l1"}, as_of=at(0), qualified_at=None, flags=set())
    assert result.decision.steps == ("lead", "mql", "sql") and result.decision.qualified
    assert result.motion == "inbound" and result.first.event_id == result.last.event_id == "l1"
    assert result.fit.business_email and result.engagement.points > 0


def test_the_same_facts_from_free_mail_score_a_worse_fit_and_are_no_verified_hand_raiser():
    facts = [lead("demo_request", 0, "l1")]
    business, free = (evaluate(POLICY, None, email, IDEAL, facts, {"l1"}, as_of=at(0), qualified_at=None,
                               flags=set()) for email in ("jo@acme.com", "jo@gmail.com"))
    assert free.fit.points < business.fit.points and not free.fit.business_email
    assert business.decision.rule == "inbound.sql.hand_raiser" != free.decision.rule


def test_a_suppressing_outcome_never_qualifies():
    facts = [prospect(0), touch("meeting_booked", 1, "t1"), touch("unsubscribed", 2, "t2")]
    result = evaluate(POLICY, "prospect", "jo@acme.com", IDEAL, facts, {"t1", "t2"}, as_of=at(2),
                      qualified_at=None, flags={"unsubscribed"})
    assert result.decision.steps == ("disqualified",) and result.decision.unsubscribed


# ------------------------------------------------------------------ replay


def test_replay_reports_the_furthest_stage_reached_and_when():
    facts = [prospect(0), touch("sent", 1, "t1"), touch("positive_reply", 2, "t2"), touch("not_interested", 3, "t3")]
    result, furthest, reached_at = replay_timeline(POLICY, "jo@acme.com", IDEAL, facts, {"t1", "t2", "t3"})
    assert furthest == "sql" and reached_at == at(2)  # the later opt-out does not take it back
    assert result.decision.to_stage == "sql"  # the final evaluation: nothing moves a contact out of sql


def test_replay_of_a_history_that_reaches_nothing():
    facts = [prospect(0), touch("sent", 1, "t1")]
    _, furthest, reached_at = replay_timeline(POLICY, "jo@gmail.com", {}, facts, {"t1"})
    assert furthest == "prospect" and reached_at == at(0)


# ------------------------------------------------------------------ causes and reasons


def test_caused_by_names_the_facts_up_to_qualification_and_its_cause():
    facts = [touch("sent", h, f"t{h}") for h in range(3)]
    assert caused_by(facts, "t1", at(1)) == ["t0", "t1"]
    assert caused_by(facts, "late", at(1)) == ["t0", "t1", "late"]  # the cause, even if not among them
    assert caused_by(facts, None, at(9)) == ["t0", "t1", "t2"]  # a re-score is no event
    many = [touch("sent", h / 100, f"m{h}") for h in range(CAUSED_BY_LIMIT + 50)]
    assert caused_by(many, None, at(9)) == [f.event_id for f in many][-CAUSED_BY_LIMIT:]


def test_reasons_in_their_stored_form():
    expected = [{"rule": "title", "points": 10.0}, {"rule": "size", "points": 5.0}]
    assert reasons_of([("title", 10), {"rule": "size", "points": "5"}]) == expected
    assert fit_reasons((("title", 10), ("size", 5))) is fit_reasons((("title", 10), ("size", 5)))  # shared
    assert reasons_of(None) == []


# ------------------------------------------------------------------ derived ids


def test_ids_are_derived_from_their_cause():
    assert ids.contact_id("jo@acme.com") == str(uuid.uuid5(ids.NAMESPACE, "contact|jo@acme.com"))
    assert ids.stage_changed_id("c1", "e1", None, "lead") == ids.derived_id("stage.changed", "c1", "e1", "", "lead")
    assert ids.stage_changed_id("c1", "e1", "lead", "mql") != ids.stage_changed_id("c1", "e2", "lead", "mql")
    assert ids.opportunity_id("c1") != ids.opportunity_qualified_id("c1", "e1")
    assert ids.opportunity_id("c1") == ids.derived_id("opportunity", "c1")


def test_a_qualification_and_an_erasure_are_identified_by_their_cause_too():
    """The same contact id qualified or erased again (erased, then back through a new opt-in)
    is a new event; the same cause derives the same id (replay, redelivery)."""
    assert ids.opportunity_qualified_id("c1", "e1") == ids.derived_id("opportunity.qualified", "c1", "e1")
    assert ids.opportunity_qualified_id("c1", "e1") != ids.opportunity_qualified_id("c1", "e2")
    assert ids.contact_erased_id("c1", "x1") == ids.derived_id("contact.erased", "c1", "x1")
    assert ids.contact_erased_id("c1", "x1") != ids.contact_erased_id("c1", "x2")


def test_a_rescore_is_no_events_cause():
    assert ids.event_cause(ids.rescore_cause("2026-12")) is None
    assert ids.event_cause("a6f1c1d2-event") == "a6f1c1d2-event"
