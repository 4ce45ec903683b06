"""The subscriptions API on the pipeline service (in-process app, real migrated store on both
backends): scope, secrets shown once and stored encrypted, bad input named, pagination,
deliveries listed, retried and redriven."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from services.pipeline.app import create_app
from services.pipeline.cursor import encode_cursor
from shared.secrets import DEVELOPMENT_KEY, SecretBox
from pipeline_store.models import WebhookDelivery, WebhookSubscription
from shared.webhooks import SUBSCRIBABLE_TYPES
from tests.integration.test_pipeline_api import add_key
from tests.support import make_settings, serve_app, served_service

QUALIFIED, STAGE = "io.leadstream.opportunity.qualified.v1", "io.leadstream.stage.changed.v1"
assert {QUALIFIED, STAGE} <= set(SUBSCRIBABLE_TYPES)
PROBLEM = "application/problem+json"


def subscriptions_client(broker, database_factory, data_dir):  # noqa: ANN001, ANN201
    return served_service(create_app, "pipeline", broker, database_factory, data_dir,
                          lambda db: add_key(db, "crm-team", "subscriptions"))


@pytest.fixture
async def subscriptions(broker, database_factory, tmp_path):
    async with subscriptions_client(broker, database_factory, tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
async def refusing_subscriptions(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend for the requests it must refuse: each test still finds no
    subscription stored, so none of them stored one."""
    async with subscriptions_client(broker, module_database_factory, tmp_path_factory.mktemp("subs")) as client:
        yield client


@pytest.fixture
async def local(broker, database_factory, tmp_path):
    """The same API with local receivers allowed (LEADSTREAM_WEBHOOKS_ALLOW_HTTP/_PRIVATE)."""
    url = await database_factory("pipeline")
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="pipeline", pipeline_database_url=url,
                                   webhooks_allow_http=True, webhooks_allow_private=True))
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        client.headers["Authorization"] = "Bearer " + await add_key(client.runtime.db, "dev", "subscriptions")
        yield client


def body(**overrides) -> dict:  # noqa: ANN003
    return {"url": "https://8.8.8.8/hooks/leadstream", "event_types": [QUALIFIED], "description": "CRM"} | overrides


async def test_scope_is_required(subscriptions):
    other = await add_key(subscriptions.runtime.db, "analyst", "pipeline")
    answer = await subscriptions.get("/v1/subscriptions", headers={"Authorization": f"Bearer {other}"})
    assert answer.status_code == 403 and answer.json()["required_scope"] == "subscriptions"
    assert (await subscriptions.get("/v1/subscriptions", headers={"Authorization": ""})).status_code == 401
    # and the subscriptions scope does not open the pipeline's own routes
    assert (await subscriptions.get("/v1/contacts")).status_code == 403


async def test_create_shows_the_secret_once_and_stores_it_encrypted(subscriptions, capsys):
    created = await subscriptions.post("/v1/subscriptions", json=body())
    assert created.status_code == 201, created.text
    sub = created.json()
    secret = sub["secret"]
    assert secret.startswith("whsec_") and sub["status"] == "active" and sub["event_types"] == [QUALIFIED]
    assert created.headers["location"] == f"/v1/subscriptions/{sub['id']}"
    async with subscriptions.runtime.db.reader() as s:
        stored = (await s.execute(select(WebhookSubscription.secret))).scalar_one()
    assert secret not in stored and SecretBox(DEVELOPMENT_KEY).decrypt(stored) == secret
    one = await subscriptions.get(f"/v1/subscriptions/{sub['id']}")
    listed = await subscriptions.get("/v1/subscriptions")
    patched = await subscriptions.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "paused"})
    bad = await subscriptions.patch(f"/v1/subscriptions/{sub['id']}", json={"secret": secret})
    for answer in (one, listed, patched, bad):
        assert secret not in answer.text and "secret" not in answer.json().get("items", [answer.json()])[0]
    assert bad.status_code == 422
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err  # nor in any log line


