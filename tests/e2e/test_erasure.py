"""Erasure across every store, as a user runs it: the real processes, the real broker and
databases (SQLite files and PostgreSQL).

One person gets a lead, a prospect, touches and sales transitions; erasing them leaves
nothing of their email, names or phone in any database file (SQLite) or table (PostgreSQL),
outbox included, and the analytics answer is the same before and after. Then: the broker
restarts and nothing of the person is published again; outreach is killed during another
erasure, which completes once it is back; suppression drops or refuses the erased address
until a new opt-in; and the API's bad inputs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import inspect, select, text

from pipeline_store.source_rollups import MODELS
from shared.db import Database
from shared.events import ALL_TOPICS, CONTACT_ERASED, PIPELINE_CHANGES
from tests.e2e.stack import FullStack
from tests.conftest import DatabaseFactory
from tests.support import ROOT, postgres_available, read_until_idle

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PERSON = {
    "email": "Zebulonia.Quixotryx@Erasure-Example.com",
    "first_name": "Zebulonia",
    "last_name": "Quixotryx",
    "phone": "+44 20 7946 0991",
    "title": "VP Marketing",
    "company": "Erasure Example",
    "employees": 250,
}
# what must be found nowhere after the erasure (compared lower-cased)
# (the account, a company, stays: erasure-example.com is no trace of the person)
TRACES = ("zebulonia", "quixotryx", "7946 0991")
SOURCES = ["group_by=channel", "group_by=campaign&attribution=last", "group_by=motion"]


@pytest.fixture
async def stack(database_factory, tmp_path):
    """A stack of the test's own, for a test that restarts the broker, kills a service or
    searches every database for a person's traces."""
    urls = {db: await database_factory(db) for db in ("capture", "outreach", "pipeline")}
    full = FullStack(urls, tmp_path)
    try:
        await full.start(workers=1)
        yield full
    finally:
        await full.close()


# One stack per backend for the tests that only add people and erase them (each reads its own
# erasure's rows and messages): a stack's start is most of such a test's time. Each backend's
# tests run one after the other on one parallel worker (``--dist loadgroup``, the Makefile).
@pytest.fixture(scope="module", params=[pytest.param(b, marks=pytest.mark.xdist_group(f"erasure-{b}"))
                                        for b in ("sqlite", "postgres")])
async def shared_stack(request, tmp_path_factory):
    if request.param == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL is not answering")
    factory = DatabaseFactory(request.param, tmp_path_factory.mktemp(f"erasure-{request.param}"))
    full = None
    try:
        urls = {db: await factory(db) for db in ("capture", "outreach", "pipeline")}
        full = FullStack(urls, tmp_path_factory.mktemp(f"erasure-stack-{request.param}"))
        await full.start(workers=1)
        yield full
    finally:
        if full is not None:
            await full.close()
        await factory.drop()


async def _api_key(stack: FullStack, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await stack.create_key('privacy-officer', *scopes)}"}


async def _until(check, timeout: float = 90.0, every: float = 0.5):  # noqa: ANN001, ANN202
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(every)


