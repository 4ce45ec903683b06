"""The privacy API's access export over HTTP (in-process app, real broker, real store built by
Alembic) and ``leadstream privacy export``, on SQLite and PostgreSQL.

The store is seeded as qualification and the webhooks process write it (the pipeline service
only reads it here); the consent ledger's way from a form to the store is in
``test_consent_ledger.py``.
"""

from __future__ import annotations

import getpass
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from pipeline_store.models import (
    ConsentEntry, ErasureAudit, PipelineApiKey, Score, StageChange, Touch, WebhookDelivery, WebhookSubscription,
)
from services.pipeline.app import create_app
from shared.api_keys import hash_key
from tests.integration.test_pipeline_api import T0, Store, add_key, day
from tests.support import leadstream_in_process, make_settings, run_leadstream, serve_app, served_service

pytestmark = pytest.mark.timeout(120)

EXPORTS = "/v1/privacy/exports"


@asynccontextmanager
async def privacy_client(broker, database_factory, data_dir):  # noqa: ANN001, ANN201
    async with served_service(create_app, "pipeline", broker, database_factory, data_dir,
                              lambda db: add_key(db, "dpo@example", "privacy")) as client:
        client.store = Store(client.runtime.db)
        yield client


@pytest.fixture
async def privacy(broker, database_factory, tmp_path):
    async with privacy_client(broker, database_factory, tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
async def refusing_privacy(broker, module_database_factory, tmp_path_factory):
    """One app per module and backend for the requests it must refuse: each test still finds
    the audit empty, so none of them looked anyone up."""
    async with privacy_client(broker, module_database_factory, tmp_path_factory.mktemp("privacy")) as client:
        yield client


async def audit(db) -> list[ErasureAudit]:  # noqa: ANN001
    """Every row of the privacy requests' audit, oldest first."""
    async with db.reader() as session:
        return list((await session.execute(select(ErasureAudit).order_by(ErasureAudit.id))).scalars())


async def key_actor(db, key: str) -> str:  # noqa: ANN001
    """The audit's ``who`` for an API key: its id and name."""
    async with db.reader() as session:
        query = select(PipelineApiKey).where(PipelineApiKey.key_hash == hash_key(key))
        row = (await session.execute(query)).scalar_one()
    return f"key {row.id} ({row.name})"


def problem(response, status: int) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# ---- who may ask --------------------------------------------------------------------------


async def test_the_privacy_scope_is_required(privacy):
    db = privacy.runtime.db
    pipeline_only = await add_key(db, "bi", "pipeline")
    everything_else = await add_key(db, "ops", "outreach pipeline subscriptions")
    revoked = await add_key(db, "old", "privacy")
    async with db.unit_of_work() as s:
        row = (await s.execute(select(PipelineApiKey).where(PipelineApiKey.key_hash == hash_key(revoked)))).scalar_one()
        row.revoked_at = datetime.now(timezone.utc)
    query = {"email": "jo@example.com"}
    assert problem(await privacy.get(EXPORTS, params=query, headers={"Authorization": ""}), 401)
    assert problem(await privacy.get(EXPORTS, params=query, headers={"Authorization": "Bearer ls_nope"}), 401)
    assert problem(await privacy.get(EXPORTS, params=query, headers={"Authorization": f"Bearer {revoked}"}), 401)
    for key in (pipeline_only, everything_else):
        body = problem(await privacy.get(EXPORTS, params=query, headers={"Authorization": f"Bearer {key}"}), 403)
        assert body["required_scope"] == "privacy"
    # a privacy key opens nothing else
    assert problem(await privacy.get("/v1/contacts"), 403)["required_scope"] == "pipeline"
    # refused callers are not audited: they were answered nothing about anyone
    assert await audit(db) == []
    # an unknown person with the scope: 404, without repeating the address; audited as not found
    body = problem(await privacy.get(EXPORTS, params=query), 404)
    assert "jo@example.com" not in str(body)
    (row,) = await audit(db)
    assert (row.kind, row.actor, row.stores, row.outcome, row.erasure_id) == (
        "export", await key_actor(db, privacy.key), "pipeline", "not_found", None)
    assert "jo" not in f"{row.actor} {row.stores} {row.outcome}".lower()


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "kind"), [
    ({}, "missing"),
    ({"email": ""}, "value_error"),
    ({"email": "not-an-address"}, "value_error"),
    ({"email": "jo@"}, "value_error"),
    ({"email": "@example.com"}, "value_error"),
    ({"email": "jo@@example.com"}, "value_error"),
    ({"email": "j" * 310 + "@example.com"}, "string_too_long"),
    ({"email": "jo@example.com", "format": "csv"}, "extra_forbidden"),
])
async def test_a_missing_or_malformed_email_is_422_naming_it(refusing_privacy, params, kind):
    body = problem(await refusing_privacy.get(EXPORTS, params=params), 422)
    (error,) = body["errors"]
    assert error["in"] == "query" and error["type"] == kind
    assert error["field"] == ("format" if kind == "extra_forbidden" else "email")
    assert await audit(refusing_privacy.runtime.db) == []  # nothing was looked up


