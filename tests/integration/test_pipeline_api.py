"""The pipeline API over HTTP (in-process app, real broker, real store built by Alembic).

The store is seeded directly (as qualification would write it): the pipeline service only
reads it, except for sales transitions.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from pipeline_store.models import (
    Account,
    Contact,
    Opportunity,
    PipelineApiKey,
    PipelineOutbox,
    Score,
    StageChange,
    Touch,
    TransitionRequest,
)
from pipeline_store import source_rollups
from services.pipeline.app import create_app
from shared.api_keys import hash_key, new_key
from shared.events import PIPELINE_CHANGES, STAGE_CHANGED
from tests.support import eventually, make_settings, read_topic, serve_app

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=timezone.utc)


def day(n: float) -> timedelta:
    return timedelta(days=n)


# ---- seeding the store as qualification writes it --------------------------------------


class Store:
    """Writes store rows the way qualification does, with sensible defaults."""

    def __init__(self, db) -> None:  # noqa: ANN001
        self.db = db
        self.n = 0

    async def add(self, *rows) -> None:  # noqa: ANN002
        async with self.db.unit_of_work() as session:
            session.add_all(rows)
        async with self.db.unit_of_work() as session:  # and its rollups, as qualification keeps them
            await source_rollups.rebuild(session)

    def account(self, domain: str, **kw) -> Account:  # noqa: ANN003
        return Account(domain=domain, created_at=T0, updated_at=T0, firmographics=kw.pop("firmographics", {}), **kw)

    def contact(self, *, email: str | None = None, motion: str = "inbound", stage: str = "lead",
                channel: str | None = "paid_search", campaign: str | None = None, form: str | None = None,
                sequence: str | None = None, first_at: datetime = T0, **kw) -> Contact:  # noqa: ANN003
        self.n += 1
        email = email or f"person{self.n}@example-{self.n}.com"
        touch_motion = "outbound" if motion == "outbound" else "inbound"
        values = dict(
            id=str(uuid.uuid4()), email=email, email_as_typed=email, stage=stage, motion=motion,
            first_touch_motion=touch_motion, first_touch_channel=channel, first_touch_campaign=campaign,
            first_touch_form_id=form, first_touch_sequence=sequence, first_touch_at=first_at,
            first_touch_event_id=str(uuid.uuid4()),
            last_touch_motion=touch_motion, last_touch_channel=channel, last_touch_campaign=campaign,
            last_touch_form_id=form, last_touch_sequence=sequence, last_touch_at=first_at,
            fit_score=50.0, fit_grade="C", fit_reasons=[], engagement_score=10.0, engagement_reasons=[],
            policy_version="2025-01", firmographics={}, created_at=first_at, updated_at=first_at,
        )
        values.update(kw)
        return Contact(**values)

    def opportunity(self, contact: Contact, *, stage: str = "sql", amount: float | None = None,
                    qualified_at: datetime | None = None, **kw) -> Opportunity:  # noqa: ANN003
        at = qualified_at or contact.sql_at or T0
        values = dict(
            id=str(uuid.uuid4()), contact_id=contact.id, account_domain=contact.account_domain, stage=stage,
            motion=contact.motion, owner=contact.owner,
            first_touch_motion=contact.first_touch_motion, first_touch_channel=contact.first_touch_channel,
            first_touch_campaign=contact.first_touch_campaign, first_touch_form_id=contact.first_touch_form_id,
            first_touch_sequence=contact.first_touch_sequence, last_touch_motion=contact.last_touch_motion,
            last_touch_channel=contact.last_touch_channel, last_touch_campaign=contact.last_touch_campaign,
            fit_score=contact.fit_score, engagement_score=contact.engagement_score, grade=contact.fit_grade,
            policy_version="2025-01", amount=None if amount is None else Decimal(str(amount)),
            qualified_event_id=str(uuid.uuid4()), caused_by=[], qualified_at=at, updated_at=at,
        )
        values.update(kw)
        return Opportunity(**values)


async def add_key(db, name: str, scopes: str) -> str:  # noqa: ANN001
    key = new_key()
    async with db.unit_of_work() as session:
        session.add(PipelineApiKey(id=str(uuid.uuid4()), name=name, scopes=scopes, key_hash=hash_key(key),
                                   prefix=key[:8], created_at=datetime.now(timezone.utc)))
    return key


@asynccontextmanager
async def pipeline_client(broker, database_factory, data_dir):  # noqa: ANN001, ANN201
    """The pipeline app on a new store, with alice@sales's ``pipeline`` key on its client."""
    url = await database_factory("pipeline")
    settings = make_settings(broker.bootstrap, data_dir, service="pipeline", pipeline_database_url=url)
    app = create_app(settings)
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        client.store = Store(app.state.runtime.db)
        client.headers["Authorization"] = "Bearer " + await add_key(client.runtime.db, "alice@sales", "pipeline")
        yield client


