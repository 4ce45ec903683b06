"""Outreach over HTTP (in-process app, real broker, real migrated database), and its CLI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from pipeline_store.models import PipelineApiKey
from services.outreach import service
from services.outreach.app import create_app
from services.outreach.external_keys import api_key_of, webhook_key_of
from services.outreach.models import (
    OutreachApiKey, OutreachOutbox, OutreachProspect, OutreachTouch, OutreachWebhookSecret,
)
from services.outreach.signatures import sign
from shared.api_keys import hash_key, new_key
from shared.db import Database
from shared.secrets import DEVELOPMENT_KEY, SecretBox
from shared.events import OUTREACH_TOUCHES, PROSPECT_ADDED, TOUCH_RECORDED, parse_event
from tests.support import (
    eventually, leadstream_in_process, make_settings, read_raw, run_leadstream, selects_on, serve_app,
    served_service,
)

PROBLEM = "application/problem+json"

PROSPECT = {
    "email": "  Grace.Hopper+q4@GoogleMail.com ",
    "first_name": "Grace",
    "last_name": "Hopper",
    "title": "Director of Engineering",
    "company": "Navy Systems",
    "employees": 1200,
    "linkedin_url": "https://www.linkedin.com/in/grace-hopper",
    "owner": "rep@us.example",
    "list": "Q4 ICP",
    "source": "sales-navigator",
    "tags": ["enterprise"],
}
TOUCH = {"email": "Grace.Hopper@Navy-Systems.example.com", "channel": "cold_email", "outcome": "opened",
         "rep": "rep@us.example", "sequence": "q4-enterprise", "step": 1}


async def add_key(db: Database, *, scopes: str = "outreach", revoked: bool = False, name: str | None = None) -> str:
    key = new_key()
    async with db.unit_of_work() as s:
        s.add(OutreachApiKey(id=str(uuid.uuid4()), name=name or f"test {scopes}", scopes=scopes, key_hash=hash_key(key),
                             prefix=key[:11], created_at=datetime.now(timezone.utc),
                             revoked_at=datetime.now(timezone.utc) if revoked else None))
    return key


async def add_secret(db: Database, integration: str, secret: str | None = None) -> str:
    secret = secret or f"whsec_{uuid.uuid4().hex}"
    async with db.unit_of_work() as s:
        s.add(OutreachWebhookSecret(id=str(uuid.uuid4()), integration=integration,
                                    secret=SecretBox(DEVELOPMENT_KEY).encrypt(secret),
                                    created_at=datetime.now(timezone.utc)))
    return secret


def outreach_client(broker, database_factory, data_dir):  # noqa: ANN001, ANN201
    return served_service(create_app, "outreach", broker, database_factory, data_dir, add_key)


@pytest.fixture
async def outreach(broker, database_factory, tmp_path):
    async with outreach_client(broker, database_factory, tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
async def refusing_outreach(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend for the requests it must refuse: each test still finds the
    outbox empty, so none of them wrote to it."""
    async with outreach_client(broker, module_database_factory, tmp_path_factory.mktemp("outreach")) as client:
        yield client


async def count(client, model) -> int:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


async def all_published(client, event_ids) -> bool:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        rows = (
            await s.execute(select(OutreachOutbox.published_at).where(OutreachOutbox.event_id.in_(event_ids)))
        ).all()
    return len(rows) == len(event_ids) and all(r.published_at for r in rows)


async def topic_messages(client, bootstrap: str, event_ids: list[str]) -> dict:  # noqa: ANN001
    """The messages of these events on outreach.touches (after their outbox rows were published)."""
    await eventually(lambda: all_published(client, event_ids))
    raw = await read_raw(bootstrap, OUTREACH_TOUCHES, expect=len(event_ids), timeout=10, settle=0.2)
    found = {}
    for message in raw:
        event = parse_event(message.value)
        if event.id in event_ids:
            found.setdefault(event.id, []).append((message.key.decode(), event, dict(message.headers)))
    return found


# ---- happy paths, through the real broker ---------------------------------------------------


async def test_prospect_and_touch_reach_the_topic_keyed_by_normalised_email(outreach, broker):
    prospect = await outreach.post(
        "/v1/prospects", json=PROSPECT, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    )
    assert prospect.status_code == 202, prospect.text
    assert prospect.json()["status"] == "accepted"
    before = datetime.now(timezone.utc)
    touch = await outreach.post("/v1/touches", json=TOUCH)
    assert touch.status_code == 202, touch.text
    assert touch.json() == {"event_id": touch.json()["event_id"], "status": "accepted"}

    ids = [prospect.json()["event_id"], touch.json()["event_id"]]
    found = await topic_messages(outreach, broker.bootstrap, ids)
    (key, added, headers), = found[ids[0]]
    assert key == "grace.hopper+q4@gmail.com" == added.subject  # googlemail = gmail, plus-tag kept
    assert added.type == PROSPECT_ADDED and added.source == "/leadstream/outreach"
    assert headers["content-type"] == b"application/cloudevents+json"
    assert added.traceparent.startswith("00-aaaa")
    assert added.data["email"] == "Grace.Hopper+q4@GoogleMail.com"  # kept as typed (trimmed)
    assert added.data["list"] == "Q4 ICP" and added.data["tags"] == ["enterprise"]
    (key, recorded, _), = found[ids[1]]
    assert key == "grace.hopper@navy-systems.example.com"
    assert recorded.type == TOUCH_RECORDED
    assert recorded.data["channel"] == "cold_email" and recorded.data["outcome"] == "opened"
    occurred = datetime.fromisoformat(recorded.data["occurred_at"])
    assert abs((occurred - before).total_seconds()) < 5  # defaults to when received
    assert recorded.time == occurred
    async with outreach.runtime.db.reader() as s:
        row = (await s.execute(select(OutreachTouch))).scalar_one()
        stored = (await s.execute(select(OutreachProspect))).scalar_one()
    assert row.contact_key == key and row.outcome == "opened" and row.api_key_id
    assert stored.email == "Grace.Hopper+q4@GoogleMail.com" and stored.contact_key == "grace.hopper+q4@gmail.com"