async def _person_history(stack: FullStack, client: httpx.AsyncClient, person: dict, tag: str) -> str:
    """A lead, a prospect, three touches (the last books a meeting: qualified) and a won deal;
    returns the opportunity id."""
    first, last, domain = person["first_name"].lower(), person["last_name"].lower(), person["email"].split("@")[1]
    lead = {**{k: person[k] for k in ("email", "first_name", "last_name", "phone", "title", "company")},
            "form_type": "demo_request", "page_url": f"https://{domain}/pricing?ref={first}",
            "referrer": f"https://www.google.com/search?q={first}+{last}",
            "utm": {"source": "google", "medium": "cpc", "campaign": "privacy-e2e"},
            "fields": {"message": f"Call {person['first_name']} {person['last_name']} on {person['phone']}"},
            "consent": {"marketing": True, "text": "Yes"}}
    r = await client.post(f"{stack.capture.url}/v1/leads", json=lead, headers={"Idempotency-Key": f"{tag}-lead"})
    assert r.status_code == 202, r.text
    prospect = {**{k: person[k] for k in ("email", "first_name", "last_name", "phone", "title", "company",
                                          "employees")},
                "linkedin_url": f"https://www.linkedin.com/in/{first}-{last}", "owner": "rep@ourco.example"}
    r = await client.post(f"{stack.outreach.url}/v1/prospects", json=prospect, headers=stack.auth)
    assert r.status_code == 202, r.text
    touches = [{"email": person["email"], "channel": "cold_email", "outcome": outcome, "sequence": "privacy-e2e",
                "step": i + 1, "external_id": f"{tag}-{i}"}
               for i, outcome in enumerate(["sent", "opened", "meeting_booked"])]
    r = await client.post(f"{stack.outreach.url}/v1/touches:batch", json={"touches": touches}, headers=stack.auth)
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 3, r.text

    async def opportunity() -> str | None:
        r = await client.get(f"{stack.pipeline.url}/v1/contacts", params={"email": person["email"]},
                             headers=stack.auth)
        items = r.json()["items"] if r.status_code == 200 else []
        if not items:
            return None
        r = await client.get(f"{stack.pipeline.url}/v1/contacts/{items[0]['id']}", headers=stack.auth)
        opportunities = r.json()["opportunities"]
        return opportunities[0]["id"] if opportunities else None

    opportunity_id = await _until(opportunity)
    assert opportunity_id, "the person never qualified"
    for move in ({"to": "opportunity"}, {"to": "customer", "amount": 4200}):
        r = await client.post(f"{stack.pipeline.url}/v1/opportunities/{opportunity_id}/transitions", json=move,
                              headers={**stack.auth, "Idempotency-Key": f"{tag}-{move['to']}"})
        assert r.status_code == 200, r.text
    return opportunity_id


async def _contact(stack: FullStack, client: httpx.AsyncClient, email: str) -> str | None:
    r = await client.get(f"{stack.pipeline.url}/v1/contacts", params={"email": email}, headers=stack.auth)
    items = r.json()["items"] if r.status_code == 200 else []
    return items[0]["id"] if items else None


async def _sources(stack: FullStack, client: httpx.AsyncClient) -> list[dict]:
    out = []
    for query in SOURCES:
        r = await client.get(f"{stack.pipeline.url}/v1/analytics/sources?{query}", headers=stack.auth)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


async def _erase(stack: FullStack, client: httpx.AsyncClient, officer: dict, email: str) -> str:
    r = await client.post(f"{stack.pipeline.url}/v1/privacy/erasures", json={"email": email}, headers=officer)
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("pending", "completed")
    return r.json()["erasure_id"]


async def _status(stack: FullStack, client: httpx.AsyncClient, officer: dict, erasure_id: str) -> dict:
    r = await client.get(f"{stack.pipeline.url}/v1/privacy/erasures/{erasure_id}", headers=officer)
    assert r.status_code == 200, r.text
    return r.json()


async def _completed(stack: FullStack, client: httpx.AsyncClient, officer: dict, erasure_id: str,
                     timeout: float = 120.0) -> dict:
    async def done() -> dict | None:
        status = await _status(stack, client, officer, erasure_id)
        return status if status["status"] == "completed" else None

    status = await _until(done, timeout)
    assert status, await _status(stack, client, officer, erasure_id)
    return status


async def _topics_hold(stack: FullStack, traces: tuple[str, ...]) -> dict[str, int]:
    """How many messages of each topic carry one of ``traces`` (key or value)."""
    found = {}
    for topic in ALL_TOPICS:
        records = await read_until_idle(stack.broker.bootstrap, topic, idle=1.5, check_contract=False)
        hits = [r for r in records if any(t.encode() in ((r.key or b"") + (r.value or b"")).lower() for t in traces)]
        if hits:
            found[topic] = len(hits)
    return found