@pytest.fixture
async def pipeline(broker, database_factory, tmp_path):
    async with pipeline_client(broker, database_factory, tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
async def shared_pipeline(broker, module_database_factory, tmp_path_factory):
    """One pipeline app per module and backend, for tests whose requests are refused (or touch
    only rows they add themselves): what they assert holds whatever the others did before."""
    async with pipeline_client(broker, module_database_factory, tmp_path_factory.mktemp("pipeline")) as client:
        yield client


async def count(client, model, *where) -> int:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


def ids(response) -> set[str]:  # noqa: ANN001
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


# ---- auth --------------------------------------------------------------------------------


async def test_auth_none_bad_wrong_scope_and_revoked(pipeline):
    runtime = pipeline.runtime
    outreach_only = await add_key(runtime.db, "outreach-bot", "outreach")
    revoked = await add_key(runtime.db, "old", "pipeline")
    async with runtime.db.unit_of_work() as s:
        row = (await s.execute(select(PipelineApiKey).where(PipelineApiKey.key_hash == hash_key(revoked)))).scalar_one()
        row.revoked_at = datetime.now(timezone.utc)
    paths = ["/v1/contacts", "/v1/opportunities", "/v1/analytics/sources", "/v1/accounts/acme.com",
             "/v1/contacts/x", "/v1/opportunities/x"]
    for path in paths:
        none = await pipeline.get(path, headers={"Authorization": ""})
        assert none.status_code == 401, path
        assert none.headers["content-type"] == "application/problem+json"
        assert none.headers["www-authenticate"].startswith("Bearer")
        assert (await pipeline.get(path, headers={"Authorization": "Bearer ls_nope"})).status_code == 401
        assert (await pipeline.get(path, headers={"Authorization": f"Basic {outreach_only}"})).status_code == 401
        assert (await pipeline.get(path, headers={"Authorization": f"Bearer {revoked}"})).status_code == 401
        wrong = await pipeline.get(path, headers={"Authorization": f"Bearer {outreach_only}"})
        assert wrong.status_code == 403, path
        assert wrong.json()["required_scope"] == "pipeline"
    post = await pipeline.post("/v1/opportunities/x/transitions", json={"to": "opportunity"},
                               headers={"Authorization": f"Bearer {outreach_only}"})
    assert post.status_code == 403
    assert (await pipeline.get("/healthz", headers={"Authorization": ""})).status_code == 200
    ready = await pipeline.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_rate_limit_per_key(broker, database_factory, tmp_path):
    url = await database_factory("pipeline")
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="pipeline", pipeline_database_url=url,
                                   api_rate_limit="3/minute"))
    async with serve_app(app) as client:
        key = await add_key(app.state.runtime.db, "busy", "pipeline")
        answers = [await client.get("/v1/contacts", headers={"Authorization": f"Bearer {key}"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert answers[-1].headers["content-type"] == "application/problem+json"


# ---- contacts ------------------------------------------------------------------------------


async def test_contact_filters(pipeline):
    s = pipeline.store
    acme = s.account("acme.com", company="Acme")
    ada = s.contact(email="ada@gmail.com", stage="sql", channel="paid_search", campaign="brand", owner="bob",
                    sql_at=T0 + day(3), first_at=T0)
    bea = s.contact(email="bea@acme.com", stage="mql", motion="outbound", channel="cold_email",
                    account_domain="acme.com", first_at=T0 + day(10), owner="carol", sequence="seq-a")
    cal = s.contact(email="cal@acme.com", stage="opportunity", motion="blended", channel="webinar",
                    account_domain="acme.com", first_at=T0 + day(20), sql_at=T0 + day(25))
    dan = s.contact(email="dan@other.org", stage="lead", channel="organic_search", first_at=T0 + day(30),
                    last_touch_channel="email")
    await s.add(acme)
    await s.add(ada, bea, cal, dan)

    async def q(**params) -> set[str]:  # noqa: ANN003
        return ids(await pipeline.get("/v1/contacts", params=params))

    assert await q() == {ada.id, bea.id, cal.id, dan.id}
    assert await q(email="  Ada@GoogleMail.com ") == {ada.id}
    assert await q(email="nobody@x.com") == set()
    for text in ("no-at-sign", "ada@", "@gmail.com"):  # text that is no identity matches no one
        assert await q(email=text) == set(), text
    assert await q(stage="sql") == {ada.id}
    assert await q(stage="sql,opportunity") == {ada.id, cal.id}
    assert ids(await pipeline.get("/v1/contacts?stage=sql&stage=mql")) == {ada.id, bea.id}
    assert await q(motion="outbound") == {bea.id}
    assert await q(motion="blended,inbound") == {ada.id, cal.id, dan.id}
    assert await q(channel="cold_email") == {bea.id}
    assert await q(channel="email") == set()
    assert await q(channel="email", attribution="last") == {dan.id}
    assert await q(campaign="brand") == {ada.id}
    assert await q(account="ACME.com") == {bea.id, cal.id}
    assert await q(owner="carol") == {bea.id}
    assert await q(created_from="2025-01-20") == {bea.id, cal.id, dan.id}
    assert await q(created_to="2025-01-20") == {ada.id, bea.id}  # a date includes its whole day
    assert await q(created_from="2025-01-20T09:00:01Z") == {cal.id, dan.id}
    assert await q(created_from="2025-01-15", created_to="2025-01-30T09:00:00+00:00") == {bea.id, cal.id}
    assert await q(created_from="2025-01-20T05:00:00Z", created_to="2025-01-20") == {bea.id}  # to that day's end
    assert await q(created_from="2025-01-15", created_to="2025-01-30T08:59:59+00:00") == {bea.id}
    assert await q(qualified_from="2025-01-12") == {ada.id, cal.id}
    assert await q(qualified_from="2025-01-14", qualified_to="2025-02-28") == {cal.id}
    assert await q(qualified_to="2025-01-13") == {ada.id}
    assert await q(stage="mql", account="acme.com", motion="outbound", owner="carol") == {bea.id}

    page = (await pipeline.get("/v1/contacts")).json()
    assert [i["id"] for i in page["items"]] == [dan.id, cal.id, bea.id, ada.id]  # newest first
    assert page["next_cursor"] is None
    bea_row = next(i for i in page["items"] if i["id"] == bea.id)
    assert bea_row["company"] == "Acme"
    assert bea_row["first_touch"]["channel"] == "cold_email"
    assert bea_row["first_touch"]["sequence"] == "seq-a"
    assert bea_row["created_at"] == "2025-01-20T09:00:00Z"


async def test_contact_detail_has_scores_history_timeline_and_opportunities(pipeline):
    s = pipeline.store
    acme = s.account("acme.com", company="Acme", industry="software", employees=250, country="GB",
                     firmographics={"employees": {"value": 250, "source": "lead_form", "at": "2025-01-10T09:00:00Z"}})
    ada = s.contact(
        email="ada@acme.com", email_as_typed="Ada@Acme.com", stage="sql", motion="blended", account_domain="acme.com",
        channel="paid_search", campaign="brand", form="demo", sql_at=T0 + day(2), mql_at=T0 + day(1), lead_at=T0,
        fit_score=80, fit_grade="A", fit_reasons=[{"rule": "industry", "points": 20}],
        engagement_score=70, engagement_reasons=[{"rule": "demo_request", "points": 60}], policy_version="2025-02",
        firmographics={"title": {"value": "CTO", "source": "prospect", "at": "2025-01-09T00:00:00Z"}},
        last_touch_motion="outbound", last_touch_channel="cold_email", last_touch_sequence="seq-a",
        last_touch_at=T0 + day(2),
    )
    await s.add(acme)
    await s.add(ada)
    touches = [
        Touch(event_id=f"t{i}", contact_id=ada.id, event_type=etype, motion=motion, channel=channel,
              occurred_at=T0 + day(offset), recorded_at=T0 + day(5), data={"n": i}, outcome=outcome)
        for i, (etype, motion, channel, offset, outcome) in enumerate([
            ("io.leadstream.touch.recorded.v1", "outbound", "cold_email", 2, "meeting_booked"),
            ("io.leadstream.lead.captured.v1", "inbound", "paid_search", 0, None),
            ("io.leadstream.prospect.added.v1", "outbound", None, -1, None),
        ])
    ]
    opp = s.opportunity(ada, stage="sql")
    changes = [
        StageChange(contact_id=ada.id, from_stage=None, to_stage="lead", changed_by="qualification",
                    policy_version="2025-02", event_id="sc1", changed_at=T0),
        StageChange(contact_id=ada.id, opportunity_id=opp.id, from_stage="lead", to_stage="sql",
                    changed_by="qualification", policy_version="2025-02", event_id="sc2", changed_at=T0 + day(2)),
    ]
    scores = [Score(contact_id=ada.id, fit_score=80, fit_grade="A", fit_reasons=[], engagement_score=e,
                    engagement_reasons=[], policy_version="2025-02", scored_at=T0 + day(d))
              for d, e in ((0, 40), (2, 70))]
    await s.add(*touches, opp, *changes, *scores)

    response = await pipeline.get(f"/v1/contacts/{ada.id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stage"] == "sql" and body["motion"] == "blended" and body["policy_version"] == "2025-02"
    assert body["email_as_typed"] == "Ada@Acme.com"
    assert body["fit"] == {"score": 80.0, "grade": "A", "reasons": [{"rule": "industry", "points": 20}]}
    assert body["engagement"]["reasons"] == [{"rule": "demo_request", "points": 60}]
    assert body["first_touch"]["channel"] == "paid_search" and body["first_touch"]["form_id"] == "demo"
    assert body["last_touch"]["channel"] == "cold_email" and body["last_touch"]["motion"] == "outbound"
    assert [t["event_id"] for t in body["timeline"]] == ["t2", "t1", "t0"]  # in time order
    assert [c["to_stage"] for c in body["stage_history"]] == ["lead", "sql"]
    assert [sc["engagement"]["score"] for sc in body["score_history"]] == [40.0, 70.0]
    assert body["firmographics"]["title"]["source"] == "prospect"
    assert body["account"]["company"] == "Acme" and body["account"]["employees"] == 250
    assert [o["id"] for o in body["opportunities"]] == [opp.id]
    assert body["milestones"]["sql_at"].startswith("2025-01-12T09:00:00")
    assert body["qualified_at"].startswith("2025-01-12T09:00:00")

    missing = await pipeline.get(f"/v1/contacts/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_account_has_firmographics_contacts_opportunities_and_motion_mix(pipeline):
    s = pipeline.store
    acme = s.account("acme.com", company="Acme", industry="software", employees=250,
                     firmographics={"industry": {"value": "software", "source": "prospect", "at": "2025-01-01"}})
    people = [s.contact(email=f"p{i}@acme.com", motion=m, account_domain="acme.com", first_at=T0 + day(i), stage="sql",
                        sql_at=T0 + day(i)) for i, m in enumerate(["inbound", "inbound", "outbound", "blended"])]
    other = s.contact(email="x@other.com", account_domain=None)
    await s.add(acme)
    await s.add(*people, other)
    await s.add(s.opportunity(people[0]), s.opportunity(people[2]), s.opportunity(people[3]))
    response = await pipeline.get("/v1/accounts/ACME.com")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["company"] == "Acme" and body["firmographics"]["industry"]["source"] == "prospect"
    assert [c["email"] for c in body["contacts"]] == [f"p{i}@acme.com" for i in range(4)]
    assert len(body["opportunities"]) == 3
    assert body["motion_mix"] == {"contacts": {"inbound": 2, "outbound": 1, "blended": 1},
                                  "opportunities": {"inbound": 1, "outbound": 1, "blended": 1}}
    assert (await pipeline.get("/v1/accounts/nowhere.example")).status_code == 404


# ---- opportunities ---------------------------------------------------------------------------


async def test_opportunity_filters(pipeline):
    s = pipeline.store
    await s.add(s.account("acme.com"))
    a = s.contact(channel="paid_search", campaign="brand", form="demo", owner="bob", account_domain="acme.com",
                  last_touch_channel="email", last_touch_campaign="nurture-1")
    b = s.contact(motion="outbound", channel="cold_email", sequence="seq-a", owner="carol")
    c = s.contact(motion="blended", channel="webinar", campaign="spring", fit_grade="A")
    await s.add(a, b, c)
    oa = s.opportunity(a, stage="opportunity", qualified_at=T0 + day(1))
    ob = s.opportunity(b, stage="customer", amount=500, qualified_at=T0 + day(5), closed_at=T0 + day(40))
    oc = s.opportunity(c, stage="sql", qualified_at=T0 + day(9))
    await s.add(oa, ob, oc)

    async def q(**params) -> set[str]:  # noqa: ANN003
        return ids(await pipeline.get("/v1/opportunities", params=params))

    assert await q() == {oa.id, ob.id, oc.id}
    assert await q(stage="customer") == {ob.id}
    assert await q(stage="sql,opportunity") == {oa.id, oc.id}
    assert await q(motion="outbound") == {ob.id}
    assert await q(motion="blended") == {oc.id}
    assert await q(channel="paid_search") == {oa.id}
    assert await q(channel="email") == set()
    assert await q(channel="email", attribution="last") == {oa.id}
    assert await q(channel="webinar,cold_email") == {ob.id, oc.id}
    assert await q(campaign="brand") == {oa.id}
    assert await q(campaign="nurture-1", attribution="last") == {oa.id}
    assert await q(form="demo") == {oa.id}
    assert await q(sequence="seq-a") == {ob.id}
    assert await q(owner="carol") == {ob.id}
    assert await q(account="acme.com") == {oa.id}
    assert await q(grade="a") == {oc.id}
    assert await q(qualified_from="2025-01-15") == {ob.id, oc.id}
    assert await q(qualified_to="2025-01-15") == {oa.id, ob.id}
    assert await q(qualified_from="2025-01-12", qualified_to="2025-01-16") == {ob.id}
    assert await q(closed_from="2025-02-01") == {ob.id}
    assert await q(closed_to="2025-01-31") == set()
    page = (await pipeline.get("/v1/opportunities")).json()
    assert [i["id"] for i in page["items"]] == [oc.id, ob.id, oa.id]
    assert page["items"][1]["amount"] == 500.0 and page["items"][1]["email"] == b.email
    oldest_first = (await pipeline.get("/v1/opportunities", params={"order": "asc"})).json()
    assert [i["id"] for i in oldest_first["items"]] == [oa.id, ob.id, oc.id]
    one = await pipeline.get(f"/v1/opportunities/{ob.id}")
    assert one.status_code == 200 and one.json()["first_touch"]["sequence"] == "seq-a"
    assert (await pipeline.get(f"/v1/opportunities/{uuid.uuid4()}")).status_code == 404


async def _walk(client, path: str, params: dict, between_pages=None) -> list[str]:  # noqa: ANN001
    seen, cursor, pages = [], None, 0
    while True:
        response = await client.get(path, params=params | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= params["limit"]
        seen += [i["id"] for i in body["items"]]
        cursor, pages = body["next_cursor"], pages + 1
        if between_pages:
            await between_pages()
        if cursor is None:
            return seen
        assert pages < 200


def one_more_row(wrote: asyncio.Event):  # noqa: ANN201
    """Between two pages, wait for the concurrent writer's next row: however slow the machine,
    rows land between every page."""
    async def wait() -> None:
        wrote.clear()
        await wrote.wait()
    return wait


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_opportunity_pages_are_stable_under_concurrent_inserts(pipeline, order):
    s = pipeline.store
    contacts = [s.contact() for _ in range(60)]
    await s.add(*contacts)
    # ties on qualified_at on purpose: the id breaks them
    originals = [s.opportunity(c, qualified_at=T0 + timedelta(minutes=(i // 3) * 7)) for i, c in enumerate(contacts)]
    await s.add(*originals)
    stop, wrote = asyncio.Event(), asyncio.Event()
    inserted: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            c = s.contact()
            # new rows land everywhere: before, inside and after the walked range
            o = s.opportunity(c, qualified_at=T0 + timedelta(minutes=(i * 37) % 500 - 50))
            await s.add(c)
            await s.add(o)
            inserted.append(o.id)
            wrote.set()
            i += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    try:
        seen = await _walk(pipeline, "/v1/opportunities", {"limit": 7, "order": order}, one_more_row(wrote))
    finally:
        stop.set()
        await task
    assert len(inserted) > 5
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert {o.id for o in originals} <= set(seen), "a row was skipped"
    assert set(seen) <= {o.id for o in originals} | set(inserted)


async def test_contact_pages_are_stable_under_concurrent_inserts(pipeline):
    s = pipeline.store
    originals = [s.contact(first_at=T0 + timedelta(hours=i // 4)) for i in range(45)]
    await s.add(*originals)
    stop, wrote = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await s.add(s.contact(first_at=T0 + timedelta(hours=(i * 5) % 15 - 2)))
            wrote.set()
            i += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    try:
        seen = await _walk(pipeline, "/v1/contacts", {"limit": 4}, one_more_row(wrote))
    finally:
        stop.set()
        await task
    assert len(seen) == len(set(seen))
    assert {c.id for c in originals} <= set(seen)
    # filters hold across pages too
    filtered = await _walk(pipeline, "/v1/contacts", {"limit": 3, "created_to": "2025-01-10T12:00:00Z"})
    assert set(filtered) >= {c.id for c in originals if c.created_at <= T0 + timedelta(hours=3)}


BAD_QUERIES = [
    ("/v1/contacts", {"limit": "0"}, "limit"),
    ("/v1/contacts", {"limit": "201"}, "limit"),
    ("/v1/contacts", {"limit": "ten"}, "limit"),
    ("/v1/contacts", {"stage": "sql,won"}, "stage"),
    ("/v1/contacts", {"motion": "sideways"}, "motion"),
    ("/v1/contacts", {"channel": "carrier_pigeon"}, "channel"),
    ("/v1/contacts", {"created_from": "yesterday"}, "created_from"),
    ("/v1/contacts", {"qualified_to": "2025-13-01"}, "qualified_to"),
    ("/v1/contacts", {"created_from": "2025-02-01", "created_to": "2025-01-01"}, "created_to"),
    ("/v1/contacts", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/contacts", {"stge": "sql"}, "stge"),
    ("/v1/contacts", {"attribution": "middle"}, "attribution"),
    ("/v1/contacts", {"email": ""}, "email"),
    ("/v1/opportunities", {"limit": "500"}, "limit"),
    ("/v1/opportunities", {"order": "sideways"}, "order"),
    ("/v1/opportunities", {"grade": "Z"}, "grade"),
    ("/v1/opportunities", {"stage": "won"}, "stage"),
    ("/v1/opportunities", {"qualified_from": "2025-01-01T25:00"}, "qualified_from"),
    ("/v1/opportunities", {"closed_from": "2025-02-01", "closed_to": "2025-01-31"}, "closed_to"),
    ("/v1/opportunities", {"cursor": "eyJ4IjoxfQ"}, "cursor"),
    ("/v1/analytics/sources", {"group_by": "colour"}, "group_by"),
    ("/v1/analytics/sources", {"from": "last week"}, "from"),
    ("/v1/analytics/sources", {"from": "2025-03-01", "to": "2025-02-01"}, "to"),
    ("/v1/analytics/sources", {"motion": "both"}, "motion"),
    ("/v1/analytics/sources", {"groupby": "channel"}, "groupby"),
    ("/v1/analytics/balance", {"from": "last week"}, "from"),
    ("/v1/analytics/balance", {"to": "2025-02-30"}, "to"),
    ("/v1/analytics/balance", {"from": "2025-03-01", "to": "2025-02-01"}, "to"),
    ("/v1/analytics/balance", {"from": "2025-03-01T10:00:00Z", "to": "2025-03-01T09:00:00Z"}, "to"),
    # a date as the end covers its day: a start at or after that day's end is still backwards
    ("/v1/analytics/sources", {"from": "2025-03-02T00:00:00Z", "to": "2025-03-01"}, "to"),
    ("/v1/analytics/balance", {"from": "2025-03-01T19:30:00-05:00", "to": "2025-03-01"}, "to"),
    ("/v1/opportunities", {"qualified_from": "2025-03-02T00:00:00Z", "qualified_to": "2025-03-01"}, "qualified_to"),
    ("/v1/analytics/balance", {"to": "9999-12-31"}, "to"),
    ("/v1/analytics/balance", {"group_by": "channel"}, "group_by"),
    # a parameter that takes one value, given twice, is not answered under one of them
    ("/v1/analytics/sources", [("attribution", "first"), ("attribution", "last")], "attribution"),
    ("/v1/contacts", [("limit", "10"), ("limit", "20")], "limit"),
    ("/v1/analytics/balance", [("from", "2025-01-01"), ("from", "2025-02-01")], "from"),
    # the one-item answers take no parameter: a typo is refused, as on the lists
    ("/v1/contacts/c-1", {"expand": "timeline"}, "expand"),
    ("/v1/accounts/acme.com", {"include": "contacts"}, "include"),
    ("/v1/opportunities/o-1", {"fields": "amount"}, "fields"),
    ("/v1/opportunities/o-1/attribution", {"model": "linear"}, "model"),
]


@pytest.mark.parametrize("path,params,field", BAD_QUERIES)
async def test_bad_query_parameters_are_422_naming_the_parameter(shared_pipeline, path, params, field):
    response = await shared_pipeline.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [(e["field"], e["in"]) for e in errors] == [(field, "query")]


async def test_a_list_filter_takes_repeated_values(shared_pipeline):
    """What takes several values (stages, motions, channels, grades) may repeat."""
    for path, params in (("/v1/contacts", [("stage", "sql"), ("stage", "lead"), ("motion", "inbound")]),
                         ("/v1/opportunities", [("stage", "sql"), ("stage", "opportunity")]),
                         ("/v1/analytics/sources", [("motion", "inbound"), ("motion", "outbound")])):
        response = await shared_pipeline.get(path, params=params)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("path,params", [
    ("/v1/analytics/sources", {"from": "2025-03-01T10:00:00Z", "to": "2025-03-01"}),
    ("/v1/analytics/sources", {"from": "2025-03-01T23:30:00-05:00", "to": "2025-03-02"}),
    ("/v1/analytics/balance", {"from": "2025-03-01T23:59:59Z", "to": "2025-03-01"}),
    ("/v1/contacts", {"created_from": "2025-03-01T10:00:00Z", "created_to": "2025-03-01"}),
    ("/v1/opportunities", {"closed_from": "2025-03-01T10:00:00+01:00", "closed_to": "2025-03-01"}),
])
async def test_a_range_from_a_time_to_a_date_is_that_time_to_the_end_of_the_day(shared_pipeline, path, params):
    """A date as a range's end includes its whole day, so it may be the start's own day."""
    response = await shared_pipeline.get(path, params=params)
    assert response.status_code == 200, response.text


async def test_cursor_of_another_list_or_order_is_rejected(pipeline):
    s = pipeline.store
    cs = [s.contact() for _ in range(3)]
    await s.add(*cs)
    await s.add(*(s.opportunity(c) for c in cs))
    contacts_cursor = (await pipeline.get("/v1/contacts", params={"limit": 1})).json()["next_cursor"]
    desc_cursor = (await pipeline.get("/v1/opportunities", params={"limit": 1})).json()["next_cursor"]
    assert contacts_cursor and desc_cursor
    for params in ({"cursor": contacts_cursor}, {"cursor": desc_cursor, "order": "asc"},
                   {"cursor": desc_cursor[:-3]}):
        response = await pipeline.get("/v1/opportunities", params=params)
        assert response.status_code == 422, params
        assert response.json()["errors"][0]["field"] == "cursor"
    assert (await pipeline.get("/v1/opportunities", params={"cursor": desc_cursor})).status_code == 200


# ---- transitions ------------------------------------------------------------------------------


async def _opportunity_in(client, stage: str, **kw):  # noqa: ANN001, ANN003, ANN202
    s = client.store
    contact = s.contact(stage=stage, sql_at=T0 + day(1), **kw)
    await s.add(contact)
    opp = s.opportunity(contact, stage=stage)
    await s.add(opp)
    return contact, opp


async def _stored(client, opp_id: str, contact_id: str):  # noqa: ANN001, ANN202
    async with client.runtime.db.reader() as session:
        opp = await session.get(Opportunity, opp_id)
        contact = await session.get(Contact, contact_id)
        changes = (
            (await session.execute(select(StageChange).where(StageChange.opportunity_id == opp_id))).scalars().all()
        )
    return opp, contact, changes


LEGAL = [
    ("sql", {"to": "opportunity"}, "opportunity_at"),
    ("sql", {"to": "opportunity", "amount": 12000, "reason": "budget confirmed"}, "opportunity_at"),
    ("sql", {"to": "lost", "reason": "went with a competitor"}, "lost_at"),
    ("sql", {"to": "disqualified", "reason": "student"}, None),
    ("sql", {"to": "nurture", "reason": "next fiscal year"}, None),
    ("opportunity", {"to": "customer", "amount": 24000.5}, "customer_at"),
    ("opportunity", {"to": "customer", "amount": "99.99", "reason": "signed"}, "customer_at"),
    ("opportunity", {"to": "lost", "reason": "no budget", "amount": 5000}, "lost_at"),
    ("opportunity", {"to": "disqualified", "reason": "duplicate"}, None),
    ("opportunity", {"to": "nurture", "reason": "timing"}, None),
]


@pytest.mark.parametrize("current,body,milestone", LEGAL)
async def test_legal_transition_is_stored_with_who_made_it(pipeline, current, body, milestone):
    contact, opp = await _opportunity_in(pipeline, current)
    response = await pipeline.post(f"/v1/opportunities/{opp.id}/transitions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["opportunity"]["stage"] == body["to"]
    change = answer["stage_change"]
    assert (change["from_stage"], change["to_stage"], change["changed_by"]) == (current, body["to"], "alice@sales")
    stored_opp, stored_contact, changes = await _stored(pipeline, opp.id, contact.id)
    assert stored_opp.stage == stored_contact.stage == body["to"]
    assert len(changes) == 1 and changes[0].changed_by == "alice@sales" and changes[0].reason == body.get("reason")
    if "amount" in body:
        assert stored_opp.amount == Decimal(str(body["amount"])).quantize(Decimal("0.01"))
        assert answer["opportunity"]["amount"] == float(body["amount"])
    if body["to"] == "opportunity":
        assert stored_opp.accepted_at is not None and stored_opp.closed_at is None
    else:
        assert stored_opp.closed_at is not None
        assert stored_opp.close_reason == body.get("reason")
    if milestone:
        assert getattr(stored_contact, milestone) is not None
    for other in {"opportunity_at", "customer_at", "lost_at"} - {milestone}:
        assert getattr(stored_contact, other) is None
    async with pipeline.runtime.db.reader() as session:
        outbox = (await session.execute(select(PipelineOutbox))).scalars().all()
    assert [(o.event_id, o.key, o.topic) for o in outbox] == [(changes[0].event_id, contact.email, PIPELINE_CHANGES)]


ILLEGAL = [
    ("sql", "customer", ["opportunity", "lost", "disqualified", "nurture"]),
    ("opportunity", "opportunity", ["customer", "lost", "disqualified", "nurture"]),
    ("customer", "lost", []),
    ("customer", "opportunity", []),
    ("lost", "opportunity", []),
    ("disqualified", "nurture", []),
    ("nurture", "customer", []),
]


@pytest.mark.parametrize("current,to,allowed", ILLEGAL)
async def test_illegal_transition_is_409_naming_current_and_allowed(shared_pipeline, current, to, allowed):
    contact, opp = await _opportunity_in(shared_pipeline, current)
    body = {"to": to, "reason": "because", "amount": 100}
    response = await shared_pipeline.post(f"/v1/opportunities/{opp.id}/transitions", json=body)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["current_stage"] == current
    assert problem["allowed"] == allowed
    assert current in problem["detail"]
    _, stored_contact, changes = await _stored(shared_pipeline, opp.id, contact.id)
    assert stored_contact.stage == current and changes == []
    assert await count(shared_pipeline, PipelineOutbox) == 0  # none of the refused requests wrote one


BAD_BODIES = [
    ({"to": "customer"}, "amount"),
    ({"to": "customer", "amount": 0}, "amount"),
    ({"to": "customer", "amount": -5}, "amount"),
    ({"to": "customer", "amount": 1.234}, "amount"),
    ({"to": "lost"}, "reason"),
    ({"to": "nurture", "reason": "   "}, "reason"),
    ({"to": "sql"}, "to"),
    ({"to": "won", "amount": 5}, "to"),
    ({}, "to"),
    ({"to": "opportunity", "probability": 0.5}, "probability"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES)
async def test_bad_transition_body_is_422_naming_the_field(shared_pipeline, body, field):
    contact, opp = await _opportunity_in(shared_pipeline, "opportunity")
    response = await shared_pipeline.post(f"/v1/opportunities/{opp.id}/transitions", json=body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    _, _, changes = await _stored(shared_pipeline, opp.id, contact.id)
    assert changes == []


async def test_transition_unknown_opportunity_and_wrong_content(pipeline):
    missing = await pipeline.post(f"/v1/opportunities/{uuid.uuid4()}/transitions", json={"to": "opportunity"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    _, opp = await _opportunity_in(pipeline, "sql")
    text = await pipeline.post(f"/v1/opportunities/{opp.id}/transitions", content=b"to=opportunity",
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert text.status_code == 415
    malformed = await pipeline.post(f"/v1/opportunities/{opp.id}/transitions", content=b'{"to": ',
                                    headers={"content-type": "application/json"})
    assert malformed.status_code == 422


async def test_idempotent_retry_changes_nothing(pipeline):
    contact, opp = await _opportunity_in(pipeline, "sql")
    url = f"/v1/opportunities/{opp.id}/transitions"
    headers = {"Idempotency-Key": "accept-1"}
    first = await pipeline.post(url, json={"to": "opportunity", "amount": 1000}, headers=headers)
    assert first.status_code == 200
    retries = await asyncio.gather(*(pipeline.post(url, json={"to": "opportunity", "amount": 1000}, headers=headers)
                                     for _ in range(4)))
    for retry in retries:
        assert retry.status_code == 200
        assert retry.json() == first.json()
        assert retry.headers["idempotent-replayed"] == "true"
    _, stored_contact, changes = await _stored(pipeline, opp.id, contact.id)
    assert len(changes) == 1 and stored_contact.stage == "opportunity"
    assert await count(pipeline, PipelineOutbox) == 1
    assert await count(pipeline, TransitionRequest) == 1
    # the same key with another request is a conflict, not a silent replay
    other = await pipeline.post(url, json={"to": "lost", "reason": "x"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["type"].endswith("idempotency-key-reused")
    # without the key the same move is simply illegal now
    again = await pipeline.post(url, json={"to": "opportunity", "amount": 1000})
    assert again.status_code == 409 and again.json()["current_stage"] == "opportunity"
    # keys are per API key: another caller's identical key is its own request
    bob = await add_key(pipeline.runtime.db, "bob@sales", "pipeline")
    win = await pipeline.post(url, json={"to": "customer", "amount": 1500},
                              headers=headers | {"Authorization": f"Bearer {bob}"})
    assert win.status_code == 200 and win.json()["stage_change"]["changed_by"] == "bob@sales"
    too_long = await pipeline.post(url, json={"to": "lost", "reason": "x"}, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "idempotency-key"


async def test_transition_publishes_stage_changed_through_the_broker(pipeline, broker):
    contact, opp = await _opportunity_in(pipeline, "sql", email="grace@navy.example.org")
    url = f"/v1/opportunities/{opp.id}/transitions"
    accepted = (await pipeline.post(url, json={"to": "opportunity"})).json()
    won = (await pipeline.post(url, json={"to": "customer", "amount": 42000, "reason": "signed"})).json()
    ids_ = {accepted["stage_change"]["event_id"], won["stage_change"]["event_id"]}

    async def published() -> bool:
        return await count(pipeline, PipelineOutbox, PipelineOutbox.published_at.is_(None)) == 0

    await eventually(published, timeout=15)
    events = [e for e in await read_topic(broker.bootstrap, PIPELINE_CHANGES, expect=2, timeout=15, settle=0.2)
              if e.id in ids_]
    assert len(events) == 2
    by_stage = {e.data["to_stage"]: e for e in events}
    assert by_stage.keys() == {"opportunity", "customer"}
    win = by_stage["customer"]
    assert win.type == STAGE_CHANGED and win.source == "/leadstream/pipeline"
    assert win.subject == "grace@navy.example.org"
    assert win.data["from_stage"] == "opportunity" and win.data["changed_by"] == "alice@sales"
    assert win.data["opportunity_id"] == opp.id and win.data["contact_id"] == contact.id
    assert Decimal(str(win.data["amount"])) == Decimal("42000")
    detail = (await pipeline.get(f"/v1/contacts/{contact.id}")).json()
    assert [c["to_stage"] for c in detail["stage_history"]] == ["opportunity", "customer"]
    assert detail["stage"] == "customer" and detail["milestones"]["customer_at"] is not None


# ---- the sources question ----------------------------------------------------------------------


DEC_15 = datetime(2024, 12, 15, 18, 0, tzinfo=timezone.utc)


async def _seed_history(client) -> dict[str, Contact]:  # noqa: ANN001
    """Inbound and outbound over several channels and campaigns, won and lost, with amounts.

    The expected figures in the tests below are worked out by hand from this table.
    """
    s = client.store

    def reached(n: int, sql_days: float | None = None, first_at: datetime = T0) -> dict:
        names = ["lead_at", "mql_at", "sql_at", "opportunity_at", "customer_at"]
        out = {name: first_at + day(i * 0.1) for i, name in enumerate(names[:n])}
        if sql_days is not None:
            out["sql_at"] = first_at + day(sql_days)
        return out

    c = {
        # inbound paid_search, campaign brand
        "p1": s.contact(channel="paid_search", campaign="brand", stage="customer", **reached(5, 2)),
        "p2": s.contact(channel="paid_search", campaign="brand", stage="opportunity", **reached(4, 4),
                        last_touch_channel="email"),
        "p3": s.contact(channel="paid_search", campaign="brand", stage="lost", lost_at=T0 + day(30), **reached(3, 6)),
        "p4": s.contact(channel="paid_search", campaign="brand", stage="mql", **reached(2)),
        "p5": s.contact(channel="paid_search", campaign="brand", stage="lead", **reached(1)),
        # inbound organic_search, no campaign
        "o1": s.contact(channel="organic_search", stage="sql", **reached(3, 10)),
        "o2": s.contact(channel="organic_search", stage="lead", **reached(1)),
        # outbound cold_email: one prospect, one that jumped straight to sql on a meeting
        "e1": s.contact(motion="outbound", channel="cold_email", sequence="seq-a", stage="prospect"),
        "e2": s.contact(motion="outbound", channel="cold_email", sequence="seq-a", stage="customer",
                        sql_at=T0 + day(1), opportunity_at=T0 + day(2), customer_at=T0 + day(20)),
        # blended: came in on a webinar, then worked by sales
        "b1": s.contact(motion="blended", channel="webinar", campaign="spring-webinar", form="webinar-form",
                        stage="disqualified", **reached(3, 3)),
        # outside the date range (first touch 15 Dec 2024, 18:00)
        "x1": s.contact(channel="paid_search", campaign="brand", stage="customer", first_at=DEC_15,
                        **reached(5, 5, first_at=DEC_15)),
    }
    await s.add(*c.values())
    await s.add(
        s.opportunity(c["p1"], stage="customer", amount=10000),
        s.opportunity(c["p2"], stage="opportunity", amount=5000),
        s.opportunity(c["p3"], stage="lost", amount=8000),
        s.opportunity(c["o1"], stage="sql"),
        s.opportunity(c["e2"], stage="customer", amount=20000),
        s.opportunity(c["b1"], stage="disqualified"),
        s.opportunity(c["x1"], stage="customer", amount=99999),
    )
    return c


RANGE = {"from": "2025-01-01", "to": "2025-03-31"}


async def test_sources_by_channel_match_hand_computed_figures(pipeline):
    await _seed_history(pipeline)
    response = await pipeline.get("/v1/analytics/sources", params=RANGE)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["group_by"] == "channel" and report["keys"] == ["motion", "channel"]
    rows = {(r["motion"], r["channel"]): r for r in report["rows"]}
    assert list(rows) == [("inbound", "paid_search"), ("inbound", "organic_search"), ("outbound", "cold_email"),
                          ("blended", "webinar")]
    assert rows[("inbound", "paid_search")] == {
        "motion": "inbound", "channel": "paid_search", "contacts": 5, "leads": 5, "mql": 4, "sql": 3,
        "opportunities": 2, "won": 1, "lead_to_mql": 0.8, "mql_to_sql": 0.75, "sql_to_opportunity": 0.6667,
        "opportunity_to_won": 0.5, "qualified_opportunities": 3, "pipeline_amount": 15000.0,
        "estimated_pipeline_amount": 0.0, "won_amount": 10000.0,
        "median_days_to_qualify": 4.0, "share": 0.5, "amount_share": 0.4286,
    }
    assert rows[("inbound", "organic_search")] == {
        "motion": "inbound", "channel": "organic_search", "contacts": 2, "leads": 2, "mql": 1, "sql": 1,
        "opportunities": 0, "won": 0, "lead_to_mql": 0.5, "mql_to_sql": 1.0, "sql_to_opportunity": 0.0,
        "opportunity_to_won": None, "qualified_opportunities": 1, "pipeline_amount": None,
        "estimated_pipeline_amount": None, "won_amount": None,
        "median_days_to_qualify": 10.0, "share": 0.1667, "amount_share": None,
    }
    # e2 jumped straight to sql: it still counts as a lead and an MQL that converted
    assert rows[("outbound", "cold_email")] == {
        "motion": "outbound", "channel": "cold_email", "contacts": 2, "leads": 1, "mql": 1, "sql": 1,
        "opportunities": 1, "won": 1, "lead_to_mql": 1.0, "mql_to_sql": 1.0, "sql_to_opportunity": 1.0,
        "opportunity_to_won": 1.0, "qualified_opportunities": 1, "pipeline_amount": 20000.0,
        "estimated_pipeline_amount": 0.0, "won_amount": 20000.0,
        "median_days_to_qualify": 1.0, "share": 0.1667, "amount_share": 0.5714,
    }
    blended = rows[("blended", "webinar")]
    assert (blended["sql"], blended["opportunities"], blended["qualified_opportunities"]) == (1, 0, 1)
    assert blended["pipeline_amount"] is None and blended["median_days_to_qualify"] == 3.0
    assert report["totals"] == {
        "contacts": 10, "leads": 9, "mql": 7, "sql": 6, "opportunities": 3, "won": 2,
        "lead_to_mql": 0.7778, "mql_to_sql": 0.8571, "sql_to_opportunity": 0.5, "opportunity_to_won": 0.6667,
        "qualified_opportunities": 6, "pipeline_amount": 35000.0, "estimated_pipeline_amount": 0.0,
        "won_amount": 30000.0,
        "median_days_to_qualify": 3.5, "share": 1.0, "amount_share": 1.0,
    }
    # channel shares 3/6, 1/6, 1/6, 1/6: HHI = 1/4 + 3/36
    assert report["concentration_index"] == pytest.approx(0.3333, abs=1e-4)
    # paid_search is exactly 50% (not more); the brand campaign carries 3 of 6
    assert report["warnings"] == ["50% of qualified pipeline comes from the brand campaign"]


async def test_sources_inbound_only_warns_about_the_channel(pipeline):
    await _seed_history(pipeline)
    report = (await pipeline.get("/v1/analytics/sources", params=RANGE | {"motion": "inbound"})).json()
    assert [(r["channel"], r["qualified_opportunities"], r["share"]) for r in report["rows"]] == [
        ("paid_search", 3, 0.75), ("organic_search", 1, 0.25)]
    assert report["concentration_index"] == 0.625  # 0.75² + 0.25²
    assert report["warnings"] == ["75% of qualified pipeline comes from paid_search",
                                  "75% of qualified pipeline comes from the brand campaign"]


async def test_sources_thresholds_come_from_settings(broker, database_factory, tmp_path):
    url = await database_factory("pipeline")
    settings = make_settings(broker.bootstrap, tmp_path, service="pipeline", pipeline_database_url=url,
                             dependency_thresholds_channel=0.4, dependency_thresholds_campaign=0.9,
                             dependency_thresholds_motion=0.6)
    app = create_app(settings)
    async with serve_app(app) as client:
        client.runtime, client.store = app.state.runtime, Store(app.state.runtime.db)
        await _seed_history(client)
        key = await add_key(app.state.runtime.db, "vp", "pipeline")
        report = (await client.get("/v1/analytics/sources", params=RANGE,
                                   headers={"Authorization": f"Bearer {key}"})).json()
    assert report["warnings"] == ["50% of qualified pipeline comes from paid_search",
                                  "67% of qualified pipeline comes from the inbound motion"]


async def test_sources_grouped_by_motion_campaign_sequence_form_and_last_touch(pipeline):
    await _seed_history(pipeline)

    async def report(**params) -> dict:  # noqa: ANN003
        response = await pipeline.get("/v1/analytics/sources", params=RANGE | params)
        assert response.status_code == 200, response.text
        return response.json()

    by_motion = await report(group_by="motion")
    assert by_motion["keys"] == ["motion"]
    assert [(r["motion"], r["contacts"], r["qualified_opportunities"], r["won_amount"]) for r in by_motion["rows"]] == [
        ("inbound", 7, 4, 10000.0), ("outbound", 2, 1, 20000.0), ("blended", 1, 1, None)]
    assert by_motion["rows"][0]["median_days_to_qualify"] == 5.0  # 2, 4, 6, 10
    by_campaign = await report(group_by="campaign")
    assert [(r["motion"], r["campaign"], r["qualified_opportunities"]) for r in by_campaign["rows"]] == [
        ("inbound", "brand", 3), ("inbound", None, 1), ("outbound", None, 1), ("blended", "spring-webinar", 1)]
    by_sequence = await report(group_by="sequence", motion="outbound")
    assert [(r["sequence"], r["contacts"], r["won"]) for r in by_sequence["rows"]] == [("seq-a", 2, 1)]
    assert by_sequence["warnings"] == ["100% of qualified pipeline comes from cold_email"]
    by_form = await report(group_by="form", motion="blended")
    assert [(r["form"], r["sql"]) for r in by_form["rows"]] == [("webinar-form", 1)]
    last = await report(motion="inbound", attribution="last")
    assert [(r["channel"], r["qualified_opportunities"]) for r in last["rows"]] == [
        ("paid_search", 2), ("organic_search", 1), ("email", 1)]
    # the range: a date includes its whole day (x1's first touch is 15 Dec 2024, 18:00)
    wide = await report(**{"from": "2024-12-15", "to": "2024-12-15"})
    assert wide["totals"]["contacts"] == 1 and wide["totals"]["won_amount"] == 99999.0
    assert (await report(**{"from": "2024-12-16", "to": "2025-01-09"}))["totals"]["contacts"] == 0
    everything = (await pipeline.get("/v1/analytics/sources")).json()
    assert everything["totals"]["contacts"] == 11 and everything["from"] is None


async def test_sources_on_an_empty_store(pipeline):
    report = (await pipeline.get("/v1/analytics/sources")).json()
    assert report["rows"] == []
    assert report["totals"]["contacts"] == 0 and report["totals"]["share"] is None
    assert report["concentration_index"] is None and report["warnings"] == []


async def test_sources_as_csv(pipeline):
    await _seed_history(pipeline)
    response = await pipeline.get("/v1/analytics/sources", params=RANGE, headers={"Accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text)))
    json_rows = (await pipeline.get("/v1/analytics/sources", params=RANGE)).json()["rows"]
    assert len(table) == len(json_rows) == 4
    assert list(table[0])[:4] == ["motion", "channel", "contacts", "leads"]
    first = table[0]
    assert (first["channel"], first["sql"], first["pipeline_amount"], first["share"]) == (
        "paid_search", "3", "15000.0", "0.5")
    assert table[1]["opportunity_to_won"] == ""  # none, not zero


async def test_balance_on_an_empty_store_and_its_auth(pipeline):
    report = (await pipeline.get("/v1/analytics/balance", params={"to": "2025-03-31"})).json()
    assert [r["motion"] for r in report["rows"]] == ["inbound", "outbound", "blended"]
    assert all(r["entrants"] == 0 and r["share"] is None and r["median_days_to_sql"] is None for r in report["rows"])
    assert report["totals"] == {"entrants": 0, "qualified_opportunities": 0, "assisted": 0, "assisted_share": None}
    assert report["trend"]["recent"] == {"from": "2025-03-04", "to": "2025-03-31", "qualified_opportunities": 0}
    assert report["diagnoses"] == []
    assert (await pipeline.get("/v1/analytics/balance", headers={"Authorization": ""})).status_code == 401
    other = await add_key(pipeline.runtime.db, "webhooks-only", "subscriptions")
    response = await pipeline.get("/v1/analytics/balance", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 403 and response.headers["content-type"] == "application/problem+json"
