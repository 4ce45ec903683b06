"""The policy file: the shipped one loads; a broken one names its line."""

from decimal import Decimal
from pathlib import Path

import pytest

from services.qualification.domain.policy import (
    FORM_TYPES,
    OUTCOMES,
    PolicyError,
    PolicySet,
    load_policies,
    parse_policies,
)

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config" / "scoring.yaml"


def test_the_shipped_policy_loads():
    policy = load_policies(SHIPPED)
    assert isinstance(policy, PolicySet)
    assert policy.version
    assert policy.half_life_days > 0
    assert policy.inbound.mql and policy.inbound.sql
    assert policy.outbound.mql and policy.outbound.sql


def test_the_shipped_policy_weighs_every_signal():
    policy = load_policies(SHIPPED)
    assert set(policy.inbound.weights) == set(FORM_TYPES)
    assert set(policy.outbound.weights) == set(OUTCOMES)


def test_the_shipped_weights_follow_intent_and_signal():
    policy = load_policies(SHIPPED)
    inbound, outbound = policy.inbound.weights, policy.outbound.weights
    assert min(inbound[t] for t in ("demo_request", "contact_sales", "pricing", "trial_signup")) > inbound["webinar"]
    assert inbound["webinar"] > inbound["content_download"] > inbound["newsletter"]
    assert (
        outbound["meeting_booked"] > outbound["positive_reply"] > outbound["connected"]
        > outbound["clicked"] > outbound["opened"]
    )
    assert outbound["sent"] == outbound["delivered"] == 0


VALID = SHIPPED.read_text()


def _replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("broken", "needle", "says"),
    [
        (_replace("    demo_request: 60\n", "    demo_requst: 60\n"), "demo_requst: 60", "demo_requst"),
        (
            _replace("    meeting_booked: 100\n", "    meeting_booked: lots\n"),
            "meeting_booked: lots",
            "outbound.weights.meeting_booked",
        ),
        (_replace("half_life_days: 30", "half_life_days: 0"), "half_life_days: 0", "half_life_days"),
        (_replace("half_life_days: 30", "half_lif_days: 30"), "half_lif_days: 30", "unknown field"),
        (_replace('version: "2026-11-25.1"', "version: 2026.11"), "version: 2026.11", "quote it"),
        (_replace("    - {min: 50, max: 199, points: 20}", "    - {min: 50, max: 250, points: 20}"),
         "  employees:", "overlap"),
        (_replace("    - {min: 50, max: 199, points: 20}", "    - {min: 50, max: 20, points: 20}"),
         "{min: 50, max: 20", "below min"),
        (_replace("grades: {A: 80, B: 65", "grades: {A: 60, B: 65"), "grades:", "fall strictly"),
        (_replace("      any_signal: [meeting_booked]", "      any_signal: [meeting_bookd]"),
         "any_signal: [meeting_bookd]", "meeting_bookd"),
        (_replace("      fields: [company, title, employees]", "      fields: [company, job]"),
         "fields: [company, job]", "fields.1"),
        (_replace("    - name: c_level\n", "    - name: board\n"), "name: board", "seniority.0.name"),
        (_replace("DK, Denmark, \"NO\", Norway", "DK, Denmark, NO, Norway"),
         "DK, Denmark, NO, Norway", "YAML read False"),
        (_replace("  free_mail_penalty: 20\n", "  free_mail_penalty: 20\n  free_mail_penalty: 10\n"),
         "free_mail_penalty: 10", "duplicate key"),
        (_replace("  weights:\n    demo_request: 60", "  weights:\n   demo_request: 60"),
         "contact_sales: 60", "invalid YAML"),
    ],
)
def test_a_broken_policy_names_its_line(broken, needle, says):
    with pytest.raises(PolicyError) as raised:
        parse_policies(broken, "scoring.yaml")
    message = str(raised.value)
    line = _line_of(broken, needle)
    assert f"scoring.yaml:{line}:" in message, message
    assert says in message, message


