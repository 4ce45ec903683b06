"""docs/events/asyncapi.yaml: the contract downstream teams read, true to the code."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal

import jsonschema
import pytest
import yaml

from shared.asyncapi import event_validator, render
from shared.events import (
    ALL_TOPICS,
    CONTACT_ERASED,
    ERASURE_COMPLETED,
    ERASURE_REQUESTED,
    EVENT_TYPES,
    LEAD_CAPTURED,
    OPPORTUNITY_QUALIFIED,
    PROSPECT_ADDED,
    STAGE_CHANGED,
    SUPPRESSION_LIFTED,
    TOUCH_RECORDED,
    AccountOut,
    ConsentEntryOut,
    ConsentStateOut,
    ContactErased,
    ContactOut,
    ErasureCompleted,
    ErasureRequested,
    LeadCaptured,
    OpportunityQualified,
    ProspectAdded,
    ScoreOut,
    ScoreReason,
    StageChanged,
    SuppressionLifted,
    TouchOut,
    TouchRecorded,
    make_event,
)
from tests.support import ROOT

CONTRACT = ROOT / "docs" / "events" / "asyncapi.yaml"
AT = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)

EXAMPLES = {
    LEAD_CAPTURED: LeadCaptured(email="ada@acme.io", first_name="Ada", employees=120, form_type="demo_request",
                                fields={"plan": "pro"}, occurred_at=AT),
    PROSPECT_ADDED: ProspectAdded(email="grace@navy.mil", tags=["icp"], occurred_at=AT),
    TOUCH_RECORDED: TouchRecorded(email="grace@navy.mil", channel="cold_email", outcome="positive_reply", step=2,
                                  occurred_at=AT),
    OPPORTUNITY_QUALIFIED: OpportunityQualified(
        opportunity_id="o-1", contact=ContactOut(id="c-1", email="ada@acme.io"), account=AccountOut(domain="acme.io"),
        motion="blended", first_touch=TouchOut(motion="inbound", channel="paid_search", occurred_at=AT),
        fit=ScoreOut(score=80, reasons=[ScoreReason(rule="title.vp", points=20)], grade="A"),
        engagement=ScoreOut(score=55.5), policy_version="2026-01", qualified_at=AT, caused_by=["e-1"],
        consents=[ConsentEntryOut(purpose="marketing", status="granted", text="I agree to product news.",
                                  source="form:demo-request", occurred_at=AT, cause_event_id="e-1")],
        consent_state={"marketing": ConsentStateOut(status="granted", since=AT, source="form:demo-request")}),
    STAGE_CHANGED: StageChanged(contact_id="c-1", email="ada@acme.io", to_stage="customer", amount=Decimal("1200.50"),
                                changed_by="sales", changed_at=AT),
    CONTACT_ERASED: ContactErased(contact_id="c-1", erased_at=AT),
    ERASURE_REQUESTED: ErasureRequested(erasure_id="e-1", subject="ab" * 32, requested_at=AT),
    ERASURE_COMPLETED: ErasureCompleted(erasure_id="e-1", subject="ab" * 32, store="capture", records=2,
                                        completed_at=AT),
    SUPPRESSION_LIFTED: SuppressionLifted(subject="ab" * 32, lifted_at=AT),
}


def test_the_committed_contract_is_what_the_code_generates():
    assert CONTRACT.read_text() == render(), (
        "docs/events/asyncapi.yaml disagrees with the event models: "
        "run `.venv/bin/leadstream events asyncapi > docs/events/asyncapi.yaml`")


def test_the_command_prints_the_contract():
    printed = subprocess.run([sys.executable, "-m", "leadstream.cli", "events", "asyncapi"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=60)
    assert printed.stdout == CONTRACT.read_text()


def test_the_contract_is_a_valid_asyncapi_3_document():
    schema = json.loads((ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json").read_text())
    document = yaml.safe_load(CONTRACT.read_text())
    jsonschema.Draft7Validator(schema).validate(document)
    broken = {k: v for k, v in document.items() if k != "info"}
    with pytest.raises(jsonschema.ValidationError, match="info"):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_every_topic_and_event_type_is_in_the_contract_with_its_key_and_headers():
    document = yaml.safe_load(CONTRACT.read_text())
    assert set(document["channels"]) == set(ALL_TOPICS)
    named = {m["name"] for m in document["components"]["messages"].values()}
    assert named == set(EVENT_TYPES)
    for topic in ALL_TOPICS:
        for ref in document["channels"][topic]["messages"].values():
            message = document["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            assert EVENT_TYPES[message["name"]][0] == topic.removesuffix(".dlq")
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            headers = message["headers"]["properties"]
            assert headers["content-type"] == {"const": "application/cloudevents+json"}
            assert ("dlq-reason" in headers) == topic.endswith(".dlq")


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_each_event_as_producers_write_it_matches_its_schema(event_type):
    event = make_event(event_type, EXAMPLES[event_type], source="/leadstream/test", subject="ada@acme.io", time=AT,
                       traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    event_validator(event_type).validate(json.loads(event.to_bytes()))


@pytest.mark.parametrize(("event_type", "breakage", "where"), [
    (LEAD_CAPTURED, lambda e: e["data"].pop("email"), "email"),
    (LEAD_CAPTURED, lambda e: e["data"].update(form_type="fax"), "form_type"),
    (TOUCH_RECORDED, lambda e: e["data"].update(outcome="maybe"), "outcome"),
    (OPPORTUNITY_QUALIFIED, lambda e: e["data"]["fit"].pop("score"), "score"),
    (STAGE_CHANGED, lambda e: e.update(type=LEAD_CAPTURED), "type"),
    (STAGE_CHANGED, lambda e: e.pop("id"), "id"),
])
def test_an_event_that_breaks_the_contract_is_caught(event_type, breakage, where):
    event = json.loads(
        make_event(event_type, EXAMPLES[event_type], source="/t", subject="ada@acme.io", time=AT).to_bytes()
    )
    breakage(event)
    errors = list(event_validator(event_type).iter_errors(event))
    assert errors
    assert any(where in (list(e.absolute_path) + [e.message]) or where in e.message for e in errors), errors
