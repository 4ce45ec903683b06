"""The motion balance answer over a history sent through the public APIs.

Capture, outreach, a qualification worker and the pipeline service run in-process on a
broker of this test's own, each on its own database (SQLite and PostgreSQL); leads go to
``POST /v1/leads``, prospects and touches to outreach, sales decisions to the pipeline's
transitions. Every figure of the answer is checked against the value worked out by hand
from the table below; then the rollups are rebuilt from the raw rows (the migration's
backfill) and must give the same answer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import func, select

from leadstream.registry import DATABASES
from pipeline_store.models import Contact, Opportunity
from services.capture.app import create_app as capture_app
from services.outreach.app import create_app as outreach_app
from services.pipeline.app import create_app as pipeline_app
from services.qualification.app import create_app as qualification_app
from shared.broker import EmbeddedBroker, free_port
from shared.migrate import alembic_config
from tests.integration.test_outreach_api import add_key as outreach_key
from tests.integration.test_pipeline_api import add_key as pipeline_key
from tests.support import ROOT, eventually, make_settings, serve_app

pytestmark = pytest.mark.timeout(180)

# fit grade A: software 25, 250 employees 25, US 15, VP 20 + sales 15 = 100
GOOD = dict(company="Acme Robotics", title="VP of Sales", employees=250, industry="Software", country="US")
# fit grade F: no industry, seniority or department points, 5 employees -10
POOR = dict(company="Tiny Farm", title="Student", employees=5, industry="Agriculture", country="BR")
PAID = {"utm": {"source": "google", "medium": "cpc"}}
NEWSLETTER = {"utm": {"source": "newsletter", "medium": "email"}}


def at(text: str) -> str:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).isoformat()


def lead(n: str, when: str, form_type: str, profile: dict, how: dict) -> dict:
    return {"email": f"{n}@{n}-co.com", "form_type": form_type, "occurred_at": at(when), **profile, **how}


# The history (UTC). Inbound entrants I1–I11, outbound O1–O5.
LEADS = [
    *(lead(f"i{k}", "2026-09-20T09:00", "demo_request", POOR, PAID) for k in (1, 2, 3)),  # sql at once
    *(lead(f"i{k}", "2026-09-20T10:00", "newsletter", POOR, NEWSLETTER) for k in (7, 8, 9)),  # never sql
    *(lead(f"i{k}", "2026-10-20T09:00", "demo_request", POOR, PAID) for k in (4, 5, 6)),  # sql at once
    lead("i10", "2026-10-20T11:00", "demo_request", GOOD, PAID),  # sql at once
    lead("i11", "2026-10-21T09:00", "content_download", GOOD, {}),  # content; sql on outbound's meeting
]
PROSPECTS = [
    *({"email": f"o{k}@o{k}-co.com", "occurred_at": at("2026-09-22T09:00"), **GOOD} for k in (1, 2, 3)),
    {"email": "o4@o4-co.com", "occurred_at": at("2026-10-22T09:00"), **GOOD},
    {"email": "o5@o5-co.com", "occurred_at": at("2026-10-22T09:00"), **GOOD},
    {"email": "i11@i11-co.com", "occurred_at": at("2026-10-23T09:00"), **GOOD},  # inbound, then prospected
]


def touch(n: str, outcome: str, when: str, channel: str = "cold_email") -> dict:
    return {"email": f"{n}@{n}-co.com", "channel": channel, "outcome": outcome, "occurred_at": at(when),
            "external_id": f"{n}-{outcome}"}


TOUCHES = [
    *(t for k in (1, 2, 3) for t in (touch(f"o{k}", "sent", "2026-09-22T10:00"),
                                     touch(f"o{k}", "opened", "2026-09-23T10:00"),
                                     touch(f"o{k}", "meeting_booked", "2026-09-24T12:00"))),  # sql 2 days on
    touch("o4", "sent", "2026-10-22T10:00"), touch("o4", "opened", "2026-10-23T10:00"),  # never sql
    touch("o5", "sent", "2026-10-22T10:00", channel="cold_call"),  # first touch: outbound, cold_call
    touch("i11", "meeting_booked", "2026-10-24T10:00"),  # sql 3 days 1 hour after its first touch
]
# o5, already prospected and called, asks for a demo: sql 5 days 1 hour after its first touch
LATE_LEAD = lead("o5", "2026-10-27T11:00", "demo_request", GOOD, {})
RANGE = {"from": "2026-09-01", "to": "2026-11-10"}

# By hand. Entry motion = first touch's motion; blended = touched by both before sql (i11, o5).
# inbound: 11 entrants, A/B: i10, i11; sql: i1–i6, i10, i11 = 8; won i1 (10,000)
# outbound: 5 entrants, all A; sql: o1, o2, o3, o5 = 4; won o1 (30,000); o2 open at 20,000
# forms: 11 leads + o5's = 12; touches: 9 + 2 + 1 + 1 = 13 (prospect records are not touches)
# windows end 10 Nov: recent 14 Oct–10 Nov (sql i4–i6, i10, i11 | o5), prior 16 Sep–13 Oct (i1–i3 | o1–o3)
EXPECTED_ROWS = [
    {"motion": "inbound", "entrants": 11, "fit_ab": 2, "fit_share": 0.1818, "qualified_opportunities": 8,
     "share": 0.6667, "pipeline_amount": 10000.0, "amount_share": 0.1667, "won": 1, "won_amount": 10000.0,
     "entrant_to_sql": 0.7273, "sql_to_customer": 0.125, "median_days_to_sql": 0.0,  # 0 ×7, 3
     "effort_kind": "form_submissions", "effort": 12, "effort_per_sql": 1.5,
     "effort_per_sql_recent": 1.2, "effort_per_sql_prior": 2.0,  # 6 forms / 5 sql; 6 / 3
     "recent_share": 0.8333, "prior_share": 0.5, "share_change_pp": 33.3, "assisted": 1, "assisted_share": 0.125},
    {"motion": "outbound", "entrants": 5, "fit_ab": 5, "fit_share": 1.0, "qualified_opportunities": 4,
     "share": 0.3333, "pipeline_amount": 50000.0, "amount_share": 0.8333, "won": 1, "won_amount": 30000.0,
     "entrant_to_sql": 0.8, "sql_to_customer": 0.25, "median_days_to_sql": 2.0,  # 2, 2, 2, 5
     "effort_kind": "touches", "effort": 13, "effort_per_sql": 3.25,
     "effort_per_sql_recent": 4.0, "effort_per_sql_prior": 3.0,  # 4 touches / 1 sql; 9 / 3
     "recent_share": 0.1667, "prior_share": 0.5, "share_change_pp": -33.3, "assisted": 1, "assisted_share": 0.25},
    {"motion": "blended", "entrants": 2, "fit_ab": 2, "fit_share": 1.0, "qualified_opportunities": 2,
     "share": 0.1667, "pipeline_amount": 0.0, "amount_share": 0.0, "won": 0, "won_amount": 0.0,
     "entrant_to_sql": 1.0, "sql_to_customer": 0.0, "median_days_to_sql": 4.0,  # 3, 5
     "effort_kind": None, "effort": None, "effort_per_sql": None, "effort_per_sql_recent": None,
     "effort_per_sql_prior": None, "recent_share": 0.3333, "prior_share": 0.0, "share_change_pp": 33.3,
     "assisted": None, "assisted_share": None},
]
# the trend counts qualified contacts by their first touch's day, week by week from 16 Sep:
# i1–i3 and o1–o3 (20 and 22 Sep), i4–i6 and i10 (20 Oct), i11 (21 Oct) and o5 (22 Oct), both blended
WEEK_COUNTS = {0: (3, 3, 0), 4: (4, 0, 0), 5: (1, 1, 2)}  # (inbound, outbound, blended); other weeks none
WEEK_SHARES = {0: (0.5, 0.5, 0.0), 4: (1.0, 0.0, 0.0), 5: (0.5, 0.5, 1.0)}
EXPECTED_WEEKS = [
    {"from": f"2026-{first}", "to": f"2026-{last}",
     "qualified_opportunities": sum(WEEK_COUNTS.get(i, (0, 0, 0))[:2]),
     "counts": dict(zip(("inbound", "outbound", "blended"), WEEK_COUNTS.get(i, (0, 0, 0)), strict=True)),
     **dict(zip(("inbound", "outbound", "blended"), WEEK_SHARES.get(i, (None, None, None)), strict=True))}
    for i, (first, last) in enumerate([("09-16", "09-22"), ("09-23", "09-29"), ("09-30", "10-06"),
                                       ("10-07", "10-13"), ("10-14", "10-20"), ("10-21", "10-27"),
                                       ("10-28", "11-03"), ("11-04", "11-10")])
]
# first-touch channels of the qualified, recent (of 6): paid_search 4, content 1, cold_call 1;
# prior (of 6): paid_search 3, cold_email 3
EXPECTED_CHANNELS = [
    {"channel": "cold_call", "recent_share": 0.1667, "prior_share": 0.0},
    {"channel": "cold_email", "recent_share": 0.0, "prior_share": 0.5},
    {"channel": "content", "recent_share": 0.1667, "prior_share": 0.0},
    {"channel": "paid_search", "recent_share": 0.6667, "prior_share": 0.5},
]
# with LEADSTREAM_BALANCE_MIN_OPPORTUNITIES=3 (each window has 6)
EXPECTED_DIAGNOSES = [
    ("weak_control", "67 % of qualified pipeline is inbound, yet 18 % of inbound entrants fit (A/B) against "
     "100 % of outbound prospects: stronger prospecting would add control over who enters",
     {"inbound_share": 0.6667, "inbound_fit_share": 0.1818, "outbound_fit_share": 1.0, "fit_gap": 0.8182,
      "qualified_opportunities": 12, "thresholds": {"majority": 0.6, "fit_gap": 0.2}}),
    # first-touch channels of the 12: paid_search 7 (i1–i6, i10), cold_email 3, content 1, cold_call 1
    ("channel_dependency", "58% of qualified pipeline comes from paid_search",
     {"channel": "paid_search", "share": 0.5833, "threshold": 0.5}),
    ("share_shift", "the inbound motion's share of qualified pipeline moved from 50 % to 83 % (+33.3 points) "
     "between the 28 days before and the last 28 days",
     {"motion": "inbound", "prior_share": 0.5, "recent_share": 0.8333, "change_pp": 33.3,
      "thresholds": {"shift": 0.15}}),
    # recent: paid_search 4/6, content 1/6, cold_call 1/6; prior: paid_search 3/6, cold_email 3/6
    ("share_shift", "cold_call's share of qualified pipeline moved from 0 % to 17 % (+16.7 points) between the "
     "28 days before and the last 28 days",
     {"channel": "cold_call", "prior_share": 0.0, "recent_share": 0.1667, "change_pp": 16.7,
      "thresholds": {"shift": 0.15}}),
    ("share_shift", "cold_email's share of qualified pipeline moved from 50 % to 0 % (-50 points) between the "
     "28 days before and the last 28 days",
     {"channel": "cold_email", "prior_share": 0.5, "recent_share": 0.0, "change_pp": -50.0,
      "thresholds": {"shift": 0.15}}),
    ("share_shift", "content's share of qualified pipeline moved from 0 % to 17 % (+16.7 points) between the "
     "28 days before and the last 28 days",
     {"channel": "content", "prior_share": 0.0, "recent_share": 0.1667, "change_pp": 16.7,
      "thresholds": {"shift": 0.15}}),
    ("share_shift", "paid_search's share of qualified pipeline moved from 50 % to 67 % (+16.7 points) between "
     "the 28 days before and the last 28 days",
     {"channel": "paid_search", "prior_share": 0.5, "recent_share": 0.6667, "change_pp": 16.7,
      "thresholds": {"shift": 0.15}}),
]


class Product:
    """The four services in-process on one broker."""

    def __init__(self) -> None:
        self.clients: dict = {}
        self.contexts: list = []

    async def start(self, broker: EmbeddedBroker, urls: dict[str, str], tmp_path, **balance) -> None:  # noqa: ANN001, ANN003
        common = dict(pipeline_database_url=urls["pipeline"], capture_database_url=urls["capture"],
                      outreach_database_url=urls["outreach"])
        group = dict(kafka_consumer_group=f"q-{uuid.uuid4().hex[:8]}")
        for name, factory in (("capture", capture_app), ("outreach", outreach_app),
                              ("qualification", qualification_app), ("pipeline", pipeline_app)):
            own = balance if name == "pipeline" else group if name == "qualification" else {}
            app = factory(make_settings(broker.bootstrap, tmp_path, service=name, **common, **own))
            ctx = serve_app(app)
            client = await ctx.__aenter__()
            self.contexts.append(ctx)
            client.runtime = app.state.runtime
            self.clients[name] = client
        await self.clients["qualification"].runtime.consumer.wait_assigned()
        outreach, pipeline = self.clients["outreach"], self.clients["pipeline"]
        outreach.headers["Authorization"] = f"Bearer {await outreach_key(outreach.runtime.db)}"
        pipeline.headers["Authorization"] = "Bearer " + await pipeline_key(pipeline.runtime.db, "vp", "pipeline")

    async def stop(self) -> None:
        for ctx in reversed(self.contexts):
            await ctx.__aexit__(None, None, None)

    async def stored(self, model) -> int:  # noqa: ANN001
        async with self.clients["pipeline"].runtime.db.reader() as s:
            return (await s.execute(select(func.count()).select_from(model))).scalar_one()

    async def post(self, service: str, path: str, body: dict) -> None:
        response = await self.clients[service].post(path, json=body)
        assert response.status_code in (200, 201, 202), response.text

    async def opportunity_of(self, email: str) -> str:
        pipeline = self.clients["pipeline"]
        found = (await pipeline.get("/v1/contacts", params={"email": email})).json()["items"]
        detail = (await pipeline.get(f"/v1/contacts/{found[0]['id']}")).json()
        return detail["opportunities"][0]["id"]

    async def move(self, email: str, *moves: dict) -> None:
        opportunity = await self.opportunity_of(email)
        for body in moves:
            await self.post("pipeline", f"/v1/opportunities/{opportunity}/transitions", body)


@pytest.fixture
async def product(database_factory, tmp_path):
    urls = {db: await database_factory(db) for db in ("capture", "outreach", "pipeline")}
    broker = EmbeddedBroker(port=free_port())
    await broker.astart()
    p = Product()
    p.urls = urls
    try:
        await p.start(broker, urls, tmp_path, balance_min_opportunities=3)
        yield p
    finally:
        await p.stop()
        broker.stop()


async def _seed(p: Product) -> None:
    for body in LEADS:
        await p.post("capture", "/v1/leads", body)
    await eventually(lambda: _at_least(p, Contact, 11), timeout=60)
    for body in PROSPECTS:
        await p.post("outreach", "/v1/prospects", body)
    await p.post("outreach", "/v1/touches:batch", {"touches": TOUCHES})
    await eventually(lambda: _at_least(p, Opportunity, 11), timeout=60)
    await p.post("capture", "/v1/leads", LATE_LEAD)
    await eventually(lambda: _at_least(p, Opportunity, 12), timeout=60)
    await p.move("i1@i1-co.com", {"to": "opportunity"}, {"to": "customer", "amount": 10000})
    await p.move("o1@o1-co.com", {"to": "opportunity"}, {"to": "customer", "amount": 30000})
    await p.move("o2@o2-co.com", {"to": "opportunity", "amount": 20000})
    await p.move("i2@i2-co.com", {"to": "lost", "reason": "no budget", "amount": 7000})


async def _at_least(p: Product, model, n: int) -> bool:  # noqa: ANN001
    return await p.stored(model) >= n


async def _balance(p: Product, **params) -> dict:  # noqa: ANN003
    response = await p.clients["pipeline"].get("/v1/analytics/balance", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_every_figure_of_the_balance_matches_the_history_worked_by_hand(product):
    await _seed(product)
    assert await product.stored(Contact) == 16
    report = await _balance(product, **RANGE)
    assert report["from"] == "2026-09-01" and report["to"] == "2026-11-10" and report["date_basis"] == "first_touch"
    assert report["rows"] == EXPECTED_ROWS
    assert report["totals"] == {"entrants": 16, "qualified_opportunities": 12, "assisted": 2, "assisted_share": 0.1667}
    assert report["trend"] == {
        "days": 28, "recent": {"from": "2026-10-14", "to": "2026-11-10", "qualified_opportunities": 6},
        "prior": {"from": "2026-09-16", "to": "2026-10-13", "qualified_opportunities": 6},
        "weeks": EXPECTED_WEEKS, "channels": EXPECTED_CHANNELS}
    assert set(report) == {"from", "to", "date_basis", "rows", "totals", "trend", "diagnoses"}  # nothing unchecked
    assert [(d["rule"], d["sentence"], d["figures"]) for d in report["diagnoses"]] == EXPECTED_DIAGNOSES

    # the range: only September's cohort (i1–i3, i7–i9, o1–o3), effort of September's facts
    september = await _balance(product, **{"from": "2026-09-01", "to": "2026-09-30"})
    inbound, outbound, blended = september["rows"]
    assert (inbound["entrants"], inbound["qualified_opportunities"], inbound["effort"], inbound["won"]) == (6, 3, 6, 1)
    assert (outbound["entrants"], outbound["qualified_opportunities"], outbound["effort"]) == (3, 3, 9)
    assert blended["entrants"] == 0 and blended["share"] == 0.0
    assert september["trend"]["recent"] == {"from": "2026-09-03", "to": "2026-09-30", "qualified_opportunities": 6}
    # a date-time bound counts its whole day; no bounds is everything
    assert (await _balance(product, **{"from": "2026-09-20T23:00:00Z", "to": "2026-09-20T23:30:00+00:00"}))[
        "totals"]["entrants"] == 6
    everything = await _balance(product)
    assert everything["rows"][:2] == [{**r, **{k: everything["rows"][i][k] for k in r if k.startswith(
        ("recent", "prior", "share_change", "effort_per_sql_"))}} for i, r in enumerate(EXPECTED_ROWS[:2])]

    # the terminal's answer is the same
    env = {**os.environ, "LEADSTREAM_BALANCE_MIN_OPPORTUNITIES": "3",
           "LEADSTREAM_PIPELINE_DATABASE_URL": product.urls["pipeline"]}
    shown = subprocess.run([sys.executable, "-m", "leadstream.cli", "balance", "--from", "2026-09-01", "--to",
                            "2026-11-10"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[2].split() == ["inbound", "outbound", "blended", "(apart)"]
    assert next(x for x in lines if x.startswith("share of qualified pipeline")).split()[-6:] == [
        "66.7", "%", "33.3", "%", "16.7", "%"]
    assert next(x for x in lines if x.startswith("median days to sql")).split()[-3:] == ["0", "2", "4"]
    assert lines[lines.index("Diagnoses:") + 1] == f"- weak_control: {EXPECTED_DIAGNOSES[0][1]}"
    assert len(lines) - lines.index("Diagnoses:") - 1 == len(EXPECTED_DIAGNOSES)
    as_json = subprocess.run([sys.executable, "-m", "leadstream.cli", "balance", "--from", "2026-09-01", "--to",
                              "2026-11-10", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == report, as_json.stderr
    refused = subprocess.run([sys.executable, "-m", "leadstream.cli", "balance", "--from", "2026-11-10", "--to",
                              "2026-11-01"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--to: must not be before from" in refused.stderr

    # rebuilt from the raw rows by the migration's backfill: the same answer
    config = alembic_config(DATABASES["pipeline"].migrations, product.urls["pipeline"])
    await _in_thread(command.downgrade, config, "0006")
    await _in_thread(command.upgrade, config, "head")
    assert await _balance(product, **RANGE) == report


async def _in_thread(fn, *args) -> None:  # noqa: ANN001, ANN002
    import asyncio

    await asyncio.to_thread(fn, *args)


async def test_balance_as_csv(product):
    await _seed(product)
    response = await product.clients["pipeline"].get("/v1/analytics/balance", params=RANGE,
                                                     headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert 'filename="balance-by-motion.csv"' in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["motion"] for row in table] == ["inbound", "outbound", "blended"]
    assert list(table[0]) == list(EXPECTED_ROWS[0])
    assert (table[0]["share"], table[0]["effort_per_sql"], table[2]["effort"]) == ("0.6667", "1.5", "")