async def _databases_hold(stack: FullStack, traces: tuple[str, ...]) -> list[str]:
    """Where a trace is found: every SQLite file (with its log) byte by byte, or every row of
    every table of the PostgreSQL databases, as text."""
    found = []
    for name, url in stack.urls.items():
        if url.startswith("sqlite"):
            path = Path(url.split("///", 1)[1])
            for file in path.parent.glob(path.name + "*"):
                data = file.read_bytes().lower()
                found += [f"{file.name}: {t}" for t in traces if t.encode() in data]
            continue
        db = Database(url)
        try:
            async with db.engine.connect() as connection:
                tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
                for table in tables:
                    rows = (await connection.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars().all()
                    found += [f"{name}.{table}: {t}" for row in rows for t in traces if t in row.lower()]
        finally:
            await db.dispose()
    return found


async def test_erasure_removes_a_person_everywhere_and_keeps_the_analytics(stack: FullStack):
    officer = await _api_key(stack, "privacy")
    async with httpx.AsyncClient(timeout=30) as client:
        # a bystander, so the analytics hold more than the person
        bystander = {**PERSON, "email": "ada@bystander.example", "first_name": "Ada", "last_name": "Lovelace",
                     "phone": "+1 555 0100"}
        await _person_history(stack, client, bystander, "bystander")
        opportunity_id = await _person_history(stack, client, PERSON, "person")
        r = await client.get(f"{stack.pipeline.url}/v1/opportunities/{opportunity_id}", headers=stack.auth)
        contact_id = r.json()["contact_id"]
        before = await _sources(stack, client)

        # bad inputs: no key, no scope, a malformed email, an unknown field, an unknown id
        url = f"{stack.pipeline.url}/v1/privacy/erasures"
        assert (await client.post(url, json={"email": PERSON["email"]})).status_code == 401
        no_scope = await client.post(url, json={"email": PERSON["email"]}, headers=stack.auth)
        assert no_scope.status_code == 403 and no_scope.headers["content-type"] == "application/problem+json"
        assert (await client.get(f"{url}/anything", headers=stack.auth)).status_code == 403
        bad = await client.post(url, json={"email": "not-an-address"}, headers=officer)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "email", bad.text
        assert (await client.post(url, json={"email": PERSON["email"], "x": 1}, headers=officer)).status_code == 422
        unknown = await client.get(f"{url}/0190-unknown", headers=officer)
        assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"

        erasure_id = await _erase(stack, client, officer, PERSON["email"])
        # the same person asked again (another spelling of the address) is the same erasure
        assert await _erase(stack, client, officer, "  zebulonia.quixotryx@erasure-example.COM ") == erasure_id
        status = await _completed(stack, client, officer, erasure_id)
        assert {s["store"]: s["status"] for s in status["stores"]} == dict.fromkeys(
            ("capture", "outreach", "pipeline"), "completed")
        assert all(s["records"] > 0 for s in status["stores"]), status
        assert status["completed_at"] == max(s["completed_at"] for s in status["stores"])
        # asked again once done: the same erasure, nothing erased twice
        assert await _erase(stack, client, officer, PERSON["email"]) == erasure_id

        # an address never seen completes too, with nothing found
        nobody = await _erase(stack, client, officer, "nobody@nowhere.example")
        nobody = await _completed(stack, client, officer, nobody)
        assert [s["records"] for s in nobody["stores"]] == [0, 0, 0]

        assert await _sources(stack, client) == before, "an erasure changed the analytics"
        r = await client.get(f"{stack.pipeline.url}/v1/contacts/{contact_id}", headers=stack.auth)
        assert r.status_code == 404
        r = await client.get(f"{stack.pipeline.url}/v1/opportunities/{opportunity_id}", headers=stack.auth)
        assert r.status_code == 404

        # contact.erased on pipeline.changes, keyed and identified by the contact id alone
        changes = await read_until_idle(stack.broker.bootstrap, PIPELINE_CHANGES, idle=1.5)
        erased = [r for r in changes if orjson.loads(r.value)["type"] == CONTACT_ERASED]
        assert [(r.key.decode(), orjson.loads(r.value)["data"]) for r in erased] == [
            (contact_id, {"contact_id": contact_id, "erased_at": orjson.loads(erased[0].value)["data"]["erased_at"]})]

        # suppression: a lead without a new opt-in is answered and dropped; outreach refuses
        lead = {"email": PERSON["email"], "first_name": "Zebulonia", "form_type": "newsletter"}
        r = await client.post(f"{stack.capture.url}/v1/leads", json=lead)
        assert r.status_code == 202 and r.json()["event_id"]
        r = await client.post(f"{stack.outreach.url}/v1/prospects", json={"email": PERSON["email"]},
                              headers=stack.auth)
        assert r.status_code == 409 and r.json()["type"].endswith("/suppressed"), r.text
        touch = {"email": PERSON["email"], "channel": "cold_call", "outcome": "no_answer"}
        r = await client.post(f"{stack.outreach.url}/v1/touches", json=touch, headers=stack.auth)
        assert r.status_code == 409 and r.json()["type"].endswith("/suppressed"), r.text
        r = await client.post(f"{stack.outreach.url}/v1/touches:batch", headers=stack.auth, json={
            "touches": [touch, {**touch, "email": "ada@bystander.example"}]})
        results = r.json()["results"]
        assert results[0]["status"] == "rejected" and results[0]["errors"][0]["type"] == "suppressed", results
        assert results[1]["status"] == "accepted"

        # the broker restarts (empty): the relays publish their retained rows again, none of the person
        stack.broker.stop()
        await asyncio.sleep(1)
        await stack.broker.astart()
        assert await _until(stack.outboxes_settled, 120), "the outboxes did not settle after the broker restart"
        assert await _topics_hold(stack, TRACES) == {}, "a relay published the erased person again"
        assert await _topics_hold(stack, ("ada@bystander.example",)), "the broker restart republished nothing"

        # outreach is killed during an erasure: the erasure completes once it is back
        other = {**PERSON, "email": "grace.kill@outreach-down.example", "first_name": "Gracekill",
                 "last_name": "Downtime", "phone": "+1 555 0199"}
        r = await client.post(f"{stack.outreach.url}/v1/prospects", headers=stack.auth, json={
            k: other[k] for k in ("email", "first_name", "last_name", "phone")})
        assert r.status_code == 202
        await asyncio.sleep(1)
        os.kill(stack.outreach.process.pid, signal.SIGKILL)
        stack.outreach.process.wait(10)
        killed = await _erase(stack, client, officer, other["email"])

        async def others_done() -> bool:
            stores = {s["store"]: s["status"] for s in (await _status(stack, client, officer, killed))["stores"]}
            return stores["capture"] == stores["pipeline"] == "completed"

        assert await _until(others_done, 90)
        waiting = await _status(stack, client, officer, killed)
        assert waiting["status"] == "pending" and waiting["completed_at"] is None
        assert {s["store"]: s["status"] for s in waiting["stores"]}["outreach"] == "pending"
        stack.outreach.start()
        status = await _completed(stack, client, officer, killed, timeout=150)
        assert {s["store"]: s["records"] for s in status["stores"]}["outreach"] == 1

        # a new opt-in lifts the suppression: the person is a contact again, and outreach accepts them
        returning = "lift.me@optin.example"
        r = await client.post(f"{stack.capture.url}/v1/leads", json={"email": returning, "form_type": "pricing"})
        assert r.status_code == 202
        assert await _until(lambda: _contact(stack, client, returning))
        lifted = await _erase(stack, client, officer, returning)
        await _completed(stack, client, officer, lifted)
        r = await client.post(f"{stack.capture.url}/v1/leads", json={"email": returning, "form_type": "newsletter"})
        assert r.status_code == 202
        again = {"email": returning, "form_type": "newsletter", "consent": {"marketing": True}}
        r = await client.post(f"{stack.capture.url}/v1/leads", json=again)
        assert r.status_code == 202
        assert await _until(lambda: _contact(stack, client, returning)), "the opted-in person did not come back"

        async def accepted_again() -> bool:
            r = await client.post(f"{stack.outreach.url}/v1/prospects", json={"email": returning},
                                  headers=stack.auth)
            return r.status_code == 202

        assert await _until(accepted_again), "outreach kept refusing after the opt-in"
        # and erasing them again is a new erasure
        assert await _erase(stack, client, officer, returning) != lifted

    # every database file (SQLite, after the processes closed their logs) or table (PostgreSQL)
    for proc in stack.procs:
        proc.stop()
    await stack.store.dispose()
    # the idempotency records too: the lead's Idempotency-Key, the touches' external ids, sales' keys
    idempotency = ("person-lead", "person-0", "person-1", "person-2", "person-opportunity", "person-customer")
    assert await _databases_hold(stack, TRACES + idempotency + ("gracekill", "grace.kill@", "555 0199")) == []


async def test_cli_erases_and_shows_the_status(shared_stack: FullStack):
    stack = shared_stack
    env = {**os.environ, **stack.env}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "leadstream.cli", "privacy", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True)

    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{stack.capture.url}/v1/leads", json={"email": "cli.person@example.org",
                                                                      "first_name": "Clitest"})
        assert r.status_code == 202
    assert cli("erase", "not an email").returncode != 0
    made = cli("erase", "cli.person@example.org")
    assert made.returncode == 0, made.stderr
    erasure_id = made.stdout.strip()

    async def done() -> bool:
        shown = cli("status", erasure_id)
        return shown.returncode == 0 and orjson.loads(shown.stdout)["status"] == "completed"

    assert await _until(done, 120)
    assert cli("status", "no-such-erasure").returncode == 1
    async with stack.store.reader() as session:
        from pipeline_store.models import ErasureAudit, ErasureRequest

        audit = (await session.execute(select(ErasureAudit.actor, ErasureAudit.outcome, ErasureAudit.stores)
                                       .where(ErasureAudit.erasure_id == erasure_id)
                                       .order_by(ErasureAudit.id))).all()
        request = (await session.execute(select(ErasureRequest).where(ErasureRequest.id == erasure_id))).scalar_one()
    assert [(actor.split()[0], outcome, stores) for actor, outcome, stores in audit] == [
        ("cli", "requested", "capture,outreach,pipeline"), ("cli", "completed", "capture,outreach,pipeline")]
    assert "example.org" not in request.subject and len(request.subject) == 64


