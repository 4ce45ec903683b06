"""Outreach under a careless or hostile client (issue 26.10): control characters in text
fields and invalid ``traceparent`` headers (in-process app, real broker, real migrated
database on both backends)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.outreach.app import create_app
from services.outreach.models import OutreachOutbox, OutreachProspect, OutreachTouch
from shared.events import parse_event
from tests.integration.test_outreach_api import add_key, count, outreach_client
from tests.support import make_settings, serve_app

INJECTED = "A\u0007\u001b[31mB\r\nX-Injected: 1"
VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOUCH = {"email": "grace@navy.example.com", "channel": "cold_email", "outcome": "opened"}


@pytest.fixture
async def outreach(broker, database_factory, tmp_path):
    url = await database_factory("outreach")
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=url))
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        client.headers["Authorization"] = f"Bearer {await add_key(client.runtime.db)}"
        yield client


@pytest.fixture(scope="module")
async def refusing_outreach(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend for the requests it must refuse: each test still finds no
    prospect and no touch stored, so none of them stored one."""
    async with outreach_client(broker, module_database_factory, tmp_path_factory.mktemp("outreach")) as client:
        yield client


@pytest.mark.parametrize("path,body,fields", [
    ("/v1/prospects", {"email": "p@example.org", "first_name": INJECTED}, ["first_name"]),
    ("/v1/prospects", {"email": "p@example.org", "company": "Acme\u0000", "tags": ["ok", "b\u0085d"],
                       "phone": "+1\t555"}, ["company", "phone", "tags.1"]),
    ("/v1/prospects", {"email": "p@example.org", "fields": {"notes": "x\u001b"}}, ["fields.notes"]),
    ("/v1/touches", TOUCH | {"rep": INJECTED}, ["rep"]),
    ("/v1/touches", TOUCH | {"sequence": "q4\u007f", "external_id": "id\r\n1"}, ["external_id", "sequence"]),
])
async def test_control_characters_are_422_naming_each_field(refusing_outreach, path, body, fields):
    answer = await refusing_outreach.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert sorted(e["field"] for e in answer.json()["errors"]) == fields
    assert {e["type"] for e in answer.json()["errors"]} == {"control_character"}
    assert await count(refusing_outreach, OutreachProspect) == 0 and await count(refusing_outreach, OutreachTouch) == 0


async def test_a_batch_rejects_only_the_touch_with_a_control_character(outreach):
    answer = await outreach.post("/v1/touches:batch", json={"touches": [
        TOUCH | {"external_id": "t-1"}, TOUCH | {"external_id": "t-2", "rep": INJECTED}]})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert [(e["field"], e["type"]) for e in results[1]["errors"]] == [("rep", "control_character")]


async def test_free_text_keeps_line_breaks(outreach):
    answer = await outreach.post("/v1/prospects", json={"email": "p@example.org",
                                                        "fields": {"notes": "met at the fair;\r\n\tcall in May"}})
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("header,published", [
    (VALID_TRACEPARENT, VALID_TRACEPARENT),
    ("00-" + "a" * 8000, None),
    ("garbage\u00e9".encode(), None),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
])
async def test_only_a_valid_traceparent_is_published(outreach, header, published):
    prospect = await outreach.post("/v1/prospects", json={"email": "p@example.org"}, headers={"traceparent": header})
    touch = await outreach.post("/v1/touches", json=TOUCH, headers={"traceparent": header})
    assert (prospect.status_code, touch.status_code) == (202, 202), (prospect.text, touch.text)
    async with outreach.runtime.db.reader() as s:
        values = (await s.execute(select(OutreachOutbox.value))).scalars().all()
    assert [parse_event(v).traceparent for v in values] == [published, published]