@pytest.mark.parametrize("field,value,message", [
    ("url", "not a url", "white space"),
    ("url", "example.com/hook", "not an absolute http(s) URL"),
    ("url", "ftp://8.8.8.8/x", "not an absolute http(s) URL"),
    ("url", "http://8.8.8.8/x", "must use https"),
    ("url", "https://user:pw@8.8.8.8/x", "credentials"),
    ("url", "https://127.0.0.1/x", "loopback, private or link-local"),
    ("url", "https://localhost:8443/x", "loopback, private or link-local"),
    ("url", "https://10.1.2.3/x", "loopback, private or link-local"),
    ("url", "https://169.254.169.254/latest/meta-data", "loopback, private or link-local"),
    ("url", "https://[::1]/x", "loopback, private or link-local"),
    ("url", "https://[64:ff9b::a9fe:a9fe]/latest/meta-data", "which embeds 169.254.169.254"),
    ("url", "https://[64:ff9b:1::a00:1]/x", "loopback, private or link-local"),
    ("url", "https://[2002:7f00:1::]/x", "which embeds 127.0.0.1"),
    ("url", "https://[::10.0.0.1]/x", "which embeds 10.0.0.1"),
    ("url", "https://[::ffff:127.0.0.1]/x", "which embeds 127.0.0.1"),
    ("url", "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x", "loopback, private or link-local"),
    ("url", "https://nowhere.invalid/x", "does not resolve"),
    ("url", "https://8.8.8.8:99999/x", "not a valid URL"),
    ("url", "https://8.8.8.8/" + "x" * 2100, "at most 2048"),
    ("event_types", ["io.leadstream.lead.captured.v1"], "Input should be"),
    ("event_types", [], "at least 1"),
    ("description", "d" * 501, "at most 500"),
])
async def test_bad_input_is_422_naming_the_field(refusing_subscriptions, field, value, message):
    answer = await refusing_subscriptions.post("/v1/subscriptions", json=body(**{field: value}))
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM, answer.text
    errors = answer.json()["errors"]
    assert errors[0]["field"].split(".")[0] == field and message in errors[0]["message"], errors
    assert await count(refusing_subscriptions) == 0