async def test_occurred_at_is_kept_when_given(outreach):
    body = TOUCH | {"occurred_at": "2026-01-02T03:04:05+01:00", "outcome": "meeting_booked"}
    assert (await outreach.post("/v1/touches", json=body)).status_code == 202
    async with outreach.runtime.db.reader() as s:
        row = (await s.execute(select(OutreachTouch))).scalar_one()
    assert row.payload["occurred_at"] == "2026-01-02T03:04:05+01:00"
    assert row.occurred_at.replace(tzinfo=row.occurred_at.tzinfo or timezone.utc) == datetime(
        2026, 1, 2, 2, 4, 5, tzinfo=timezone.utc
    )


# ---- API keys ---------------------------------------------------------------------------


ROUTES = [("/v1/prospects", PROSPECT), ("/v1/touches", TOUCH), ("/v1/touches:batch", {"touches": [TOUCH]})]


@pytest.mark.parametrize("path,body", ROUTES)
async def test_every_route_needs_an_outreach_key(outreach, path, body):
    db = outreach.runtime.db
    cases = {
        None: 401,
        "Bearer": 401,
        "Bearer ls_not-a-real-key": 401,
        f"Basic {await add_key(db)}": 401,
        f"Bearer {await add_key(db, revoked=True)}": 401,
        f"Bearer {await add_key(db, scopes='pipeline')}": 403,
    }
    for authorization, status in cases.items():
        headers = {"Authorization": authorization} if authorization else {}
        response = (
            await outreach.post(path, json=body, headers=headers) if headers else await _anonymous(outreach, path, body)
        )
        assert response.status_code == status, (authorization, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == status
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    # the key is checked before the body: no key and a wrong content type is still 401
    plain = await _anonymous(outreach, path, None, content=b"x", content_type="text/plain")
    assert plain.status_code == 401
    both = await outreach.post(
        path, json=body, headers={"Authorization": f"Bearer {await add_key(db, scopes='pipeline outreach')}"}
    )
    assert both.status_code in (200, 202)
    assert await count(outreach, OutreachTouch) + await count(outreach, OutreachProspect) == 1


async def _anonymous(client, path, body, content=None, content_type="application/json"):  # noqa: ANN001, ANN202
    headers = {k: v for k, v in client.headers.items() if k.lower() != "authorization"}
    headers["content-type"] = content_type
    data = content if content is not None else json.dumps(body).encode()
    async with __import__("httpx").AsyncClient(transport=client._transport, base_url=client.base_url) as anon:  # noqa: SLF001
        return await anon.post(path, content=data, headers=headers)


async def test_rate_limit_per_api_key(broker, database_factory, tmp_path):
    url = await database_factory("outreach")
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=url,
                                   api_rate_limit="3/minute"))
    async with serve_app(app) as client:
        first, second = await add_key(app.state.runtime.db), await add_key(app.state.runtime.db)
        codes = [
            (await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {first}"})).status_code
            for _ in range(4)
        ]
        assert codes == [202, 202, 202, 429]
        limited = await client.post("/v1/prospects", json=PROSPECT, headers={"Authorization": f"Bearer {first}"})
        assert limited.status_code == 429 and limited.headers["content-type"] == PROBLEM
        assert int(limited.headers["retry-after"]) >= 1
        other = await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {second}"})
        assert other.status_code == 202  # the limit is per key


# ---- bad input --------------------------------------------------------------------------


PROSPECT_BAD = [
    ({}, [("email", "missing")]),
    ({"email": "not-an-email"}, [("email", "value_error")]),
    ({"email": "a@b.co", "employees": -5}, [("employees", "greater_than_equal")]),
    ({"email": "a@b.co", "employees": False}, [("employees", "int_type")]),
    ({"email": "a@b.co", "tags": "vip"}, [("tags", "list_type")]),
    ({"email": "a@b.co", "tags": ["ok", 3]}, [("tags.1", "string_type")]),
    (
        {"email": "a@b.co", "linkedin": "x", "seniority": "vp"},
        [("linkedin", "extra_forbidden"), ("seniority", "extra_forbidden")],
    ),
    ({"email": "a@b.co", "fields": {"k": 1}}, [("fields.k", "string_type")]),
    ({"email": "a@b.co", "occurred_at": "2999-01-01T00:00:00Z"}, [("occurred_at", "value_error")]),
    ({"email": "x" * 400 + "@b.co", "owner": "o" * 201}, [("email", "string_too_long"), ("owner", "string_too_long")]),
]

TOUCH_BAD = [
    ({}, [("email", "missing"), ("channel", "missing"), ("outcome", "missing")]),
    (TOUCH | {"email": "nope@"}, [("email", "value_error")]),
    (TOUCH | {"channel": "paid_search"}, [("channel", "literal_error")]),  # an inbound channel
    (TOUCH | {"outcome": "liked"}, [("outcome", "literal_error")]),
    (TOUCH | {"step": 0}, [("step", "greater_than_equal")]),
    (TOUCH | {"step": "two"}, [("step", "int_parsing")]),
    (TOUCH | {"step": True}, [("step", "int_type")]),
    (TOUCH | {"external_id": ""}, [("external_id", "string_too_short")]),
    (TOUCH | {"external_id": "x" * 256}, [("external_id", "string_too_long")]),
    (TOUCH | {"occurred_at": "last tuesday"}, [("occurred_at", "datetime_from_date_parsing")]),
    (TOUCH | {"integration": "salesloft"}, [("integration", "extra_forbidden")]),
]


@pytest.mark.parametrize("path,body,expected", [("/v1/prospects", b, e) for b, e in PROSPECT_BAD]
                         + [("/v1/touches", b, e) for b, e in TOUCH_BAD])
async def test_bad_input_is_422_naming_each_field(refusing_outreach, path, body, expected):
    response = await refusing_outreach.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert sorted((e["field"], e["type"]) for e in response.json()["errors"]) == sorted(expected)
    assert await count(refusing_outreach, OutreachOutbox) == 0


@pytest.mark.parametrize("path", ["/v1/prospects", "/v1/touches", "/v1/touches:batch"])
async def test_malformed_wrong_type_and_oversize(outreach, path):
    malformed = await outreach.post(path, content=b'{"email": ', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == "body"
    wrong_type = await outreach.post(
        path, content=b"email=a@b.co", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert wrong_type.status_code == 415 and wrong_type.headers["content-type"] == PROBLEM
    array = await outreach.post(path, json=[TOUCH])
    assert array.status_code == 422
    limit = 1024 * 1024 if path.endswith(":batch") else 64 * 1024
    big = await outreach.post(
        path, content=b'{"touches": "' + b"x" * limit + b'"}', headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and big.headers["content-type"] == PROBLEM
    assert await count(outreach, OutreachOutbox) == 0


@pytest.mark.parametrize("path,model", [("/v1/prospects", "ProspectIn"), ("/v1/touches", "TouchIn"),
                                        ("/v1/touches:batch", "TouchBatchIn")])
async def test_each_route_reads_and_documents_its_json_body(outreach, path, model):
    empty = await outreach.post(path, content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 422 and [e["field"] for e in empty.json()["errors"]] == ["body"]
    schema = (await outreach.get("/openapi.json")).json()
    body = schema["paths"][path]["post"]["requestBody"]
    assert body == {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
    assert model in schema["components"]["schemas"]
    assert await count(outreach, OutreachOutbox) == 0


# ---- batches ----------------------------------------------------------------------------


async def test_batch_with_mixed_items(outreach, broker):
    stored_before = await outreach.post("/v1/touches", json=TOUCH | {"external_id": "ext-old"})
    assert stored_before.status_code == 202
    items = [
        TOUCH | {"external_id": "ext-a"},                                   # 0 accepted
        TOUCH | {"channel": "fax", "colour": "red"},                        # 1 rejected: two fields
        TOUCH | {"email": "ada@example.org", "outcome": "meeting_booked"},  # 2 accepted, no external id
        TOUCH | {"external_id": "ext-a", "outcome": "replied"},            # 3 duplicate of item 0
        TOUCH | {"external_id": "ext-old"},                                 # 4 duplicate of a stored touch
        "not an object",                                                    # 5 rejected
        TOUCH | {"email": "bad-email"},                                     # 6 rejected
        TOUCH | {"external_id": "ext-b", "occurred_at": "2026-03-01T10:00:00Z"},  # 7 accepted
    ]
    response = await outreach.post("/v1/touches:batch", json={"touches": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [
        "accepted", "rejected", "accepted", "duplicate", "duplicate", "rejected", "rejected", "accepted"]
    assert results[3]["event_id"] == results[0]["event_id"]
    assert results[4]["event_id"] == stored_before.json()["event_id"]
    assert sorted((e["field"], e["type"]) for e in results[1]["errors"]) == [
        ("channel", "literal_error"), ("colour", "extra_forbidden")]
    assert results[1]["errors"][0].keys() == {"field", "in", "message", "type"}
    assert [e["type"] for e in results[5]["errors"]] == ["model_type"]
    assert [(e["field"], e["type"]) for e in results[6]["errors"]] == [("email", "value_error")]
    assert "errors" not in results[0] and "event_id" not in results[1]

    accepted = [results[i]["event_id"] for i in (0, 2, 7)]
    assert len(set(accepted)) == 3
    assert await count(outreach, OutreachTouch) == 4 and await count(outreach, OutreachOutbox) == 4
    found = await topic_messages(outreach, broker.bootstrap, accepted)
    assert {event.type for (_, event, _), in found.values()} == {TOUCH_RECORDED}
    assert found[accepted[1]][0][0] == "ada@example.org"
    assert found[accepted[0]][0][1].data["external_id"] == "ext-a"


@pytest.mark.parametrize("body,field,kind", [
    ({}, "touches", "missing"),
    ({"touches": []}, "touches", "too_short"),
    ({"touches": {"email": "a@b.co"}}, "touches", "list_type"),
    ({"touches": [TOUCH] * 1001}, "touches", "too_long"),
    ({"touches": [TOUCH], "dry_run": True}, "dry_run", "extra_forbidden"),
    ({"email": "a@b.co", "channel": "sms", "outcome": "sent"}, "touches", "missing"),
])
async def test_batch_that_is_not_a_batch_is_422(refusing_outreach, body, field, kind):
    response = await refusing_outreach.post("/v1/touches:batch", json=body)
    assert response.status_code == 422
    assert (field, kind) in [(e["field"], e["type"]) for e in response.json()["errors"]]
    assert await count(refusing_outreach, OutreachTouch) == 0


async def test_full_batch_of_1000_over_64_kib(outreach):
    touches = [TOUCH | {"email": f"p{i}@corp{i % 50}.example.com", "external_id": f"bulk-{i}"} for i in range(1000)]
    response = await outreach.post("/v1/touches:batch", json={"touches": touches})
    assert response.status_code == 200
    assert len(json.dumps({"touches": touches})) > 64 * 1024
    assert {r["status"] for r in response.json()["results"]} == {"accepted"}
    again = await outreach.post("/v1/touches:batch", json={"touches": touches})
    assert {r["status"] for r in again.json()["results"]} == {"duplicate"}
    assert [r["event_id"] for r in again.json()["results"]] == [r["event_id"] for r in response.json()["results"]]
    assert await count(outreach, OutreachOutbox) == 1000


# ---- external-id idempotency ------------------------------------------------------------


async def test_external_id_repeats_are_duplicates_even_concurrently(outreach):
    body = TOUCH | {"external_id": "tool-42"}
    responses = await asyncio.gather(*(outreach.post("/v1/touches", json=body) for _ in range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 11 + [202]
    assert {r.json()["event_id"] for r in responses} == {responses[0].json()["event_id"]}
    assert sorted(r.json()["status"] for r in responses) == ["accepted"] + ["duplicate"] * 11
    # a repeat that differs is still the same touch: the first fact stands, nothing is published
    changed = await outreach.post("/v1/touches", json=body | {"outcome": "replied"})
    assert changed.status_code == 200 and changed.json()["status"] == "duplicate"
    assert await count(outreach, OutreachTouch) == 1 and await count(outreach, OutreachOutbox) == 1


async def test_concurrent_touches_share_one_external_id_lookup_and_keep_idempotency(outreach):
    """Single touches that commit together look their external ids up in one query per
    transaction; stored ids, new ids and ids repeated within the group all answer right."""
    stored = [await outreach.post("/v1/touches", json=TOUCH | {"external_id": f"old-{i}"}) for i in range(5)]
    first_ids = {f"old-{i}": r.json()["event_id"] for i, r in enumerate(stored)}
    with selects_on(outreach.runtime.db.engine, "outreach_touches") as lookups:
        bodies = ([TOUCH | {"external_id": f"old-{i}"} for i in range(5)]
                  + [TOUCH | {"external_id": f"new-{i % 10}"} for i in range(20)]
                  + [TOUCH | {"external_id": None}] * 5)
        responses = await asyncio.gather(*(outreach.post("/v1/touches", json=b) for b in bodies))
    results = [
        (b["external_id"], r.status_code, r.json()["status"], r.json()["event_id"]) for b, r in zip(bodies, responses)
    ]
    assert all(r[1:3] == (200, "duplicate") and r[3] == first_ids[r[0]] for r in results[:5])
    for k in range(10):
        same = [r for r in results[5:25] if r[0] == f"new-{k}"]
        assert sorted(r[2] for r in same) == ["accepted", "duplicate"] and len({r[3] for r in same}) == 1
    assert all(r[1:3] == (202, "accepted") for r in results[25:])
    assert await count(outreach, OutreachTouch) == 5 + 10 + 5 and await count(outreach, OutreachOutbox) == 20
    assert len(lookups) < len(bodies) / 2, lookups  # one per group commit, not one per touch


async def test_overlapping_batches_concurrently_store_each_external_id_once(outreach):
    def batch(offset: int) -> dict:
        return {"touches": [TOUCH | {"external_id": f"ov-{i}"} for i in range(offset, offset + 30)]}

    responses = await asyncio.gather(*(outreach.post("/v1/touches:batch", json=batch(k * 10)) for k in range(6)))
    assert {r.status_code for r in responses} == {200}
    by_external: dict[str, set[str]] = {}
    accepted = 0
    for k, response in enumerate(responses):
        for i, result in zip(range(k * 10, k * 10 + 30), response.json()["results"]):
            by_external.setdefault(f"ov-{i}", set()).add(result["event_id"])
            accepted += result["status"] == "accepted"
    assert all(len(ids) == 1 for ids in by_external.values())  # every repeat names the first event
    assert accepted == len(by_external) == 80
    assert await count(outreach, OutreachTouch) == 80 and await count(outreach, OutreachOutbox) == 80


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def stored_touches(client) -> list[tuple[str | None, str | None, str | None]]:  # noqa: ANN001
    """``(external_id, external_key, event_id)`` of every stored touch, by event id."""
    async with client.runtime.db.reader() as s:
        rows = (await s.execute(select(OutreachTouch.external_id, OutreachTouch.external_key,
                                       OutreachTouch.event_id).order_by(OutreachTouch.event_id))).all()
    return [tuple(r) for r in rows]


async def test_two_tools_with_their_own_keys_may_send_the_same_external_id(outreach, broker):
    """External ids are unique per API key name: another tool's "123" is another touch (it was
    answered duplicate and lost), each tool's repeat is still its own duplicate, and a key
    rotated under the same name keeps its ids."""
    db = outreach.runtime.db
    other, rotated = await add_key(db, name="hubspot-sync"), await add_key(db, name="test outreach")
    mine = await outreach.post("/v1/touches", json=TOUCH | {"external_id": "123"})
    theirs = await outreach.post("/v1/touches", json=TOUCH | {"external_id": "123", "outcome": "replied"},
                                 headers=bearer(other))
    assert (mine.status_code, theirs.status_code) == (202, 202), theirs.text
    assert theirs.json()["status"] == "accepted" and theirs.json()["event_id"] != mine.json()["event_id"]
    for key, first in ((outreach.key, mine), (other, theirs), (rotated, mine)):
        again = await outreach.post("/v1/touches", json=TOUCH | {"external_id": "123"}, headers=bearer(key))
        assert again.status_code == 200, again.text
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}

    # batches: a stored id of this key's name and an id repeated within the batch are duplicates,
    # the other key's ids are not
    batch = {"touches": [TOUCH | {"external_id": "123"}, TOUCH | {"external_id": "b-1"},
                         TOUCH | {"external_id": "b-1", "outcome": "clicked"}, TOUCH | {"external_id": "b-2"}]}
    answered = await outreach.post("/v1/touches:batch", json=batch, headers=bearer(other))
    assert answered.status_code == 200, answered.text
    results = answered.json()["results"]
    assert [r["status"] for r in results] == ["duplicate", "accepted", "duplicate", "accepted"]
    assert results[0]["event_id"] == theirs.json()["event_id"] and results[2]["event_id"] == results[1]["event_id"]
    my_batch = {"touches": [TOUCH | {"external_id": "b-1"}, TOUCH | {"external_id": "b-1"},
                            TOUCH | {"external_id": "123"}]}
    mine_batch = await outreach.post("/v1/touches:batch", json=my_batch)
    assert [r["status"] for r in mine_batch.json()["results"]] == ["accepted", "duplicate", "duplicate"]
    assert mine_batch.json()["results"][2]["event_id"] == mine.json()["event_id"]
    again = await outreach.post("/v1/touches:batch", json=my_batch, headers=bearer(rotated))
    assert [r["event_id"] for r in again.json()["results"]] == [r["event_id"] for r in mine_batch.json()["results"]]
    assert {r["status"] for r in again.json()["results"]} == {"duplicate"}

    # the ids are kept as the tools gave them, answered and published unchanged
    stored = await stored_touches(outreach)
    assert sorted(r[0] for r in stored) == ["123", "123", "b-1", "b-1", "b-2"]
    assert len({r[1] for r in stored}) == 5
    found = await topic_messages(outreach, broker.bootstrap, [mine.json()["event_id"], theirs.json()["event_id"]])
    assert {found[e][0][1].data["external_id"] for e in found} == {"123"}
    assert await count(outreach, OutreachOutbox) == 5


async def test_two_keys_sending_one_external_id_concurrently_each_store_it_once(outreach):
    """The group commit's one lookup per transaction is by source: concurrent requests of two
    keys with the same id make one touch per key, every repeat naming its key's."""
    other = await add_key(outreach.runtime.db, name="hubspot-sync")
    keys = [outreach.key, other] * 8
    responses = await asyncio.gather(*(
        outreach.post("/v1/touches", json=TOUCH | {"external_id": "tool-42"}, headers=bearer(key)) for key in keys))
    for key in (outreach.key, other):
        answers = [r.json() for k, r in zip(keys, responses) if k == key]
        assert sorted(a["status"] for a in answers) == ["accepted"] + ["duplicate"] * 7
        assert len({a["event_id"] for a in answers}) == 1
    assert await count(outreach, OutreachTouch) == 2 and await count(outreach, OutreachOutbox) == 2


# ---- signed webhooks --------------------------------------------------------------------


def webhook(event_id: str = "evt_1", **touch) -> bytes:  # noqa: ANN003
    body = {"id": event_id, "type": "touch", "touch": {k: v for k, v in TOUCH.items()} | touch}
    return json.dumps(body).encode()


async def deliver(client, integration: str, body: bytes, secret: str, *, at: int | None = None,  # noqa: ANN001
                  header: str | None = None, content_type: str = "application/json"):
    signature = header if header is not None else sign(secret, body, at if at is not None else int(time.time()))
    return await client.post(f"/v1/webhooks/{integration}", content=body, headers={
        "content-type": content_type, "Leadstream-Signature": signature, "Authorization": ""})


async def test_signed_webhook_is_recorded_once_and_published(outreach, broker):
    secret = await add_secret(outreach.runtime.db, "salesloft")
    body = webhook("evt_9", outcome="positive_reply")
    first = await deliver(outreach, "salesloft", body, secret)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "accepted" and first.json()["id"] == "evt_9"
    replay = await deliver(outreach, "salesloft", body, secret)  # the same delivery again, within 300 s
    assert replay.status_code == 200
    assert replay.json() == {"id": "evt_9", "event_id": first.json()["event_id"], "status": "duplicate"}
    # the same tool id from another integration is another touch
    other = await deliver(outreach, "outreach-io", body, await add_secret(outreach.runtime.db, "outreach-io"))
    assert other.status_code == 202
    async with outreach.runtime.db.reader() as s:
        rows = (await s.execute(select(OutreachTouch).order_by(OutreachTouch.external_id))).scalars().all()
    assert [(r.external_id, r.integration) for r in rows] == [
        ("outreach-io:evt_9", "outreach-io"),
        ("salesloft:evt_9", "salesloft"),
    ]
    found = await topic_messages(outreach, broker.bootstrap, [first.json()["event_id"]])
    (key, event, _), = found[first.json()["event_id"]]
    assert key == "grace.hopper@navy-systems.example.com" and event.type == TOUCH_RECORDED
    assert event.data["integration"] == "salesloft" and event.data["external_id"] == "salesloft:evt_9"
    assert event.data["outcome"] == "positive_reply"


async def test_a_webhook_event_and_an_api_id_that_reads_the_same_are_two_touches(outreach):
    """The webhook of integration "salesloft" with event "evt_1" (published with external id
    "salesloft:evt_1") and an API caller sending external id "salesloft:evt_1" no longer
    collide; each one's repeat is its own duplicate."""
    secret = await add_secret(outreach.runtime.db, "salesloft")
    api = await outreach.post("/v1/touches", json=TOUCH | {"external_id": "salesloft:evt_1"})
    hook = await deliver(outreach, "salesloft", webhook("evt_1"), secret)
    assert (api.status_code, hook.status_code) == (202, 202), hook.text
    assert api.json()["event_id"] != hook.json()["event_id"]
    hook_again = await deliver(outreach, "salesloft", webhook("evt_1", outcome="replied"), secret)
    api_again = await outreach.post("/v1/touches:batch", json={"touches": [TOUCH | {"external_id": "salesloft:evt_1"}]})
    assert hook_again.status_code == 200 and hook_again.json()["status"] == "duplicate"
    assert hook_again.json()["event_id"] == hook.json()["event_id"]
    assert api_again.json()["results"] == [{"status": "duplicate", "event_id": api.json()["event_id"]}]
    assert sorted(r[0] for r in await stored_touches(outreach)) == ["salesloft:evt_1"] * 2


async def test_webhook_signature_failures_are_401(outreach):
    secret = await add_secret(outreach.runtime.db, "salesloft")
    body = webhook()
    now = int(time.time())
    cases = {
        "tampered body": (body.replace(b"opened", b"clicked"), sign(secret, body, now)),
        "stale timestamp": (body, sign(secret, body, now - 330)),
        "future timestamp": (body, sign(secret, body, now + 330)),
        "wrong secret": (body, sign("whsec_guess", body, now)),
        "missing header": (body, ""),
        "malformed header": (body, "sha256=abc"),
        "timestamp swapped": (body, sign(secret, body, now - 400).replace(f"t={now - 400}", f"t={now}")),
    }
    for case, (sent, header) in cases.items():
        response = await deliver(outreach, "salesloft", sent, secret, header=header)
        assert response.status_code == 401, case
        assert response.headers["content-type"] == PROBLEM
    assert await count(outreach, OutreachTouch) == 0


async def test_webhook_errors_and_other_event_types(outreach):
    db = outreach.runtime.db
    secret = await add_secret(db, "salesloft")
    assert (await deliver(outreach, "hubspot", webhook(), secret)).status_code == 404  # no secret: unknown
    wrong_type = await deliver(outreach, "salesloft", b"id=1", secret, content_type="text/plain")
    assert wrong_type.status_code == 415
    bad_touch = await deliver(outreach, "salesloft", webhook(channel="carrier_pigeon", external_id="x"), secret)
    assert bad_touch.status_code == 422
    assert sorted(e["field"] for e in bad_touch.json()["errors"]) == ["touch.channel", "touch.external_id"]
    no_touch = await deliver(outreach, "salesloft", json.dumps({"id": "e2", "type": "touch"}).encode(), secret)
    assert no_touch.status_code == 422 and no_touch.json()["errors"][0]["field"] == "touch"
    unknown_field = await deliver(
        outreach, "salesloft", json.dumps({"id": "e3", "type": "x", "extra": 1}).encode(), secret
    )
    assert unknown_field.status_code == 422 and unknown_field.json()["errors"][0]["field"] == "extra"
    ignored = await deliver(outreach, "salesloft", json.dumps({"id": "e4", "type": "sequence.paused"}).encode(), secret)
    assert ignored.status_code == 200 and ignored.json() == {"id": "e4", "status": "ignored"}
    big = await deliver(outreach, "salesloft", webhook(rep="r" * 70_000), secret)
    assert big.status_code == 413
    assert await count(outreach, OutreachTouch) == 0
    # rotation: a second secret works alongside; a revoked one no longer does
    new_secret = await add_secret(db, "salesloft")
    assert (await deliver(outreach, "salesloft", webhook("r1"), new_secret)).status_code == 202
    async with db.unit_of_work() as s:
        rows = (await s.execute(select(OutreachWebhookSecret))).scalars().all()
        first = [r.id for r in rows if SecretBox(DEVELOPMENT_KEY).decrypt(r.secret) == secret]  # stored encrypted
        await s.execute(update(OutreachWebhookSecret).where(OutreachWebhookSecret.id.in_(first))
                        .values(revoked_at=datetime.now(timezone.utc)))
    assert (await deliver(outreach, "salesloft", webhook("r2"), secret)).status_code == 401
    assert (await deliver(outreach, "salesloft", webhook("r3"), new_secret)).status_code == 202


async def test_docs_describe_the_webhook_payload_and_auth(outreach):
    spec = (await outreach.get("/openapi.json")).json()
    hook = spec["paths"]["/v1/webhooks/{integration}"]["post"]
    assert "Leadstream-Signature" in hook["description"] and "security" not in hook
    example = spec["components"]["schemas"]["WebhookEventIn"]["examples"][0]
    assert example["type"] == "touch" and example["touch"]["channel"] == "cold_email"
    assert spec["paths"]["/v1/touches:batch"]["post"]["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["schemas"]["TouchBatchIn"]["properties"]["touches"]["items"] == {
        "$ref": "#/components/schemas/TouchIn"
    }
    assert (await outreach.get("/docs")).status_code == 200
    ready = await outreach.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


# ---- the CLI (the real `leadstream` command) ----------------------------------------------


async def test_cli_api_keys_and_webhook_secrets(broker, database_factory, tmp_path):
    outreach_url, pipeline_url = await database_factory("outreach"), await database_factory("pipeline")
    env = {"LEADSTREAM_DATA_DIR": str(tmp_path), "LEADSTREAM_OUTREACH_DATABASE_URL": outreach_url,
           "LEADSTREAM_PIPELINE_DATABASE_URL": pipeline_url}
    code, out, err = await run_leadstream(env, "api-keys", "create", "--name", "Salesloft sync")
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and key.startswith("ls_")  # the key alone on stdout
    code, out, _ = await leadstream_in_process(env, "api-keys", "create", "--name", "BI", "--scope", "pipeline")
    pipeline_key = out.strip()
    code, out, _ = await leadstream_in_process(
        env, "api-keys", "create", "--name", "Both", "--scope", "pipeline", "--scope", "outreach"
    )
    both_key = out.strip()
    assert (await leadstream_in_process(env, "api-keys", "create", "--name", "x", "--scope", "admin"))[0] != 0

    # the same hashed key with the same id in both databases; never the key itself
    rows = {}
    for url, model in ((outreach_url, OutreachApiKey), (pipeline_url, PipelineApiKey)):
        db = Database(url)
        try:
            async with db.reader() as s:
                rows[model] = {r.key_hash: (r.id, r.scopes) for r in (await s.execute(select(model))).scalars()}
        finally:
            await db.dispose()
    assert rows[OutreachApiKey] == rows[PipelineApiKey]
    assert rows[OutreachApiKey][hash_key(key)][1] == "outreach"
    assert rows[OutreachApiKey][hash_key(both_key)][1] == "pipeline outreach"
    key_id = rows[OutreachApiKey][hash_key(key)][0]

    code, listing, _ = await leadstream_in_process(env, "api-keys", "list")
    assert code == 0 and "Salesloft sync" in listing and key_id in listing and key not in listing
    code, secret, err = await leadstream_in_process(env, "webhooks", "create-secret", "--integration", "salesloft")
    assert code == 0 and secret.strip().startswith("whsec_"), err
    assert (await leadstream_in_process(env, "webhooks", "create-secret", "--integration", "Bad Name"))[0] != 0
    code, listing, _ = await leadstream_in_process(env, "webhooks", "list")
    assert "salesloft" in listing and secret.strip() not in listing

    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=outreach_url))
    async with serve_app(app) as client:
        ok = await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 202
        wrong_scope = await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {pipeline_key}"})
        assert wrong_scope.status_code == 403  # known here too, so not 401
        assert (await deliver(client, "salesloft", webhook(), secret.strip())).status_code == 202
        assert (
            await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {both_key}"})
        ).status_code == 202

        both_id = rows[OutreachApiKey][hash_key(both_key)][0]
        code, _, err = await leadstream_in_process(env, "api-keys", "revoke", both_id)
        assert code == 0, err
        assert (await leadstream_in_process(env, "api-keys", "revoke", "no-such-id"))[0] == 1
        code, listing, _ = await leadstream_in_process(env, "api-keys", "list")
        revoked_line = next(line for line in listing.splitlines() if both_id in line)
        assert not revoked_line.rstrip().endswith("-")
    for url, model in ((outreach_url, OutreachApiKey), (pipeline_url, PipelineApiKey)):
        db = Database(url)
        try:
            async with db.reader() as s:
                assert (await s.execute(select(model.revoked_at).where(model.id == both_id))).scalar_one() is not None
        finally:
            await db.dispose()
    # a process started after the revocation refuses the key (running ones within the key cache's 5 s)
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=outreach_url))
    async with serve_app(app) as client:
        revoked = await client.post("/v1/touches", json=TOUCH, headers={"Authorization": f"Bearer {both_key}"})
        assert revoked.status_code == 401


# ---- erasure and the external-key migration ----------------------------------------------


async def test_an_erasure_clears_the_touches_external_ids_and_keys(outreach):
    secret = await add_secret(outreach.runtime.db, "salesloft")
    assert (await outreach.post("/v1/touches", json=TOUCH | {"external_id": "erase-me"})).status_code == 202
    assert (await deliver(outreach, "salesloft", webhook("evt_erase"), secret)).status_code == 202
    kept = await outreach.post("/v1/touches", json=TOUCH | {"email": "someone.else@example.org",
                                                             "external_id": "keep-me"})
    privacy = outreach.runtime.privacy
    async with outreach.runtime.db.unit_of_work() as s:  # as the erasure consumer runs it
        assert await service.erase(privacy, s, privacy.subject_of_email(TOUCH["email"]), None) == 2
    stored = {event_id: (external_id, key) for external_id, key, event_id in await stored_touches(outreach)}
    assert stored.pop(kept.json()["event_id"]) == ("keep-me", api_key_of("test outreach", "keep-me"))
    assert list(stored.values()) == [(None, None), (None, None)]


async def test_the_external_key_migration_fills_stored_touches_and_its_downgrade_refuses_collisions(
        database_factory):
    """0005 gives stored touches their keys: API rows by their key's name (a revoked key's too;
    the empty name when the key is not recorded), webhook rows by integration and the tool's
    id after the prefix. The downgrade restores one touch per external id, and refuses,
    changing nothing, while two sources share one."""
    from alembic import command
    from sqlalchemy import text

    from leadstream.registry import DATABASES, aupgrade
    from shared.migrate import alembic_config

    url = await database_factory("outreach")
    config = alembic_config(DATABASES["outreach"].migrations, url)
    await asyncio.to_thread(command.downgrade, config, "0004")
    now = datetime.now(timezone.utc)
    rows = [  # event id, external id, integration, api key id
        ("e1", "123", None, "k-live"), ("e2", "sl-9", None, "k-revoked"), ("e3", "old-1", None, "k-gone"),
        ("e4", "old-2", None, None), ("e5", "salesloft:evt_1", "salesloft", None),
        ("e6", "a:b:c", "a", None), ("e7", None, None, "k-live"), ("e8", "odd", "hubspot", None),
    ]
    db = Database(url, pool_size=1)
    try:
        async with db.unit_of_work() as s:
            for key_id, name, revoked in (("k-live", "tool a", None), ("k-revoked", "tool b", now)):
                await s.execute(text(
                    "INSERT INTO outreach_api_keys (id, name, scopes, key_hash, prefix, created_at, revoked_at) "
                    "VALUES (:id, :name, 'outreach', :hash, 'ls_x', :at, :revoked)"),
                    {"id": key_id, "name": name, "hash": hash_key(key_id), "at": now, "revoked": revoked})
            for event_id, external_id, integration, api_key_id in rows:
                await s.execute(text(
                    "INSERT INTO outreach_touches (event_id, email, contact_key, channel, outcome, external_id, "
                    "integration, api_key_id, payload, occurred_at, received_at) VALUES (:e, 'a@b.co', 'a@b.co', "
                    "'cold_email', 'opened', :x, :i, :k, '{}', :at, :at)"),
                    {"e": event_id, "x": external_id, "i": integration, "k": api_key_id, "at": now})
    finally:
        await db.dispose()

    await aupgrade("outreach", url)
    db = Database(url, pool_size=1)
    try:
        async with db.reader() as s:
            keys = dict((await s.execute(select(OutreachTouch.event_id, OutreachTouch.external_key))).all())
            ids = dict((await s.execute(select(OutreachTouch.event_id, OutreachTouch.external_id))).all())
    finally:
        await db.dispose()
    assert keys == {
        "e1": api_key_of("tool a", "123"), "e2": api_key_of("tool b", "sl-9"), "e3": api_key_of("", "old-1"),
        "e4": api_key_of("", "old-2"), "e5": webhook_key_of("salesloft", "evt_1"), "e6": webhook_key_of("a", "b:c"),
        "e7": None, "e8": webhook_key_of("hubspot", "odd"),
    }
    assert ids == {event_id: external_id for event_id, external_id, _, _ in rows}  # kept as the tools gave them

    # a second source's "123" (as the service now accepts): going back would lose it, so it refuses
    db = Database(url, pool_size=1)
    try:
        async with db.unit_of_work() as s:
            await s.execute(text(
                "INSERT INTO outreach_touches (event_id, email, contact_key, channel, outcome, external_id, "
                "external_key, api_key_id, payload, occurred_at, received_at) VALUES ('e9', 'a@b.co', 'a@b.co', "
                "'cold_email', 'opened', '123', :key, 'k-revoked', '{}', :at, :at)"),
                {"key": api_key_of("tool b", "123"), "at": now})
    finally:
        await db.dispose()
    with pytest.raises(RuntimeError, match=r"cannot downgrade outreach below 0005.*'123' \(2 touches\)"):
        await asyncio.to_thread(command.downgrade, config, "0004")
    db = Database(url, pool_size=1)
    try:
        async with db.unit_of_work() as s:
            assert (await s.execute(text("SELECT version_num FROM alembic_version_outreach"))).scalar_one() == "0005"
            with_keys = select(func.count()).where(OutreachTouch.external_key.is_not(None))
            assert (await s.execute(with_keys)).scalar_one() == 8
            await s.execute(text("DELETE FROM outreach_touches WHERE event_id = 'e9'"))
    finally:
        await db.dispose()
    await asyncio.to_thread(command.downgrade, config, "0004")
    db = Database(url, pool_size=1)
    try:
        with pytest.raises(IntegrityError):  # one touch per external id again
            async with db.unit_of_work() as s:
                await s.execute(text(
                    "INSERT INTO outreach_touches (event_id, email, contact_key, channel, outcome, external_id, "
                    "payload, occurred_at, received_at) VALUES ('e9', 'a@b.co', 'a@b.co', 'cold_email', 'opened', "
                    "'123', '{}', :at, :at)"), {"at": now})
    finally:
        await db.dispose()
    await aupgrade("outreach", url)
