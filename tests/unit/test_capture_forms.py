"""Capture's form rules: flat names, consent values, spam verdict (pure, no app)."""

from __future__ import annotations

import pytest

from services.capture.forms import (
    Form, InvalidSubmission, consent_value, cors_headers, flat_name, flatten, judge_lead, lead_of, spam_verdict,
)
from services.capture.schemas import LeadIn

FORM = Form(id="demo-request", form_type="demo_request", allowed_origins=["https://www.example.com/"],
            thank_you_url="https://www.example.com/thanks", honeypot="website_url")
ANY_ORIGIN = FORM.model_copy(update={"allowed_origins": ["*"], "honeypot": None})


@pytest.mark.parametrize("submitted,expected", [
    ({"email": "a@b.co"}, {"email": "a@b.co", "utm": {}, "fields": {}}),
    ({"email": ""}, {"email": "", "utm": {}, "fields": {}}),  # a blank email stays, so it is named
    ({"email": "a@b.co", "company": "", "title": "CTO"}, {"email": "a@b.co", "title": "CTO", "utm": {}, "fields": {}}),
    # the honeypot is left out
    ({"email": "a@b.co", "website_url": "http://spam"}, {"email": "a@b.co", "utm": {}, "fields": {}}),
    ({"email": "a@b.co", "utm_source": "google", "utm_content": "hero"},
     {"email": "a@b.co", "utm": {"source": "google", "content": "hero"}, "fields": {}}),
    ({"email": "a@b.co", "fields[use case]": "analytics", "colour": "blue"},
     {"email": "a@b.co", "utm": {}, "fields": {"use case": "analytics", "colour": "blue"}}),
    ({"email": "a@b.co", "consent_marketing": "on", "consent_text": "I agree"},
     {"email": "a@b.co", "utm": {}, "fields": {}, "consent": {"marketing": True, "text": "I agree"}}),
    # an unticked checkbox sends nothing: consent text alone is marketing: false
    ({"email": "a@b.co", "consent_text": "I agree"},
     {"email": "a@b.co", "utm": {}, "fields": {}, "consent": {"marketing": False, "text": "I agree"}}),
    ({"email": "a@b.co", "utm": "x", "consent": "y"},  # nested names sent flat are custom fields
     {"email": "a@b.co", "utm": {}, "fields": {"utm": "x", "consent": "y"}}),
])
def test_flatten(submitted, expected):
    assert flatten(FORM, submitted) == expected


@pytest.mark.parametrize("value,expected", [
    ("on", True), ("YES", True), (" 1 ", True), ("true", True),
    ("off", False), ("No", False), ("0", False), ("false", False), (False, False),
    ("maybe", "maybe"), ("", ""),
])
def test_consent_value(value, expected):
    assert consent_value(value) == expected


@pytest.mark.parametrize("field,flat", [
    ("utm.source", "utm_source"), ("utm.term", "utm_term"), ("consent.marketing", "consent_marketing"),
    ("consent.text", "consent_text"), ("email", "email"), ("fields.x", "fields.x"),
])
def test_flat_name(field, flat):
    assert flat_name(field) == flat


def test_lead_of_names_the_forms_own_inputs():
    lead = lead_of(FORM, {"email": "a@b.co", "consent_marketing": "yes", "employees": "12"})
    assert (lead.email, lead.consent.marketing, lead.employees) == ("a@b.co", True, 12)
    with pytest.raises(InvalidSubmission) as caught:
        lead_of(FORM, {"email": "nope", "utm_medium": "x" * 300, "consent_marketing": "maybe"})
    assert sorted(e["field"] for e in caught.value.errors) == ["consent_marketing", "email", "utm_medium"]


@pytest.mark.parametrize("form,honeypot,origin,verdict", [
    (FORM, None, None, None),  # server-to-server: no Origin
    (FORM, "", "https://www.example.com", None),
    (FORM, "   ", "https://www.example.com/", None),  # whitespace is not a filled honeypot
    (FORM, "http://buy.example", "https://www.example.com", "honeypot field 'website_url' filled"),
    (FORM, None, "https://evil.example", "origin 'https://evil.example' not allowed for form 'demo-request'"),
    # the honeypot is named first when both fail
    (FORM, "x", "https://evil.example", "honeypot field 'website_url' filled"),
    (ANY_ORIGIN, "x", "https://anything.example", None),  # no honeypot declared, any origin
])
def test_spam_verdict(form, honeypot, origin, verdict):
    assert spam_verdict(form, honeypot, origin) == verdict


@pytest.mark.parametrize("origin,headers", [
    ("https://www.example.com", {"Access-Control-Allow-Origin": "https://www.example.com", "Vary": "Origin"}),
    ("https://evil.example", {"Vary": "Origin"}),
    (None, {"Vary": "Origin"}),
])
def test_cors_headers(origin, headers):
    assert cors_headers(FORM, origin) == headers


DECLARED = {FORM.id: FORM}


@pytest.mark.parametrize("lead,origin,form,verdict", [
    ({"email": "a@b.co"}, "https://evil.example", None, None),  # no form named
    ({"email": "a@b.co", "form_id": "partner-portal"}, "https://evil.example", None, None),  # not declared: as sent
    ({"email": "a@b.co", "form_id": "demo-request"}, None, FORM, None),
    ({"email": "a@b.co", "form_id": "demo-request", "fields": {"website_url": ""}}, "https://www.example.com",
     FORM, None),
    ({"email": "a@b.co", "form_id": "demo-request", "fields": {"website_url": "http://spam"}}, None,
     FORM, "honeypot field 'website_url' filled"),
    ({"email": "a@b.co", "form_id": "demo-request"}, "https://evil.example",
     FORM, "origin 'https://evil.example' not allowed for form 'demo-request'"),
])
def test_judge_lead(lead, origin, form, verdict):
    assert judge_lead(DECLARED, LeadIn.model_validate(lead), origin) == (form, verdict)
