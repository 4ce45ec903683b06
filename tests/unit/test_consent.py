"""The consent ledger's rules: what a fact adds (qualification's ``domain/consent.py``) and a
person's current consent per purpose (``shared/consent.py``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import permutations

import pytest

from services.qualification.domain.consent import ConsentFact, of_lead, of_touch
from shared.consent import current_state, in_ledger_order
from shared.events import OUTCOMES, Consent

AT = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("consent", "form_id", "expected"), [
    (Consent(marketing=True, text="I agree."), "demo-request", ("granted", "I agree.", "form:demo-request")),
    (Consent(marketing=True), None, ("granted", None, "form")),
    (Consent(marketing=False, text="I agree."), "newsletter", ("withdrawn", "I agree.", "form:newsletter")),
    (Consent(marketing=False), None, ("withdrawn", None, "form")),
])
def test_a_form_grants_or_withdraws_marketing(consent, form_id, expected):
    (fact,) = of_lead(consent, form_id, "e-1", AT)
    assert fact == ConsentFact("marketing", expected[0], expected[1], expected[2], AT, "e-1")


@pytest.mark.parametrize("consent", [None, Consent(), Consent(text="I agree.")])
def test_a_form_that_did_not_ask_says_nothing(consent):
    assert of_lead(consent, "demo-request", "e-1", AT) == []


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_only_an_unsubscribed_touch_withdraws(outcome):
    facts = of_touch(outcome, "cold_call", "e-2", AT)
    if outcome == "unsubscribed":
        assert facts == [ConsentFact("marketing", "withdrawn", None, "outreach:cold_call", AT, "e-2")]
    else:
        assert facts == []


def entry(status: str, minutes: int, event_id: str, purpose: str = "marketing") -> dict:
    return {"purpose": purpose, "status": status, "occurred_at": AT + timedelta(minutes=minutes),
            "cause_event_id": event_id}


@pytest.mark.parametrize(("entries", "expected"), [
    ([], {}),
    ([entry("granted", 0, "a")], {"marketing": "granted"}),
    ([entry("granted", 0, "a"), entry("withdrawn", 5, "b")], {"marketing": "withdrawn"}),
    ([entry("withdrawn", 0, "a"), entry("granted", 5, "b")], {"marketing": "granted"}),  # a new opt-in
    ([entry("granted", 5, "z"), entry("withdrawn", 5, "a")], {"marketing": "withdrawn"}),  # a tie: not contacted
    ([entry("granted", 0, "a"), entry("withdrawn", 1, "b", "sales")], {"marketing": "granted", "sales": "withdrawn"}),
])
def test_the_current_state_is_the_latest_word_per_purpose(entries, expected):
    assert {p: e["status"] for p, e in current_state(entries).items()} == expected


def test_the_order_does_not_depend_on_arrival():
    entries = [entry("granted", 0, "a"), entry("withdrawn", 3, "b"), entry("granted", 3, "c"), entry("granted", 9, "d")]
    orders = {tuple(e["cause_event_id"] for e in in_ledger_order(p)) for p in permutations(entries)}
    assert orders == {("a", "c", "b", "d")}


def test_naive_times_are_utc():
    # SQLite gives naive datetimes back: a stored entry and one added in the transaction compare
    stored = entry("granted", 0, "a") | {"occurred_at": AT.replace(tzinfo=None)}
    added = entry("withdrawn", 1, "b")
    assert current_state([added, stored])["marketing"] is added