def test_a_missing_section_names_the_parent():
    broken = _replace("  mql:\n    - name: engaged_fit\n      min_fit: 35\n      min_engagement: 35\n", "")
    with pytest.raises(PolicyError) as raised:
        parse_policies(broken, "scoring.yaml")
    assert "outbound.mql: Field required" in str(raised.value)
    assert f"scoring.yaml:{_line_of(broken, 'outbound:')}:" in str(raised.value)


def test_every_problem_is_listed_with_its_line():
    broken = _replace("    pricing: 50\n", "    pricing: high\n").replace("    opened: 2\n", "    opened: -500\n", 1)
    with pytest.raises(PolicyError) as raised:
        parse_policies(broken, "scoring.yaml")
    lines = [line for line, _ in raised.value.problems]
    assert lines == [_line_of(broken, "pricing: high"), _line_of(broken, "opened: -500")]


@pytest.mark.parametrize("text", ["", "just a string", "- a\n- list\n"])
def test_a_policy_file_must_be_a_mapping(text):
    with pytest.raises(PolicyError, match=":1:"):
        parse_policies(text, "scoring.yaml")


def test_a_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policies(tmp_path / "nope.yaml")


def test_a_minimal_policy_is_enough():
    policy = parse_policies(
        """
version: "1"
half_life_days: 14
fit:
  grades: {A: 50, F: 0}
inbound:
  weights: {demo_request: 50}
  mql: [{name: any, min_engagement: 10}]
  sql: [{name: demo, any_signal: [demo_request]}]
outbound:
  weights: {meeting_booked: 100}
  mql: [{name: any, min_engagement: 10}]
  sql: [{name: meeting, any_signal: [meeting_booked]}]
"""
    )
    assert policy.fit.grade(49) == "F" and policy.fit.grade(50) == "A"
    assert policy.for_motion("outbound").weights["meeting_booked"] == 100
    with pytest.raises(ValueError):
        policy.for_motion("blended")


EXPECTED = "\nexpected_amounts:\n  inbound: 12000\n  outbound: \"30000.50\"\n"


def test_expected_amounts_are_read_per_motion():
    policy = parse_policies(SHIPPED.read_text(encoding="utf-8") + EXPECTED, "scoring.yaml")
    amounts = policy.expected_amounts
    assert (amounts.for_motion("inbound"), amounts.for_motion("outbound")) == (12000, Decimal("30000.50"))
    assert amounts.for_motion("blended") is None and amounts.for_motion("nonsense") is None
    assert load_policies(SHIPPED).expected_amounts.model_dump() == {"inbound": None, "outbound": None, "blended": None}


@pytest.mark.parametrize(("section", "needle", "says"), [
    ("expected_amounts:\n  inbound: -5\n", "inbound: -5", "expected_amounts.inbound: Input should be greater than 0"),
    ("expected_amounts:\n  inbound: lots\n", "inbound: lots", "valid decimal"),
    ("expected_amounts:\n  outbound: 12345678901234\n", "outbound: 1234", "13 digits before the decimal point"),
    ("expected_amounts:\n  partners: 5\n", "partners: 5", "unknown field"),
])
def test_a_bad_expected_amount_names_its_line(section, needle, says):
    broken = SHIPPED.read_text(encoding="utf-8") + "\n" + section
    with pytest.raises(PolicyError) as raised:
        parse_policies(broken, "scoring.yaml")
    message = str(raised.value)
    assert f"scoring.yaml:{_line_of(broken, needle)}:" in message and says in message, message


def test_a_file_that_is_not_utf8_or_uses_aliases_is_a_policy_error(tmp_path):
    path = tmp_path / "scoring.yaml"
    path.write_bytes(b'version: "1"\n# caf\xe9\n')
    with pytest.raises(PolicyError, match=r"scoring.yaml:2: the policy file is not UTF-8 text \(byte 0xe9"):
        load_policies(path)
    with pytest.raises(PolicyError, match=r"<policy>:2: invalid policy: YAML anchors and aliases"):
        parse_policies('version: "1"\nfit: &fit {}\ninbound: *fit\n')