async def test_erasing_100_demo_people_changes_no_analytics_figure(shared_stack: FullStack):
    stack = shared_stack
    from leadstream.demo import seed

    officer = await _api_key(stack, "privacy")
    await seed(capture_url=stack.capture.url, outreach_url=stack.outreach.url, pipeline_url=stack.pipeline.url,
               api_key=stack.api_key, contacts=300, settle_timeout=180)
    async with httpx.AsyncClient(timeout=60) as client:
        contacts, cursor = [], None
        while len(contacts) < 100:
            r = await client.get(f"{stack.pipeline.url}/v1/contacts", headers=stack.auth,
                                 params={"limit": 100, **({"cursor": cursor} if cursor else {})})
            page = r.json()
            contacts += [c for c in page["items"] if "@" in (c["email"] or "")]  # not one erased before
            cursor = page["next_cursor"]
            assert cursor or len(contacts) >= 100
        contacts = contacts[:100]
        emails = [c["email"] for c in contacts]
        # the whole range, and date-time bounds (their partial days are read from contacts and
        # credits, not rollups: tests/integration/test_erasure_store.py checks that path closely)
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        ranges = [{}, {"from": (now - timedelta(days=47, hours=5, minutes=30)).isoformat(),
                       "to": (now - timedelta(days=9, hours=13, minutes=15)).isoformat()}]
        queries = [("sources", {"group_by": g, "attribution": a, **r})
                   for g in ("channel", "campaign", "motion", "form", "sequence") for a in MODELS for r in ranges]
        queries += [("balance", {"from": (now - timedelta(days=120)).date().isoformat(),
                                 "to": now.date().isoformat()})]

        async def answers() -> list[dict]:
            out = []
            for path, params in queries:
                r = await client.get(f"{stack.pipeline.url}/v1/analytics/{path}", params=params, headers=stack.auth)
                assert r.status_code == 200, r.text
                out.append(r.json())
            return out

        before = await answers()
        ids = [await _erase(stack, client, officer, email) for email in emails]
        for erasure_id in ids:
            await _completed(stack, client, officer, erasure_id, timeout=180)
        after = await answers()
        changed = [query for query, a, b in zip(queries, before, after) if a != b]
        assert changed == [], "erasing 100 people changed an analytics figure"
        assert before[0]["totals"]["qualified_opportunities"] > 0 and before[0]["totals"]["won_amount"]
        assert before[1]["totals"]["contacts"] > 0, "the date-time range holds no contact"
        for email in emails[:5]:
            assert await _contact(stack, client, email) is None


