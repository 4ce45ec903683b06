"""Capture over HTTP (in-process app, real broker, real migrated database)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select

from services.capture import service
from services.capture.app import create_app
from services.capture.models import CapturedLead, CaptureOutbox, CaptureSuppression
from shared.privacy import remember
from shared.events import LEAD_CAPTURED, LEADS_CAPTURED
from tests.support import eventually, make_settings, read_topic, selects_on, serve_app

DEMO = {
    "email": "  Ada.Lovelace+demo@Analytical-Engines.co.uk ",
    "first_name": "Ada",
    "company": "Analytical Engines",
    "title": "VP Engineering",
    "employees": 250,
    "form_type": "demo_request",
    "utm": {"source": "google", "medium": "cpc", "campaign": "brand"},
}


@asynccontextmanager
async def capture_client(broker, database_factory, data_dir):  # noqa: ANN001, ANN201
    url = await database_factory("capture")
    settings = make_settings(broker.bootstrap, data_dir, service="capture", capture_database_url=url)
    app = create_app(settings)
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        yield client


@pytest.fixture
async def capture(broker, database_factory, tmp_path):
    async with capture_client(broker, database_factory, tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
async def shared_capture(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend, for tests whose assertions are about the answer alone
    (what one of them stores, no other reads)."""
    async with capture_client(broker, module_database_factory, tmp_path_factory.mktemp("capture")) as client:
        yield client


async def _published(client, event_id: str) -> bool:
    async with client.runtime.db.reader() as s:
        row = (
            await s.execute(select(CaptureOutbox.published_at).where(CaptureOutbox.event_id == event_id))
        ).scalar_one()
    return row is not None


async def test_lead_is_stored_published_and_keyed_by_normalised_email(capture, broker):
    response = await capture.post("/v1/leads", json=DEMO)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    await eventually(lambda: _published(capture, body["event_id"]))
    events = await read_topic(broker.bootstrap, LEADS_CAPTURED, expect=1, timeout=10, settle=0.2)
    mine = [e for e in events if e.id == body["event_id"]]
    assert len(mine) == 1
    event = mine[0]
    assert event.type == LEAD_CAPTURED
    assert event.source == "/leadstream/capture"
    assert event.subject == "ada.lovelace+demo@analytical-engines.co.uk"
    assert event.data["email"] == "Ada.Lovelace+demo@Analytical-Engines.co.uk"  # kept as typed (trimmed)
    assert event.data["utm"]["medium"] == "cpc"


async def test_idempotent_retry_returns_same_event_and_stores_once(capture):
    headers = {"Idempotency-Key": "retry-1"}
    first = await capture.post("/v1/leads", json=DEMO, headers=headers)
    again = await asyncio.gather(*(capture.post("/v1/leads", json=DEMO, headers=headers) for _ in range(5)))
    assert {r.status_code for r in [first, *again]} == {202}
    assert {r.json()["event_id"] for r in [first, *again]} == {first.json()["event_id"]}
    async with capture.runtime.db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one() == 1
    other = await capture.post("/v1/leads", json=DEMO | {"first_name": "Augusta"}, headers=headers)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"


async def test_concurrent_idempotent_leads_share_one_key_lookup(capture):
    """Leads that commit together look their Idempotency-Keys up in one query per
    transaction; stored keys, new keys and keys repeated within the group all answer right."""
    def lead(i: int) -> dict:
        return DEMO | {"email": f"lead{i}@example.org"}

    stored = {f"old-{i}": (await capture.post("/v1/leads", json=lead(i), headers={"Idempotency-Key": f"old-{i}"}))
              .json()["event_id"] for i in range(5)}
    with selects_on(capture.runtime.db.engine, "capture_leads") as lookups:
        sent = ([(f"old-{i}", lead(i)) for i in range(5)] + [(f"new-{i % 10}", lead(100 + i % 10)) for i in range(20)]
                + [(None, lead(200 + i)) for i in range(5)])
        responses = await asyncio.gather(*(
            capture.post("/v1/leads", json=body, headers={"Idempotency-Key": key} if key else {}) for key, body in sent
        ))
    assert {r.status_code for r in responses} == {202}
    ids = [r.json()["event_id"] for r in responses]
    assert ids[:5] == [stored[f"old-{i}"] for i in range(5)]
    for k in range(10):
        assert len({event_id for (key, _), event_id in zip(sent, ids) if key == f"new-{k}"}) == 1
    async with capture.runtime.db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one() == 5 + 10 + 5
    assert len(lookups) < len(sent) / 2, lookups  # one per group commit, not one per lead
    reused = await capture.post("/v1/leads", json=lead(999), headers={"Idempotency-Key": "old-0"})
    assert reused.status_code == 409