async def test_only_get_is_answered(privacy):
    assert problem(await privacy.post(EXPORTS, json={"email": "jo@example.com"}), 405)


# ---- the export ---------------------------------------------------------------------------


async def seed_person(store: Store, db) -> dict:  # noqa: ANN001
    """One person with something in every section, and a neighbour who must not appear."""
    account = store.account("analytical.co.uk", company="Analytical Engines", employees=250, industry="software",
                            firmographics={"company": {"value": "Analytical Engines", "source": "lead", "at": "x"}})
    jo = store.contact(email="jo@gmail.com", first_name="Jo", last_name="Lovelace", title="VP Engineering",
                       phone="+44 20 7946 0000", linkedin_url="https://www.linkedin.com/in/jo",
                       account_domain=account.domain, stage="sql", sql_at=T0 + day(1),
                       fit_reasons=[{"rule": "title.vp", "points": 20.0}])
    other = store.contact(email="ada@example.org", first_name="Ada")
    opportunity = store.opportunity(jo, qualified_at=T0 + day(1))
    lead = str(uuid.uuid4())
    rows = [
        account, jo, other, opportunity,
        Touch(event_id=lead, contact_id=jo.id, event_type="io.leadstream.lead.captured.v1", motion="inbound",
              channel="paid_search", campaign="brand", form_id="demo-request", form_type="demo_request",
              occurred_at=T0, recorded_at=T0, data={"email": "Jo@GoogleMail.com", "phone": "+44 20 7946 0000",
                                                    "page_url": "https://www.example.com/demo?gclid=abc"}),
        Touch(event_id=str(uuid.uuid4()), contact_id=other.id, event_type="io.leadstream.lead.captured.v1",
              motion="inbound", channel="direct", occurred_at=T0, recorded_at=T0, data={"email": "ada@example.org"}),
        Score(contact_id=jo.id, fit_score=60.0, fit_grade="B", fit_reasons=[{"rule": "title.vp", "points": 20.0}],
              engagement_score=30.0, engagement_reasons=[{"rule": "form.demo_request", "points": 30.0}],
              policy_version="2025-01", cause_event_id=lead, scored_at=T0),
        StageChange(contact_id=jo.id, from_stage="lead", to_stage="sql", opportunity_id=opportunity.id,
                    reason="demo request (2025-01)", changed_by="qualification", policy_version="2025-01",
                    cause_event_id=lead, event_id=str(uuid.uuid4()), changed_at=T0 + day(1)),
    ]
    await store.add(*rows)
    await store.add(  # after their contacts (no ORM relationship orders the inserts)
        ConsentEntry(contact_id=jo.id, purpose="marketing", status="granted", text="I agree to product news.",
                     source="form:demo-request", occurred_at=T0, cause_event_id=lead, recorded_at=T0),
        ConsentEntry(contact_id=other.id, purpose="marketing", status="withdrawn", source="outreach:cold_email",
                     occurred_at=T0, cause_event_id=str(uuid.uuid4()), recorded_at=T0),
    )
    subscription = WebhookSubscription(id=str(uuid.uuid4()), url="https://crm.example.net/hooks", event_types=[],
                                       status="active", secret="encrypted", created_by="ops", created_at=T0,
                                       updated_at=T0)
    deliveries = [
        WebhookDelivery(subscription_id=subscription.id, event_id=event_id,
                        event_type="io.leadstream.opportunity.qualified.v1", key=email, partition=0, payload=b"{}",
                        status="delivered", attempts=1, next_attempt_at=T0, expires_at=T0 + day(1),
                        published_at=T0, created_at=T0, delivered_at=T0)
        for email, event_id in (("jo@gmail.com", opportunity.qualified_event_id), ("ada@example.org", lead + "-x"))
    ]
    await store.add(subscription)
    await store.add(*deliveries)
    return {"jo": jo, "opportunity": opportunity, "lead": lead, "subscription": subscription}