async def _committed(bootstrap: str, group: str, tp) -> int:  # noqa: ANN001
    """The offset ``group`` committed on ``tp`` (-1 for none)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(tp)
        return -1 if committed is None else committed
    finally:
        await consumer.stop()


async def test_a_request_delivered_twice_erases_once_and_reports_once(shared_stack: FullStack):
    """The erasure request and a store's report are both delivered again (written to
    ``privacy.requests`` a second time, as a redelivery after a lost commit would): once every
    group has read past them, no store has reported again and the erasure is as it was."""
    from aiokafka import AIOKafkaProducer, TopicPartition

    from pipeline_store.models import ErasureAudit
    from shared.events import ERASURE_COMPLETED, ERASURE_REQUESTED, PRIVACY_REQUESTS

    stack = shared_stack
    officer = await _api_key(stack, "privacy")
    email = "twice.delivered@example.org"
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{stack.capture.url}/v1/leads", json={"email": email, "first_name": "Twicetest",
                                                                      "form_type": "pricing"})
        assert r.status_code == 202
        assert await _until(lambda: _contact(stack, client, email)), "the lead never reached the store"
        erasure_id = await _erase(stack, client, officer, email)
        done = await _completed(stack, client, officer, erasure_id)
        assert [s["records"] > 0 for s in done["stores"]] == [True, False, True]  # capture, outreach, pipeline

        def of_this_erasure(records) -> list:  # noqa: ANN001
            out = []
            for record in records:
                event = orjson.loads(record.value)
                if event["id"] == erasure_id or event["data"].get("erasure_id") == erasure_id:
                    out.append((record, event))
            return out

        first = of_this_erasure(await read_until_idle(stack.broker.bootstrap, PRIVACY_REQUESTS, idle=1.5))
        assert sorted(e["type"] for _, e in first) == [ERASURE_COMPLETED] * 3 + [ERASURE_REQUESTED]
        (request,) = [r for r, e in first if e["type"] == ERASURE_REQUESTED]
        (report,) = [r for r, e in first if e["type"] == ERASURE_COMPLETED and e["data"]["store"] == "capture"]
        # keyed by the keyed hash of the normalised email, which no message names
        subject = request.key.decode()
        assert len(subject) == 64 and all(r.key.decode() == subject for r, _ in first)
        assert not any(b"twice" in (r.value or b"").lower() for r, _ in first)

        producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap, acks="all")
        await producer.start()
        try:
            again = [await producer.send_and_wait(PRIVACY_REQUESTS, r.value, key=r.key, headers=list(r.headers),
                                                  partition=r.partition) for r in (request, report)]
        finally:
            await producer.stop()

        # every store's group and the coordinator's read past both copies
        groups = [f"leadstream-privacy-{name}" for name in ("capture", "outreach", "pipeline", "coordinator")]

        async def read_past() -> bool:
            for meta in again:
                tp = TopicPartition(PRIVACY_REQUESTS, meta.partition)
                for group in groups:
                    if await _committed(stack.broker.bootstrap, group, tp) <= meta.offset:
                        return False
            return True

        assert await _until(read_past, 120), "a group never read the second delivery"
        second = of_this_erasure(await read_until_idle(stack.broker.bootstrap, PRIVACY_REQUESTS, idle=1.5))
        reports = sorted(e["data"]["store"] for _, e in second if e["type"] == ERASURE_COMPLETED)
        # the capture report written twice above; no store reported again
        assert reports == ["capture", "capture", "outreach", "pipeline"], reports
        assert await _status(stack, client, officer, erasure_id) == done
    # audited: who (the key, never the email), the stores, the outcome; the redelivery added nothing
    async with stack.store.reader() as session:
        audit = (await session.execute(select(ErasureAudit).where(ErasureAudit.erasure_id == erasure_id)
                                       .order_by(ErasureAudit.id))).scalars().all()
    assert [(a.outcome, a.stores) for a in audit] == [("requested", "capture,outreach,pipeline"),
                                                      ("completed", "capture,outreach,pipeline")]
    assert all(a.actor.startswith("key ") and a.actor.endswith("(privacy-officer)") for a in audit)
    assert not any("twice" in f"{a.actor} {a.erasure_id} {a.stores}".lower() for a in audit)


async def test_erased_back_and_qualified_again_is_a_new_qualification_and_a_new_erasure(shared_stack: FullStack):
    """A person qualifies, is erased, opts in again (the same email: the same contact id) and
    qualifies again: a second ``opportunity.qualified`` is delivered with an id of its own
    (consumers deduplicate by id, and qualification's outbox keeps the first id). Erased again,
    the second erasure completes too, with a second ``contact.erased`` of its own id."""
    from shared.events import OPPORTUNITIES_QUALIFIED
    from shared.identity import normalise_email

    stack = shared_stack
    officer = await _api_key(stack, "privacy")
    person = {**PERSON, "email": "twice.qualified@again-example.com", "first_name": "Twiceq",
              "last_name": "Againer", "phone": "+44 20 7946 0555"}
    email = normalise_email(person["email"])
    async with httpx.AsyncClient(timeout=30) as client:
        await _person_history(stack, client, person, "twice-first")
        contact_id = await _contact(stack, client, email)
        first = await _erase(stack, client, officer, email)
        await _completed(stack, client, officer, first)
        assert await _contact(stack, client, email) is None

        # a new opt-in lifts the suppression everywhere; the same touches as the first time qualify again
        lead = {"email": person["email"], "form_type": "demo_request", "consent": {"marketing": True}}
        r = await client.post(f"{stack.capture.url}/v1/leads", json=lead)
        assert r.status_code == 202

        async def prospect_accepted() -> bool:
            r = await client.post(f"{stack.outreach.url}/v1/prospects", headers=stack.auth, json={
                k: person[k] for k in ("email", "company", "title", "employees")})
            return r.status_code == 202

        assert await _until(prospect_accepted), "outreach kept refusing after the opt-in"
        touches = [{"email": person["email"], "channel": "cold_email", "outcome": outcome, "sequence": "again",
                    "step": i + 1, "external_id": f"twice-second-{i}"}
                   for i, outcome in enumerate(["sent", "opened", "meeting_booked"])]
        r = await client.post(f"{stack.outreach.url}/v1/touches:batch", json={"touches": touches},
                              headers=stack.auth)
        assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 3, r.text

        async def qualified_twice() -> list[str]:
            records = await read_until_idle(stack.broker.bootstrap, OPPORTUNITIES_QUALIFIED, idle=1.0)
            ids = [orjson.loads(r.value)["id"] for r in records if r.key.decode() == email]
            return ids if len(set(ids)) >= 2 else []

        qualified = await _until(qualified_twice, 120)
        assert len(set(qualified)) == 2, "the second qualification was not delivered as an event of its own"
        assert await _contact(stack, client, email) == contact_id  # the id its email derives, again

        second = await _erase(stack, client, officer, email)
        assert second != first
        status = await _completed(stack, client, officer, second)
        assert {s["store"]: s["records"] > 0 for s in status["stores"]} == dict.fromkeys(
            ("capture", "outreach", "pipeline"), True), status

        changes = await read_until_idle(stack.broker.bootstrap, PIPELINE_CHANGES, idle=1.5)
        erased = [orjson.loads(r.value) for r in changes
                  if orjson.loads(r.value)["type"] == CONTACT_ERASED and r.key.decode() == contact_id]
        assert len({e["id"] for e in erased}) == 2 and all(e["data"]["contact_id"] == contact_id for e in erased)