async def test_unknown_field_missing_field_and_not_json(subscriptions):
    unknown = await subscriptions.post("/v1/subscriptions", json=body(secret="mine"))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "secret"
    missing = await subscriptions.post("/v1/subscriptions", json={"url": "https://8.8.8.8/"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "event_types"
    text = await subscriptions.post("/v1/subscriptions", content=b"url=x", headers={"content-type": "text/plain"})
    assert text.status_code == 415


async def test_settings_allow_local_receivers(local):
    answer = await local.post("/v1/subscriptions", json=body(url="http://127.0.0.1:9/hook"))
    assert answer.status_code == 201, answer.text


async def test_get_patch_delete_and_pagination(subscriptions):
    made = [(await subscriptions.post("/v1/subscriptions", json=body(description=f"n{i}"))).json() for i in range(3)]
    first = (await subscriptions.get("/v1/subscriptions", params={"limit": 2})).json()
    second = (await subscriptions.get("/v1/subscriptions", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [s["id"] for s in first["items"] + second["items"]] == [s["id"] for s in reversed(made)]
    assert second["next_cursor"] is None
    bad_cursor = await subscriptions.get("/v1/subscriptions", params={"cursor": "nope"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["errors"][0]["field"] == "cursor"

    sub = made[0]["id"]
    paused = await subscriptions.patch(f"/v1/subscriptions/{sub}", json={"status": "paused"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    changed = await subscriptions.patch(f"/v1/subscriptions/{sub}", json={
        "status": "active", "event_types": [STAGE, QUALIFIED, STAGE], "url": "https://8.8.4.4/new"})
    assert changed.json()["event_types"] == [STAGE, QUALIFIED] and changed.json()["url"] == "https://8.8.4.4/new"
    for patch, field in (({}, "body"), ({"url": "https://10.0.0.1/"}, "url"), ({"status": "deleted"}, "status"),
                         ({"url": "https://[64:ff9b::a00:1]/"}, "url"), ({"url": "https://[2002:a9fe:a9fe::]/"}, "url"),
                         ({"url": None}, "url"), ({"event_types": None}, "event_types"), ({"status": None}, "status"),
                         ({"event_types": None, "description": "kept?"}, "event_types"),
                         ({"event_types": ["x"]}, "event_types"), (None, "body"), ([], "body")):
        answer = await subscriptions.patch(f"/v1/subscriptions/{sub}", content=json.dumps(patch),
                                           headers={"content-type": "application/json"})
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM, answer.text
        assert [e["field"].split(".")[0] for e in answer.json()["errors"]] == [field], answer.text
        if isinstance(patch, dict) and patch.get(field, "") is None:
            assert "cannot be null" in answer.json()["errors"][0]["message"]
    unchanged = (await subscriptions.get(f"/v1/subscriptions/{sub}")).json()
    assert unchanged["url"] == "https://8.8.4.4/new" and unchanged["event_types"] == [STAGE, QUALIFIED]
    assert unchanged["status"] == "active" and unchanged["description"] == "n0"
    cleared = await subscriptions.patch(f"/v1/subscriptions/{sub}", json={"description": None})
    assert cleared.status_code == 200 and cleared.json()["description"] is None  # the one field that may be null
    assert (await subscriptions.patch("/v1/subscriptions/nope", json={"status": "paused"})).status_code == 404
    assert (await subscriptions.get("/v1/subscriptions/nope")).status_code == 404

    assert (await subscriptions.delete(f"/v1/subscriptions/{sub}")).status_code == 204
    assert (await subscriptions.get(f"/v1/subscriptions/{sub}")).status_code == 404
    assert (await subscriptions.delete(f"/v1/subscriptions/{sub}")).status_code == 404


async def test_deliveries_listed_retried_and_redriven(subscriptions):
    sub = (await subscriptions.post("/v1/subscriptions", json=body())).json()["id"]
    now = datetime.now(timezone.utc)
    async with subscriptions.runtime.db.unit_of_work() as s:
        for i, status in enumerate(["delivered", "dead", "dead", "pending"]):
            s.add(WebhookDelivery(subscription_id=sub, event_id=f"evt-{i}", event_type=QUALIFIED, key="k@x.com",
                                  partition=0, payload=b"{}", status=status, attempts=3 if status == "dead" else 1,
                                  next_attempt_at=now + timedelta(minutes=5), expires_at=now - timedelta(hours=1),
                                  last_status=500 if status == "dead" else 200,
                                  last_error="HTTP 500" if status == "dead" else None,
                                  published_at=now, created_at=now + timedelta(seconds=i)))
    listed = (await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries", params={"limit": 3})).json()
    assert [d["event_id"] for d in listed["items"]] == ["evt-3", "evt-2", "evt-1"] and listed["next_cursor"]
    rest = (await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries",
                                    params={"limit": 3, "cursor": listed["next_cursor"]})).json()
    assert [d["event_id"] for d in rest["items"]] == ["evt-0"] and rest["next_cursor"] is None
    dead = (await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries", params={"status": "dead"})).json()["items"]
    assert [d["event_id"] for d in dead] == ["evt-2", "evt-1"]
    assert dead[0]["attempts"] == 3 and dead[0]["last_status"] == 500 and dead[0]["last_error"] == "HTTP 500"
    assert dead[0]["next_attempt_at"] is None
    assert listed["items"][0]["next_attempt_at"] is not None  # pending: when it is due

    retried = await subscriptions.post(f"/v1/subscriptions/{sub}/deliveries/{dead[0]['id']}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    assert retried.json()["next_attempt_at"] is not None
    again = await subscriptions.post(f"/v1/subscriptions/{sub}/deliveries/{dead[0]['id']}/retry")
    assert again.status_code == 409
    assert (await subscriptions.post(f"/v1/subscriptions/{sub}/deliveries/999999/retry")).status_code == 404
    assert (await subscriptions.post(f"/v1/subscriptions/{sub}/deliveries/abc/retry")).status_code == 422
    assert (await subscriptions.post("/v1/subscriptions/nope/redrive")).status_code == 404
    redriven = await subscriptions.post(f"/v1/subscriptions/{sub}/redrive")
    assert redriven.status_code == 202 and redriven.json() == {"requeued": 1}
    async with subscriptions.runtime.db.reader() as s:
        states = dict((await s.execute(select(WebhookDelivery.event_id, WebhookDelivery.status))).all())
        windows = (await s.execute(select(WebhookDelivery.expires_at)
                                   .where(WebhookDelivery.event_id == "evt-1"))).scalar()
    assert states == {"evt-0": "delivered", "evt-1": "pending", "evt-2": "pending", "evt-3": "pending"}
    assert windows.replace(tzinfo=timezone.utc) > now + timedelta(hours=23)  # a new 24-hour window
    bad = await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries", params={"status": "lost"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    assert (await subscriptions.get("/v1/subscriptions/nope/deliveries")).status_code == 404
    # deleting the subscription removes its deliveries
    assert (await subscriptions.delete(f"/v1/subscriptions/{sub}")).status_code == 204
    async with subscriptions.runtime.db.reader() as s:
        assert (await s.execute(select(WebhookDelivery))).first() is None


async def test_a_delivery_id_out_of_the_database_range_is_unknown(subscriptions):
    """An id no delivery can have is 404 like any unknown one, not the database's integer overflow."""
    known = (await subscriptions.post("/v1/subscriptions", json=body())).json()["id"]
    for sub in (known, "nope"):
        for delivery_id in ("99999999999999999999999", str(2**63), str(-(2**63) - 1), "0", "-1"):
            answer = await subscriptions.post(f"/v1/subscriptions/{sub}/deliveries/{delivery_id}/retry")
            assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM, answer.text


async def test_a_deliveries_cursor_naming_an_id_out_of_range_is_422(subscriptions):
    sub = (await subscriptions.post("/v1/subscriptions", json=body())).json()["id"]
    at = datetime.now(timezone.utc)
    for row_id in ("99999999999999999999999", str(2**63), "x"):
        cursor = encode_cursor("deliveries", "desc", at, row_id)
        answer = await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries", params={"cursor": cursor})
        assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "cursor", answer.text
    fits = encode_cursor("deliveries", "desc", at, str(2**63 - 1))
    answer = await subscriptions.get(f"/v1/subscriptions/{sub}/deliveries", params={"cursor": fits})
    assert answer.status_code == 200 and answer.json() == {"items": [], "next_cursor": None}, answer.text


async def count(client) -> int:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        return len((await s.execute(select(WebhookSubscription.id))).all())