BAD_INPUTS = [
    ({}, [("email", "missing")]),
    ({"email": "not-an-email"}, [("email", "value_error")]),
    ({"email": "a@b.co", "employees": -1}, [("employees", "greater_than_equal")]),
    ({"email": "a@b.co", "form_type": "coffee"}, [("form_type", "literal_error")]),
    ({"email": "a@b.co", "favourite_colour": "blue"}, [("favourite_colour", "extra_forbidden")]),
    ({"email": "a@b.co", "utm": {"source": "x", "medium": 3}}, [("utm.medium", "string_type")]),
    ({"email": "a@b.co", "utm": {"sauce": "x"}}, [("utm.sauce", "extra_forbidden")]),
    ({"email": "a@b.co", "consent": {"text": "ok"}}, [("consent.marketing", "missing")]),
    ({"email": "a@b.co", "fields": {"k": 1}}, [("fields.k", "string_type")]),
    ({"email": "a@b.co", "occurred_at": "2999-01-01T00:00:00Z"}, [("occurred_at", "value_error")]),
    ({"email": "a@b.co", "occurred_at": "yesterday"}, [("occurred_at", "datetime_from_date_parsing")]),
    ({"email": "x" * 400 + "@b.co"}, [("email", "string_too_long")]),
    ({"email": "a@b.co", "employees": "many", "title": 5}, [("employees", "int_parsing"), ("title", "string_type")]),
    ({"email": "a@b.co", "employees": True}, [("employees", "int_type")]),  # not one employee
]