async def test_the_export_holds_every_section_of_the_person_and_nothing_of_others(privacy):
    seeded = await seed_person(privacy.store, privacy.runtime.db)
    jo = seeded["jo"]
    # any form of the address finds the person: case, spaces, googlemail.com
    response = await privacy.get(EXPORTS, params={"email": "  Jo@GoogleMail.com "})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["email"] == "jo@gmail.com" and document["exported_at"]
    contact = document["contact"]
    assert (contact["id"], contact["email"], contact["first_name"], contact["last_name"]) == (
        jo.id, "jo@gmail.com", "Jo", "Lovelace")
    assert (contact["title"], contact["phone"], contact["linkedin_url"]) == (
        "VP Engineering", "+44 20 7946 0000", "https://www.linkedin.com/in/jo")
    assert contact["fit"]["reasons"] == [{"rule": "title.vp", "points": 20.0}]
    # the account link
    assert contact["account_domain"] == "analytical.co.uk"
    assert contact["account"]["company"] == "Analytical Engines"
    # the timeline, with the payload as received
    (fact,) = document["timeline"]
    assert fact["event_id"] == seeded["lead"] and fact["data"]["page_url"].endswith("?gclid=abc")
    # scores with reasons
    (score,) = document["scores"]
    assert score["fit"]["reasons"] == [{"rule": "title.vp", "points": 20.0}]
    assert score["engagement"]["reasons"] == [{"rule": "form.demo_request", "points": 30.0}]
    # stage changes and opportunities
    (change,) = document["stage_changes"]
    assert (change["from_stage"], change["to_stage"], change["reason"]) == ("lead", "sql", "demo request (2025-01)")
    (opportunity,) = document["opportunities"]
    assert opportunity["id"] == seeded["opportunity"].id and opportunity["email"] == "jo@gmail.com"
    # the consent ledger and the current consent per purpose
    (consent,) = document["consents"]
    assert (consent["purpose"], consent["status"], consent["text"], consent["source"], consent["cause_event_id"]) == (
        "marketing", "granted", "I agree to product news.", "form:demo-request", seeded["lead"])
    assert document["consent_state"] == {"marketing": {"status": "granted", "since": "2025-01-10T09:00:00Z",
                                                       "source": "form:demo-request"}}
    # who received their data
    (delivery,) = document["webhook_deliveries"]
    assert delivery["url"] == "https://crm.example.net/hooks"
    assert delivery["event_id"] == seeded["opportunity"].qualified_event_id and delivery["status"] == "delivered"
    assert "ada@example.org" not in response.text and "Ada" not in response.text
    # the contact's own page says the same about the person
    bi = await add_key(privacy.runtime.db, "bi", "pipeline")
    detail = await privacy.get(f"/v1/contacts/{jo.id}", headers={"Authorization": f"Bearer {bi}"})
    assert detail.status_code == 200
    assert detail.json()["timeline"] == document["timeline"]
    assert detail.json()["stage_history"] == document["stage_changes"]
    assert detail.json()["score_history"] == document["scores"]
    assert detail.json()["consents"] == document["consents"]
    assert detail.json()["consent_state"] == document["consent_state"]
    # every section is checked above
    assert set(document) == {"email", "exported_at", "contact", "timeline", "scores", "stage_changes",
                             "opportunities", "consents", "consent_state", "webhook_deliveries"}


async def test_each_export_is_audited_without_the_email_or_names(privacy):
    """One row per access request: who (the key), when, kind, the store read, the outcome; no
    column holds the address (in any form) or the person's names."""
    await seed_person(privacy.store, privacy.runtime.db)
    before = datetime.now(timezone.utc)
    assert (await privacy.get(EXPORTS, params={"email": "  Jo@GoogleMail.com "})).status_code == 200
    (row,) = await audit(privacy.runtime.db)
    assert (row.kind, row.actor, row.stores, row.outcome, row.erasure_id) == (
        "export", await key_actor(privacy.runtime.db, privacy.key), "pipeline", "exported", None)
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=timezone.utc)
    assert before <= at <= datetime.now(timezone.utc)
    columns = " ".join(str(getattr(row, c.key)) for c in ErasureAudit.__table__.columns).lower()
    assert not [word for word in ("jo", "gmail", "lovelace") if word in columns], columns
    # a second request is a second row; an unknown person's is not_found
    assert (await privacy.get(EXPORTS, params={"email": "jo@gmail.com"})).status_code == 200
    assert (await privacy.get(EXPORTS, params={"email": "nobody@example.com"})).status_code == 404
    assert [(r.kind, r.outcome) for r in await audit(privacy.runtime.db)] == [
        ("export", "exported"), ("export", "exported"), ("export", "not_found")]


