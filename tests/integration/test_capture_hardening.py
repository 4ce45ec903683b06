"""Capture under abuse (issue 26): each test sends a probe's reproduction over real HTTP
(uvicorn in-process, with the options ``leadstream serve`` gives it), a real broker and a
real migrated database on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from services.capture.app import create_app
from services.capture.models import CapturedLead, CaptureOutbox
from shared.events import LEADS_CAPTURED
from tests.support import make_settings, read_until_ids, serve_app, serve_over_http

ALLOWED = {"origin": "https://www.example.com"}
SCRIPT = "<script>" + "alert(document.cookie);" * 8 + "</script>"  # the probe's 208-character value


@pytest.fixture
async def capture_settings(broker, database_factory, tmp_path):
    url = await database_factory("capture")

    def settings(**overrides):  # noqa: ANN003, ANN202
        return make_settings(broker.bootstrap, tmp_path, service="capture", capture_database_url=url, **overrides)

    return settings


async def _rows(app) -> list[tuple[str | None, str]]:  # noqa: ANN001
    async with app.state.runtime.db.reader() as s:
        query = select(CapturedLead.client_address, CapturedLead.email).order_by(CapturedLead.received_at)
        rows = await s.execute(query)
    return [tuple(r) for r in rows]


async def _refused_posts(client, n: int, forwarded_for) -> list[int]:  # noqa: ANN001
    codes = []
    for i in range(n):
        response = await client.post("/v1/forms/newsletter/submissions", content=b"email=x@spam.example",
                                     headers={"content-type": "text/plain", "x-forwarded-for": forwarded_for(i)})
        codes.append(response.status_code)
    return codes


async def test_spoofed_forwarded_for_and_refused_posts_do_not_lock_a_form(capture_settings):
    """1,000 refused (415) posts, each with a new X-Forwarded-For, then a real visitor: by
    default no proxy is believed, so the flood counts against its sender's address alone."""
    settings = capture_settings(capture_rate_limit="5/minute", capture_form_rate_limit="5/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        codes = await _refused_posts(client_from("127.0.0.2"), 1000, lambda i: f"10.{i // 250}.{i % 250}.1")
        answer = await client_from("127.0.0.3").post(
            "/v1/forms/newsletter/submissions", data={"email": "ada@example.org"},
            headers=ALLOWED | {"x-forwarded-for": "203.0.113.50"})
        rows = await _rows(app)
    assert codes[:5] == [415] * 5 and set(codes[5:]) == {429}  # a spoofed header is no fresh budget
    assert answer.status_code == 303, answer.text
    assert rows == [("127.0.0.3", "ada@example.org")]  # the connection's address, not the header


async def test_a_forms_limit_counts_valid_submissions_per_address(capture_settings):
    settings = capture_settings(capture_rate_limit="off", capture_form_rate_limit="3/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        client = client_from("127.0.0.4")
        refused = [(await client.post("/v1/forms/newsletter/submissions", content=b"email=a@b.co",
                                      headers={"content-type": "text/plain"})).status_code for _ in range(10)]
        invalid = [(await client.post("/v1/forms/newsletter/submissions", data={"email": "nope"})).status_code
                   for _ in range(10)]
        valid = [(await client.post("/v1/forms/newsletter/submissions", data={"email": f"v{i}@example.org"},
                                    headers=ALLOWED)).status_code for i in range(3)]
        spam = await client.post("/v1/forms/newsletter/submissions",
                                 data={"email": "bot@example.org", "nickname": "x"})
        other_form = await client.post("/v1/forms/demo-request/submissions", data={"email": "w@example.org"},
                                       headers=ALLOWED)
        theirs = await client_from("127.0.0.5").post("/v1/forms/newsletter/submissions",
                                                     data={"email": "n@example.org"}, headers=ALLOWED)
    assert (set(refused), set(invalid), valid) == ({415}, {422}, [303, 303, 303])
    assert spam.status_code == 429 and "per form and client address" in spam.json()["detail"]
    assert spam.headers["retry-after"]
    assert other_form.status_code == 303 and theirs.status_code == 303


async def test_forwarded_for_is_believed_only_from_a_configured_proxy(capture_settings):
    settings = capture_settings(forwarded_allow_ips="127.0.0.1", capture_rate_limit="5/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        proxy = client_from("127.0.0.1")
        # the proxy appends the address it saw to what the client sent: that one is believed
        codes = await _refused_posts(proxy, 50, lambda i: f"6.6.{i}.6, 198.51.100.9")
        visitor = await proxy.post("/v1/leads", json={"email": "v@example.org"},
                                   headers={"x-forwarded-for": "203.0.113.7"})
        garbage = await proxy.post("/v1/leads", json={"email": "g@example.org"}, headers={"x-forwarded-for": SCRIPT})
        spoofer = await client_from("127.0.0.2").post("/v1/leads", json={"email": "s@example.org"},
                                                      headers={"x-forwarded-for": "203.0.113.8"})
        rows = await _rows(app)
    assert codes[:5] == [415] * 5 and set(codes[5:]) == {429}
    assert (visitor.status_code, garbage.status_code, spoofer.status_code) == (202, 202, 202)
    assert rows == [("203.0.113.7", "v@example.org"), (None, "g@example.org"), ("127.0.0.2", "s@example.org")]


# ---------------------------------------------------------------- headers and text fields (26.10)

VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
INJECTED = "A\u0007\u001b[31mB\r\nX-Injected: 1"  # the probe's name


@pytest.fixture
async def capture(capture_settings):
    app = create_app(capture_settings())
    async with serve_app(app) as client:
        client.app = app
        yield client


@pytest.fixture(scope="module")
async def refusing_capture(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend for the leads it must refuse: each test still finds no
    lead stored, so none of them stored one."""
    url = await module_database_factory("capture")
    app = create_app(make_settings(broker.bootstrap, tmp_path_factory.mktemp("capture"), service="capture",
                                   capture_database_url=url))
    async with serve_app(app) as client:
        client.app = app
        yield client


TRACEPARENTS = [
    (VALID_TRACEPARENT, VALID_TRACEPARENT),
    ("00-" + "a" * 8000, None),  # the probe's 8,003 characters
    ("garbage\u00e9".encode(), None),
    (VALID_TRACEPARENT.upper(), None),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    (VALID_TRACEPARENT + "-extra", None),
]


async def test_only_a_valid_traceparent_is_published(capture, broker):
    sent = {}
    for n, (header, published) in enumerate(TRACEPARENTS):
        answer = await capture.post("/v1/leads", json={"email": f"t{n}@example.org"}, headers={"traceparent": header})
        assert answer.status_code == 202, answer.text  # an invalid traceparent is dropped, not an error
        sent[answer.json()["event_id"]] = published
    events = await read_until_ids(broker.bootstrap, LEADS_CAPTURED, set(sent))
    assert {e.id: e.traceparent for e in events if e.id in sent} == sent
    async with capture.app.state.runtime.db.reader() as s:
        values = dict((await s.execute(select(CaptureOutbox.event_id, CaptureOutbox.value))).all())
    assert {event_id: b'"traceparent"' in value for event_id, value in values.items()} == {
        event_id: published is not None for event_id, published in sent.items()}


@pytest.mark.parametrize("path,send", [
    ("/v1/leads", lambda key: {"json": {"email": "k@example.org"}, "headers": {"Idempotency-Key": key}}),
    ("/v1/forms/newsletter/submissions",
     lambda key: {"data": {"email": "k@example.org"}, "headers": {"Idempotency-Key": key} | ALLOWED}),
])
async def test_an_idempotency_key_over_255_characters_is_refused_on_every_path(capture, path, send):
    too_long = await capture.post(path, **send("k" * 1000))
    assert too_long.status_code == 422, too_long.text
    assert [e["field"] for e in too_long.json()["errors"]] == ["idempotency-key"]
    first = await capture.post(path, **send("k" * 255))
    retry = send("k" * 255)
    again = await capture.post(path, **retry | {"headers": retry["headers"] | {"accept": "application/json"}})
    assert first.status_code in (202, 303) and again.status_code == 202
    async with capture.app.state.runtime.db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CapturedLead))).scalar_one() == 1


@pytest.mark.parametrize("lead,fields", [
    ({"first_name": INJECTED}, ["first_name"]),
    ({"first_name": "Ada\u0000", "company": "Acme\u009b", "title": "CTO\u007f"}, ["company", "first_name", "title"]),
    ({"title": "VP\tSales"}, ["title"]),  # a tab is no part of a one-line value
    ({"utm": {"campaign": "q4\u001b[2J"}}, ["utm.campaign"]),
    ({"website": "https://a.example/\r\nSet-Cookie: x=1"}, ["website"]),
    ({"fields": {"note\u0007": "x"}}, ["fields.note\u0007.[key]"]),
    ({"fields": {"message": "bell\u0007"}}, ["fields.message"]),
    ({"consent": {"marketing": True, "text": "ok\u0000"}}, ["consent.text"]),
])
async def test_control_characters_in_text_fields_are_422_naming_each_field(refusing_capture, lead, fields):
    answer = await refusing_capture.post("/v1/leads", json={"email": "c@example.org"} | lead)
    assert answer.status_code == 422, answer.text
    assert sorted(e["field"] for e in answer.json()["errors"]) == fields
    assert {e["type"] for e in answer.json()["errors"]} == {"control_character"}
    async with refusing_capture.app.state.runtime.db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CapturedLead))).scalar_one() == 0


async def test_free_text_keeps_tabs_and_line_breaks(capture):
    lead = {"email": "f@example.org", "fields": {"message": "Hello,\r\n\tsee below.\n"},
            "consent": {"marketing": True, "text": "I agree.\nUnsubscribe any time."}}
    assert (await capture.post("/v1/leads", json=lead)).status_code == 202
    async with capture.app.state.runtime.db.reader() as s:
        payload = (await s.execute(select(CapturedLead.payload))).scalar_one()
    assert payload["fields"]["message"] == "Hello,\r\n\tsee below.\n"


async def test_the_form_endpoint_refuses_control_characters_by_their_form_names(capture):
    answer = await capture.post("/v1/forms/newsletter/submissions", headers=ALLOWED, data={
        "email": "f@example.org", "first_name": INJECTED, "utm_source": "x\u0000", "message": "two\r\nlines"})
    assert answer.status_code == 422, answer.text
    assert sorted(e["field"] for e in answer.json()["errors"]) == ["first_name", "utm_source"]
    assert answer.headers["access-control-allow-origin"] == "https://www.example.com"


# ---------------------------------------------------------------- a JSON lead naming a form (26.2)

SPAMMY = {"email": "bot@spam.example", "form_id": "demo-request", "form_type": "demo_request",
          "company": "Spam Inc", "fields": {"website_url": "http://spam"}}


async def _stored(capture) -> list[tuple[str, str | None, str | None]]:  # noqa: ANN001
    async with capture.app.state.runtime.db.reader() as s:
        rows = await s.execute(select(CapturedLead.email, CapturedLead.status, CapturedLead.spam_reason)
                               .order_by(CapturedLead.received_at))
        outbox = (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one()
    return [tuple(r) for r in rows], outbox


@pytest.mark.parametrize("lead,origin,reason", [
    (SPAMMY, "https://evil.example", "honeypot field 'website_url' filled"),  # the probe's request
    (SPAMMY, None, "honeypot field 'website_url' filled"),
    (SPAMMY | {"fields": {}}, "https://evil.example",
     "origin 'https://evil.example' not allowed for form 'demo-request'"),
    (SPAMMY | {"fields": {"website_url": "  "}, "form_id": "pricing-contact"}, "http://localhost:8000",
     "origin 'http://localhost:8000' not allowed for form 'pricing-contact'"),
])
async def test_a_json_lead_naming_a_declared_form_meets_its_spam_rules(capture, lead, origin, reason):
    answer = await capture.post("/v1/leads", json=lead, headers={"origin": origin} if origin else {})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"  # like a success
    assert await _stored(capture) == ([("bot@spam.example", "spam", reason)], 0)  # never published


async def test_a_json_lead_that_passes_its_forms_rules_is_that_forms_lead(capture):
    lead = {"email": "ada@example.org", "form_id": "whitepaper-pipeline-2026", "fields": {"fax_number": "", "x": "y"}}
    answer = await capture.post("/v1/leads", json=lead, headers={"origin": "https://go.example.com"})
    assert answer.status_code == 202, answer.text
    undeclared = await capture.post("/v1/leads", json={"email": "b@example.org", "form_id": "partner-portal"},
                                    headers={"origin": "https://partner.example"})
    assert undeclared.status_code == 202  # a form not in forms.yaml is taken as sent (a server's own form)
    assert await _stored(capture) == ([("ada@example.org", "accepted", None), ("b@example.org", "accepted", None)], 2)
    async with capture.app.state.runtime.db.reader() as s:
        payload = (await s.execute(select(CapturedLead.payload).where(CapturedLead.email == "ada@example.org"))
                   ).scalar_one()
    assert (payload["form_type"], payload["lead_magnet"]) == ("content_download", "state-of-b2b-pipeline-2026")
    assert payload["fields"] == {"x": "y"}  # the empty honeypot is no custom field


def _days_ago(days: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat()


# ids of their own: every parallel worker collects the same names (the times differ by milliseconds)
@pytest.mark.parametrize("occurred_at,status", [
    pytest.param("0001-01-01T00:00:00Z", 422, id="year-1"),  # the probe's
    pytest.param("0001-01-01", 422, id="year-1-date"),
    pytest.param(_days_ago(401), 422, id="401-days-ago"),
    pytest.param(_days_ago(399), 202, id="399-days-ago"),
    pytest.param(_days_ago(0), 202, id="now"),
    pytest.param("2999-01-01T00:00:00Z", 422, id="year-2999"),
    pytest.param((datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(), 422, id="in-an-hour"),
])
async def test_occurred_at_is_bounded(capture, occurred_at, status):
    answer = await capture.post("/v1/leads", json={"email": "o@example.org", "occurred_at": occurred_at})
    assert answer.status_code == status, answer.text
    if status == 422:
        assert [e["field"] for e in answer.json()["errors"]] == ["occurred_at"]
    form = await capture.post("/v1/forms/newsletter/submissions", headers=ALLOWED | {"accept": "application/json"},
                              data={"email": "o@example.org", "occurred_at": occurred_at})
    assert form.status_code == status, form.text
    if status == 422:
        assert [e["field"] for e in form.json()["errors"]] == ["occurred_at"]


async def test_the_occurred_at_horizon_is_a_setting(capture_settings):
    app = create_app(capture_settings(capture_occurred_at_horizon_days=30))
    async with serve_app(app) as client:
        old = await client.post("/v1/leads", json={"email": "o@example.org", "occurred_at": _days_ago(31)})
        recent = await client.post("/v1/leads", json={"email": "o@example.org", "occurred_at": _days_ago(29)})
    assert (old.status_code, recent.status_code) == (422, 202)
    assert "more than 30 days in the past" in old.json()["errors"][0]["message"]