@pytest.mark.parametrize("body,expected", BAD_INPUTS)
async def test_bad_input_is_422_naming_each_field(shared_capture, body, expected):
    response = await shared_capture.post("/v1/leads", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert sorted((e["field"], e["type"]) for e in problem["errors"]) == sorted(expected)


async def test_malformed_json_wrong_type_and_oversize(capture):
    malformed = await capture.post("/v1/leads", content=b'{"email": ', headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["field"] == "body"
    not_json = await capture.post("/v1/leads", content=b"email=a@b.co", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415
    assert not_json.headers["content-type"] == "application/problem+json"
    big = await capture.post("/v1/leads", json={"email": "a@b.co", "fields": {"x": "y" * 70_000}})
    assert big.status_code == 413
    array = await capture.post("/v1/leads", json=[DEMO])
    assert array.status_code == 422
    async with capture.runtime.db.reader() as s:
        assert (await s.execute(select(func.count()).select_from(CapturedLead))).scalar_one() == 0


@pytest.mark.parametrize(
    "content,headers,status,field",
    [
        (b"", {}, 422, "body"),  # no body at all
        (b'{"email": "a@b.co", "first_name": "\xff"}', {}, 422, "body"),  # not UTF-8
        (b'{"email": "a@b.co", "email": "c@d.co", "employees": "many"}', {}, 422, "employees"),
        (b'{"email": "a@b.co"}', {"Idempotency-Key": "k" * 256}, 422, "idempotency-key"),
        (b"not even json", {"content-type": "text/plain", "Idempotency-Key": "k" * 256}, 415, None),
        (b'{"email": "a@b.co"}', {"content-type": "application/vnd.lead+json; charset=utf-8"}, 202, None),
    ],
)
async def test_the_lead_body_and_header_are_checked_by_the_route(shared_capture, content, headers, status, field):
    response = await shared_capture.post("/v1/leads", content=content,
                                         headers={"content-type": "application/json", **headers})
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
    if field:
        assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_the_lead_route_documents_its_body_and_header(capture):
    operation = (await capture.get("/openapi.json")).json()["paths"]["/v1/leads"]["post"]
    assert operation["requestBody"] == {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LeadIn"}}},
    }
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        ("idempotency-key", "header", False)
    ]
    schemas = (await capture.get("/openapi.json")).json()["components"]["schemas"]
    assert {"LeadIn", "UtmIn", "ConsentIn"} <= set(schemas)
    assert schemas["LeadIn"]["required"] == ["email"] and schemas["LeadIn"]["additionalProperties"] is False


async def test_html_form_redirects_browsers_and_answers_json(capture, broker):
    form = {"email": "grace@navy.example.org", "company": "Navy", "utm_source": "newsletter", "utm_medium": "email",
            "consent_marketing": "on", "favourite_language": "COBOL", "website_url": ""}
    browser = await capture.post("/v1/forms/demo-request/submissions", data=form,
                                 headers={"origin": "https://www.example.com"})
    assert browser.status_code == 303
    assert browser.headers["location"] == "https://www.example.com/thanks/demo"
    assert browser.headers["access-control-allow-origin"] == "https://www.example.com"
    api = await capture.post(
        "/v1/forms/whitepaper-pipeline-2026/submissions",
        files={"email": (None, "g@navy.example.org")},
        headers={"accept": "application/json"},
    )
    assert api.status_code == 202
    async with capture.runtime.db.reader() as s:
        rows = (await s.execute(select(CapturedLead).order_by(CapturedLead.received_at))).scalars().all()
    assert [r.form_type for r in rows] == ["demo_request", "content_download"]
    assert rows[0].payload["utm"] == {"source": "newsletter", "medium": "email"}
    assert rows[0].payload["fields"] == {"favourite_language": "COBOL"}
    assert rows[0].payload["consent"]["marketing"] is True
    assert rows[1].payload["lead_magnet"] == "state-of-b2b-pipeline-2026"


async def test_spam_looks_like_success_and_is_never_published(capture):
    honeypot = await capture.post("/v1/forms/demo-request/submissions",
                                  data={"email": "bot@spam.example", "website_url": "http://buy.example"})
    assert honeypot.status_code == 303
    origin = await capture.post("/v1/forms/demo-request/submissions", data={"email": "x@evil.example"},
                                headers={"origin": "https://evil.example", "accept": "application/json"})
    assert origin.status_code == 202 and origin.json()["status"] == "accepted"
    assert "access-control-allow-origin" not in origin.headers
    async with capture.runtime.db.reader() as s:
        rows = (await s.execute(select(CapturedLead.status, CapturedLead.spam_reason))).all()
        outbox = (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one()
    assert sorted(r.status for r in rows) == ["spam", "spam"]
    assert all(r.spam_reason for r in rows)
    assert outbox == 0


async def test_form_errors(capture):
    unknown = await capture.post("/v1/forms/nope/submissions", data={"email": "a@b.co"})
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    bad_email = await capture.post("/v1/forms/newsletter/submissions", data={"email": "nope", "utm_medium": "x" * 300})
    assert bad_email.status_code == 422
    assert sorted(e["field"] for e in bad_email.json()["errors"]) == ["email", "utm_medium"]
    json_body = await capture.post("/v1/forms/newsletter/submissions", json={"email": "a@b.co"})
    assert json_body.status_code == 415
    preflight = await capture.options("/v1/forms/newsletter/submissions", headers={
        "origin": "https://blog.example.com", "access-control-request-method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://blog.example.com"
    denied = await capture.options("/v1/forms/newsletter/submissions", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers


async def test_operations_endpoints(capture):
    assert (await capture.get("/healthz")).json()["status"] == "ok"
    ready = await capture.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    metrics = await capture.get("/metrics")
    assert "leadstream_outbox_depth" in metrics.text
    assert (await capture.get("/openapi.json")).json()["paths"]["/v1/leads"]["post"]


async def test_rate_limit_per_client_address(broker, database_factory, tmp_path):
    url = await database_factory("capture")
    settings = make_settings(broker.bootstrap, tmp_path, service="capture", capture_database_url=url,
                             capture_rate_limit="3/minute")
    async with serve_app(create_app(settings)) as client:
        codes = [(await client.post("/v1/leads", json={"email": f"u{i}@b.co"})).status_code for i in range(2)]
        codes.append((await client.post("/v1/leads", json={"email": "not an email"})).status_code)
        codes.append((await client.post("/v1/leads", json={"email": "u9@b.co"})).status_code)
        assert codes == [202, 202, 422, 429]  # an invalid lead counts against the limit too
        limited = await client.post("/v1/leads", json={"email": "z@b.co"})
        assert limited.headers["content-type"] == "application/problem+json"
        assert int(limited.headers["retry-after"]) >= 1


async def test_readiness_can_require_only_the_database(broker, database_factory, tmp_path):
    url = await database_factory("capture")
    # a broker address where nothing listens: capture still stores leads, so it stays ready on require=database
    from shared.broker import free_port

    settings = make_settings(
        f"127.0.0.1:{free_port()}", tmp_path, service="capture", capture_database_url=url, kafka_request_timeout_ms=500
    )
    async with serve_app(create_app(settings)) as client:
        full = await client.get("/readyz")
        assert full.status_code == 503 and full.json()["checks"]["broker"].startswith("unavailable")
        database_only = await client.get("/readyz", params={"require": "database"})
        assert database_only.status_code == 200
        assert (await client.post("/v1/leads", json={"email": "down@acme.example"})).status_code == 202


# ---- an erased (suppressed) address -------------------------------------------------------------

ERASED = {"email": "Gone.Person@Erased-Example.com", "first_name": "Gonefirst", "last_name": "Gonelast",
          "phone": "+1 555 0142", "company": "Erased Example", "form_type": "newsletter"}


async def _suppress(client, email: str) -> str:  # noqa: ANN001
    """Put ``email``'s subject on capture's suppression list, as its erasure consumer does."""
    subject = client.runtime.privacy.subject_of_email(email)
    async with client.runtime.db.unit_of_work() as session:
        await remember(session, CaptureSuppression, subject)
    return subject


async def _rows(client) -> tuple[list[CapturedLead], int]:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        rows = (await s.execute(select(CapturedLead).order_by(CapturedLead.received_at))).scalars().all()
        outbox = (await s.execute(select(func.count()).select_from(CaptureOutbox))).scalar_one()
    return list(rows), outbox


def _holds_the_person(row: CapturedLead) -> bool:
    text = f"{row.email} {row.contact_key} {row.payload} {row.client_address}".lower()
    return any(t in text for t in ("gone.person", "gonefirst", "gonelast", "0142", "erased example"))


async def test_a_dropped_lead_keeps_its_idempotency_key_and_not_the_address(capture):
    """A lead of an erased person (no new opt-in) is answered and dropped; a retry with its
    Idempotency-Key gets the same event id (and another body under the key is 409), from a
    ``dropped`` row that holds neither the address nor the person's fields. A later erasure
    of the person (back through an opt-in) removes the idempotency record too."""
    subject = await _suppress(capture, ERASED["email"])
    headers = {"Idempotency-Key": "erased-retry-1"}
    first = await capture.post("/v1/leads", json=ERASED, headers=headers)
    again = await asyncio.gather(*(capture.post("/v1/leads", json=ERASED, headers=headers) for _ in range(3)))
    assert {r.status_code for r in [first, *again]} == {202}
    assert {r.json()["event_id"] for r in [first, *again]} == {first.json()["event_id"]}
    reused = await capture.post("/v1/leads", json=ERASED | {"first_name": "Other"}, headers=headers)
    assert reused.status_code == 409
    form = await capture.post("/v1/forms/whitepaper-pipeline-2026/submissions", data={"email": ERASED["email"]},
                              headers={"accept": "application/json", "Idempotency-Key": "erased-form-1"})
    assert form.status_code == 202
    form_again = await capture.post("/v1/forms/whitepaper-pipeline-2026/submissions",
                                    data={"email": ERASED["email"]},
                                    headers={"accept": "application/json", "Idempotency-Key": "erased-form-1"})
    assert form_again.json()["event_id"] == form.json()["event_id"]
    rows, outbox = await _rows(capture)
    assert outbox == 0, "a dropped lead was published"
    assert [(r.event_id, r.status, r.idempotency_key) for r in rows] == [
        (first.json()["event_id"], "dropped", "erased-retry-1"), (form.json()["event_id"], "dropped", "erased-form-1")]
    assert all(r.contact_key == subject and r.email == "" and r.client_address is None for r in rows)
    assert not any(_holds_the_person(r) for r in rows)
    # the fingerprint is keyed: no plain hash of a body that names the address
    assert rows[0].request_fingerprint == capture.runtime.privacy.subject_of(
        service.fingerprint(service.LeadIn.model_validate(ERASED)))

    # the person comes back (a new opt-in) and is erased again: the dropped rows' keys go too
    back = await capture.post("/v1/leads", json=ERASED | {"consent": {"marketing": True}})
    assert back.status_code == 202
    async with capture.runtime.db.unit_of_work() as session:
        assert await service.erase(capture.runtime.privacy, session, subject, None) == 3
    rows, _ = await _rows(capture)
    assert [(r.status, r.idempotency_key, r.request_fingerprint) for r in rows] == [
        ("dropped", None, None), ("dropped", None, None), ("accepted", None, None)]
    assert not any(_holds_the_person(r) for r in rows)


async def test_spam_naming_an_erased_address_keeps_no_address(capture):
    """Spam is kept for review, but spam naming an erased person is kept as a dropped lead is:
    without the address, the person's fields or the client address; spam naming anyone else
    is kept as sent."""
    subject = await _suppress(capture, ERASED["email"])
    honeypot = await capture.post("/v1/forms/demo-request/submissions", data={
        "email": ERASED["email"], "first_name": ERASED["first_name"], "phone": ERASED["phone"],
        "website_url": "http://buy.example"})
    assert honeypot.status_code == 303
    origin = await capture.post("/v1/leads", json=ERASED | {"form_id": "demo-request"},
                                headers={"origin": "https://evil.example"})
    assert origin.status_code == 202
    other = await capture.post("/v1/forms/demo-request/submissions",
                               data={"email": "bot@spam.example", "website_url": "http://buy.example"})
    assert other.status_code == 303
    rows, outbox = await _rows(capture)
    assert outbox == 0
    assert [r.status for r in rows] == ["spam"] * 3 and all(r.spam_reason for r in rows)
    erased, kept = rows[:2], rows[2]
    assert all(r.contact_key == subject and r.email == "" and r.client_address is None for r in erased)
    assert not any(_holds_the_person(r) for r in erased)
    assert erased[1].payload.get("form_id") == "demo-request"  # what an erasure keeps stays
    assert (kept.email, kept.contact_key) == ("bot@spam.example", "bot@spam.example")