async def test_the_command_prints_the_same_document(privacy, tmp_path):
    await seed_person(privacy.store, privacy.runtime.db)
    env = {"LEADSTREAM_DATA_DIR": str(tmp_path), "LEADSTREAM_PIPELINE_DATABASE_URL": privacy.url}
    code, out, err = await run_leadstream(env, "privacy", "export", "JO@googlemail.com")
    assert code == 0, err
    import orjson

    printed = orjson.loads(out)
    answered = (await privacy.get(EXPORTS, params={"email": "jo@gmail.com"})).json()
    assert printed.pop("exported_at") and answered.pop("exported_at")
    assert printed == answered
    # unknown: exit 1 with a sentence, nothing on stdout; malformed: a usage error (exit 2)
    code, out, err = await leadstream_in_process(env, "privacy", "export", "nobody@example.com")
    assert (code, out) == (1, "") and "no contact" in err
    code, out, err = await leadstream_in_process(env, "privacy", "export", "not-an-address")
    assert code == 2 and out == "" and "EMAIL" in err
    # audited: the command as its user, the API as its key; the malformed address not at all
    cli = f"cli {getpass.getuser()}"
    rows = await audit(privacy.runtime.db)
    assert [(r.kind, r.actor, r.stores, r.outcome) for r in rows] == [
        ("export", cli, "pipeline", "exported"),
        ("export", await key_actor(privacy.runtime.db, privacy.key), "pipeline", "exported"),
        ("export", cli, "pipeline", "not_found")]
    assert not any("gmail" in f"{r.actor} {r.stores}".lower() for r in rows)


async def test_api_keys_take_the_privacy_scope(broker, database_factory, tmp_path):
    env = {"LEADSTREAM_DATA_DIR": str(tmp_path),
           "LEADSTREAM_OUTREACH_DATABASE_URL": await database_factory("outreach"),
           "LEADSTREAM_PIPELINE_DATABASE_URL": await database_factory("pipeline")}
    code, out, err = await run_leadstream(env, "api-keys", "create", "--name", "dpo", "--scope", "privacy")
    assert code == 0, err
    key = out.strip()
    assert "scopes: privacy" in err
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="pipeline",
                                   pipeline_database_url=env["LEADSTREAM_PIPELINE_DATABASE_URL"]))
    async with serve_app(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        assert problem(await client.get(EXPORTS, params={"email": "jo@example.com"}), 404)
        assert problem(await client.get("/v1/contacts"), 403)
    code, _, err = await leadstream_in_process(env, "api-keys", "create", "--name", "x",
                                               "--scope", "privacy-admin")
    assert code == 2 and "privacy" in err



async def test_the_audit_migration_keeps_erasure_rows_and_goes_back(database_factory):
    """0012 classes the erasures audited before it as ``erasure`` and takes exports; its
    downgrade drops the export rows (the old table cannot hold them) and keeps the erasures'."""
    import asyncio

    from alembic import command
    from sqlalchemy import text

    from leadstream.registry import DATABASES, aupgrade
    from services.pipeline.privacy.service import audited_export
    from shared.errors import ProblemError
    from shared.migrate import alembic_config

    url = await database_factory("pipeline")
    config = alembic_config(DATABASES["pipeline"].migrations, url)
    await asyncio.to_thread(command.downgrade, config, "0011")
    async with _store(url) as db, db.unit_of_work() as session:  # an erasure audited before 0012
        await session.execute(text(
            "INSERT INTO erasure_audit (erasure_id, actor, outcome, at, stores) "
            "VALUES ('e-1', 'cli ops', 'requested', :at, 'capture,outreach,pipeline')"), {"at": T0})
    await aupgrade("pipeline", url)
    async with _store(url) as db:
        with pytest.raises(ProblemError):
            await audited_export(db, "nobody@example.com", "cli ops")
        rows = await audit(db)
    assert [(r.kind, r.erasure_id, r.actor, r.outcome, r.stores) for r in rows] == [
        ("erasure", "e-1", "cli ops", "requested", "capture,outreach,pipeline"),
        ("export", None, "cli ops", "not_found", "pipeline")]

    await asyncio.to_thread(command.downgrade, config, "0011")
    async with _store(url) as db, db.reader() as session:
        (old,) = (await session.execute(text("SELECT * FROM erasure_audit"))).mappings().all()
    assert set(old) == {"id", "erasure_id", "actor", "outcome", "at", "stores"}
    assert (old["erasure_id"], old["outcome"]) == ("e-1", "requested")
    await aupgrade("pipeline", url)
    async with _store(url) as db:
        assert [(r.kind, r.erasure_id) for r in await audit(db)] == [("erasure", "e-1")]


@asynccontextmanager
async def _store(url: str):  # noqa: ANN202
    from shared.db import Database

    db = Database(url, pool_size=1)
    try:
        yield db
    finally:
        await db.dispose()
