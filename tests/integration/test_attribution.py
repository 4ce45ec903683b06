"""Attribution through the real broker into a real store (SQLite and PostgreSQL): counting
touches by occurrence time, credits per opportunity and model, and the sources answer and
``/v1/opportunities/{id}/attribution`` under every model."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from pipeline_store.models import AttributionCredit, Opportunity, PipelineApiKey
from pipeline_store.source_rollups import MODELS
from services.pipeline.app import create_app as create_pipeline
from shared.api_keys import hash_key, new_key
from tests.integration import test_qualification
from tests.integration.test_qualification import BUSINESS, lead, prospect, touch
from tests.support import make_settings, serve_app

pytestmark = pytest.mark.timeout(180)

stack = test_qualification.stack  # the qualification service on its own broker, as there

EMAIL = "jane@acme-robotics.com"
PAID = {"source": "google", "medium": "cpc", "campaign": "q4-demo"}

# two counting touches: an outbound reply at minute 10 (synced late) and the demo request at
# minute 100 that qualified (it made the contact mql and sql at once)
EXPECTED = {
    "first": {"cold_email": 1.0, "paid_search": 0.0},
    "last": {"cold_email": 0.0, "paid_search": 1.0},
    "linear": {"cold_email": 0.5, "paid_search": 0.5},
    "position": {"cold_email": 0.5, "paid_search": 0.5},
    # 2^(-90 min / 7 days) against 1
    "time_decay": {"cold_email": 2 ** (-90 / (7 * 24 * 60)) / (1 + 2 ** (-90 / (7 * 24 * 60))),
                   "paid_search": 1 / (1 + 2 ** (-90 / (7 * 24 * 60)))},
    # first 0.3; mql + last on the demo request 0.6; normalised
    "w_shaped": {"cold_email": 1 / 3, "paid_search": 2 / 3},
}


async def _pipeline_client(stack):  # noqa: ANN001, ANN202
    key = new_key()
    async with stack.db.unit_of_work() as session:
        session.add(PipelineApiKey(id="k1", name="analyst", scopes="pipeline", key_hash=hash_key(key),
                                   prefix=key[:8], created_at=lead(EMAIL).time))
    settings = make_settings(stack.broker.bootstrap, stack.settings.data_dir, service="pipeline",
                             pipeline_database_url=stack.url)
    return create_pipeline(settings), {"Authorization": f"Bearer {key}"}


async def _credits(stack) -> dict[str, dict[str, float]]:  # noqa: ANN001
    async with stack.db.reader() as session:
        rows = (await session.execute(select(AttributionCredit))).scalars().all()
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        for model in MODELS:
            credit = getattr(row, f"credit_{model}")
            if credit is not None:
                out.setdefault(model, {})[row.channel] = out.get(model, {}).get(row.channel, 0.0) + credit
    return out


async def test_an_earlier_touch_synced_late_takes_its_place_in_every_model(stack):
    await stack.produce(lead(EMAIL, "demo_request", minute=100, utm=PAID, **BUSINESS))
    await stack.applied(1)
    assert {m: c for m, c in (await _credits(stack)).items()} == {m: {"paid_search": 1.0} for m in MODELS}
    # the sales tool syncs a reply that occurred before the demo request; and one after it
    # (not counting: after qualification), and a sent email (no engagement points)
    await stack.produce(touch(EMAIL, "replied", minute=10, sequence="vp-sales"),
                        touch(EMAIL, "sent", minute=5, sequence="vp-sales"),
                        touch(EMAIL, "meeting_booked", minute=200, sequence="vp-sales"))
    await stack.applied(4)
    credits = await _credits(stack)
    for model in MODELS:
        got = {channel: credits[model].get(channel, 0.0) for channel in ("cold_email", "paid_search")}
        assert got == pytest.approx(EXPECTED[model], abs=1e-9), model
        assert math.isclose(sum(credits[model].values()), 1.0)

    app, auth = await _pipeline_client(stack)
    async with serve_app(app) as client:
        client.headers.update(auth)
        async with stack.db.reader() as session:
            opportunity_id = (await session.execute(select(Opportunity.id))).scalar_one()
        answer = (await client.get(f"/v1/opportunities/{opportunity_id}/attribution")).json()
        assert [m["model"] for m in answer["models"]] == list(MODELS)
        for model in answer["models"]:
            assert model["basis"] == "counting_touches"
            assert [t["channel"] for t in model["touches"]] == ["cold_email", "paid_search"]  # by occurrence
            assert [t["motion"] for t in model["touches"]] == ["outbound", "inbound"]
            assert [t["campaign"] for t in model["touches"]] == ["vp-sales", "q4-demo"]
            assert {t["channel"]: t["credit"] for t in model["touches"]} == pytest.approx(
                EXPECTED[model["model"]], abs=1e-9)
        # the opportunity itself carries the earlier touch as its first (and is blended), and
        # its list's channel filter finds it by that first touch
        detail = (await client.get(f"/v1/opportunities/{opportunity_id}")).json()
        assert (detail["motion"], detail["first_touch"]["channel"], detail["first_touch"]["sequence"],
                detail["last_touch"]["channel"]) == ("blended", "cold_email", "vp-sales", "paid_search"), detail
        # whole, as the contact's: with each touch's event id and time
        contact = (await client.get(f"/v1/contacts/{detail['contact_id']}")).json()
        assert (detail["first_touch"], detail["last_touch"]) == (contact["first_touch"], contact["last_touch"])
        assert all(detail[which][name] for which in ("first_touch", "last_touch") for name in ("event_id", "at"))
        listed = (await client.get("/v1/opportunities", params={"channel": "cold_email"})).json()["items"]
        assert [o["id"] for o in listed] == [opportunity_id]
        assert (await client.get("/v1/opportunities", params={"channel": "paid_search"})).json()["items"] == []
        missing = await client.get("/v1/opportunities/nope/attribution")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")

        for model in MODELS:
            report = (await client.get("/v1/analytics/sources", params={"attribution": model})).json()
            shares = {r["channel"]: r["share"] for r in report["rows"]}
            expected = {c: round(v, 4) for c, v in EXPECTED[model].items() if round(v, 4)}
            assert {c: s for c, s in shares.items() if s} == expected, model
            # the contact was touched by both motions before qualification
            assert {r["motion"] for r in report["rows"]} == {"blended"}
            assert report["totals"]["contacts"] == 1 and report["totals"]["qualified_opportunities"] == 1
            sql = {r["channel"]: r["sql"] for r in report["rows"]}
            assert sum(sql.values()) == pytest.approx(1.0)
        bad = await client.get("/v1/analytics/sources", params={"attribution": "u_shaped"})
        assert bad.status_code == 422
        assert [e["field"] for e in bad.json()["errors"]] == ["attribution"]


async def test_an_earlier_touch_in_the_batch_that_qualifies_is_the_opportunitys_first(stack):
    """The demo request and a reply that occurred before it, synced just after it, applied in
    one batch: the opportunity created in that batch already carries the reply as its first touch."""
    await stack.produce(lead(EMAIL, "demo_request", minute=100, utm=PAID, **BUSINESS),
                        touch(EMAIL, "replied", minute=10, sequence="vp-sales"))
    await stack.applied(2)
    async with stack.db.reader() as session:
        opportunity = (await session.execute(select(Opportunity))).scalar_one()
    assert (opportunity.motion, opportunity.first_touch_channel, opportunity.last_touch_channel) == (
        "blended", "cold_email", "paid_search")


async def test_a_contact_not_qualified_counts_by_its_first_touch_and_last_touch(stack):
    await stack.produce(prospect("sam@globex.com", minute=0, list="q4"),
                        touch("sam@globex.com", "opened", minute=5, channel="cold_email", sequence="s1"),
                        touch("sam@globex.com", "clicked", minute=9, channel="social", sequence="s2"))
    await stack.applied(3)
    app, auth = await _pipeline_client(stack)
    async with serve_app(app) as client:
        client.headers.update(auth)
        for model in MODELS:
            report = (await client.get("/v1/analytics/sources", params={"attribution": model})).json()
            channel = "social" if model == "last" else "cold_email"
            assert [(r["channel"], r["contacts"], r["leads"], r["sql"]) for r in report["rows"]] == [
                (channel, 1, 1, 0)], model
            assert report["totals"]["qualified_opportunities"] == 0 and report["totals"]["share"] is None


async def test_sources_csv_per_model(stack):
    await stack.produce(lead(EMAIL, "demo_request", minute=100, utm=PAID, **BUSINESS),
                        touch(EMAIL, "replied", minute=10, sequence="vp-sales"))
    await stack.applied(2)
    app, auth = await _pipeline_client(stack)
    async with serve_app(app) as client:
        client.headers.update(auth | {"Accept": "text/csv"})
        answer = await client.get("/v1/analytics/sources", params={"attribution": "linear"})
        assert answer.status_code == 200 and 'filename="sources-by-channel-linear.csv"' in \
            answer.headers["content-disposition"]
        lines = answer.text.splitlines()
        assert lines[0].startswith("motion,channel,contacts") and len(lines) == 3
        assert all(",0.5," in line for line in lines[1:])
        default = await client.get("/v1/analytics/sources")
        assert 'filename="sources-by-channel.csv"' in default.headers["content-disposition"]
