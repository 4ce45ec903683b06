"""Pipeline API: ``GET /v1/analytics/sources`` and list-page latency over 100,000 contacts
(the sources answer reads the rollups seeded with them; ``bench.analytics`` measures it
under every model up to 1,000,000 contacts).

The pipeline store of this section's own is seeded directly with bulk SQL (SQLAlchemy Core,
executemany in chunks) — a year of contacts across motions, channels and campaigns with
their milestones, and an opportunity for each contact that reached ``sql`` (open, won or
lost) — then ``leadstream serve pipeline`` answers sequential requests (one client, so the
figure is the request's own latency, not queueing). A deep page is the page after the
50,000th contact (or the middle opportunity), with the cursor the API itself would issue
there (``services.pipeline.cursor.encode_cursor`` of that row's time and id).
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, insert, select

from bench.harness import Row, Stack
from pipeline_store import source_rollups
from pipeline_store.models import Account, Contact, Opportunity, PipelineApiKey, QualifyDaysRollup, SourceRollup
from services.pipeline.cursor import encode_cursor
from shared.api_keys import hash_key, new_key

CONTACTS = int(os.environ.get("BENCH_PIPELINE_CONTACTS", "100000"))
REQUESTS = 20
INBOUND = [("paid_search", 30), ("organic_search", 25), ("paid_social", 10), ("email", 10), ("referral", 8),
           ("webinar", 7), ("content", 5), ("direct", 5)]
OUTBOUND = [("cold_email", 60), ("cold_call", 25), ("social", 15)]
INDUSTRIES = ["software", "fintech", "healthcare", "retail", "manufacturing", None]


def _pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def seed(db: Path, contacts: int, seed_value: int = 7) -> dict[str, int]:
    """Bulk-insert accounts, ``contacts`` contacts and their opportunities; returns the counts."""
    rng = random.Random(seed_value)
    now = datetime.now(timezone.utc)
    domains = max(contacts // 10, 1)
    engine = create_engine(f"sqlite:///{db}")
    accounts = [{"domain": f"company{d}.example", "company": f"Company {d}", "industry": INDUSTRIES[d % 6],
                 "employees": 10 + (d * 37) % 5000, "country": "US" if d % 3 else "DE", "website": None,
                 "firmographics": {}, "created_at": now, "updated_at": now} for d in range(domains)]
    contact_rows: list[dict] = []
    opportunity_rows: list[dict] = []
    for c in range(contacts):
        motion = rng.choices(["inbound", "outbound", "blended"], weights=[55, 35, 10])[0]
        first_motion = "outbound" if motion == "outbound" or (motion == "blended" and c % 2) else "inbound"
        channel = _pick(rng, INBOUND if first_motion == "inbound" else OUTBOUND)
        campaign = f"{channel}-campaign-{rng.randrange(8)}"
        created = now - timedelta(days=rng.uniform(0, 365))
        last_at = created + timedelta(days=rng.uniform(0, 30))
        milestones = dict.fromkeys(("lead_at", "mql_at", "sql_at", "opportunity_at", "customer_at", "lost_at"))
        stage = "prospect" if first_motion == "outbound" else "lead"
        if first_motion == "inbound" or rng.random() < 0.3:
            milestones["lead_at"], stage = created, "lead"
            if rng.random() < 0.3:
                milestones["mql_at"], stage = created + timedelta(days=rng.uniform(0, 10)), "mql"
                if rng.random() < 0.4:
                    milestones["sql_at"], stage = milestones["mql_at"] + timedelta(days=rng.uniform(0, 20)), "sql"
        contact_id = str(uuid.UUID(int=rng.getrandbits(128)))
        domain = c % domains
        if milestones["sql_at"] is not None:
            opp_stage = "sql"
            amount = None
            if rng.random() < 0.6:
                milestones["opportunity_at"], opp_stage = milestones["sql_at"] + timedelta(days=2), "opportunity"
                amount = Decimal(rng.randrange(5, 200) * 1000)
                roll = rng.random()
                if roll < 0.3:
                    milestones["customer_at"], opp_stage = milestones["opportunity_at"] + timedelta(days=30), "customer"
                elif roll < 0.7:
                    milestones["lost_at"], opp_stage = milestones["opportunity_at"] + timedelta(days=20), "lost"
            stage = opp_stage
            opportunity_rows.append({
                "id": str(uuid.UUID(int=rng.getrandbits(128))), "contact_id": contact_id,
                "account_domain": f"company{domain}.example", "stage": opp_stage, "motion": motion,
                "owner": f"rep{c % 25}@ourco.example", "first_touch_motion": first_motion,
                "first_touch_channel": channel, "first_touch_campaign": campaign, "first_touch_form_id": None,
                "first_touch_sequence": None, "last_touch_motion": first_motion, "last_touch_channel": channel,
                "last_touch_campaign": campaign, "fit_score": rng.uniform(40, 100),
                "engagement_score": rng.uniform(50, 100),
                "grade": rng.choice("ABC"), "policy_version": "bench", "amount": amount, "currency": "USD",
                "qualified_event_id": str(uuid.UUID(int=rng.getrandbits(128))), "caused_by": [],
                "qualified_at": milestones["sql_at"], "accepted_at": milestones["opportunity_at"],
                "closed_at": milestones["customer_at"] or milestones["lost_at"], "close_reason": None,
                "updated_at": now,
            })
        contact_rows.append({
            "id": contact_id, "email": f"person{c}@company{domain}.example",
            "email_as_typed": f"Person{c}@company{domain}.example", "first_name": "Pat", "last_name": f"N{c}",
            "title": "VP Marketing", "phone": None, "linkedin_url": None, "owner": f"rep{c % 25}@ourco.example",
            "account_domain": f"company{domain}.example", "firmographics": {}, "stage": stage, "motion": motion,
            "email_invalid": False, "unsubscribed": False,
            "first_touch_motion": first_motion, "first_touch_channel": channel, "first_touch_campaign": campaign,
            "first_touch_form_id": f"form-{c % 6}" if first_motion == "inbound" else None,
            "first_touch_sequence": f"seq-{c % 5}" if first_motion == "outbound" else None,
            "first_touch_event_id": None, "first_touch_at": created,
            "last_touch_motion": first_motion, "last_touch_channel": channel, "last_touch_campaign": campaign,
            "last_touch_form_id": None, "last_touch_sequence": None, "last_touch_event_id": None,
            "last_touch_at": last_at, "fit_score": rng.uniform(0, 100), "fit_grade": rng.choice("ABCDEF"),
            "fit_reasons": [], "engagement_score": rng.uniform(0, 100), "engagement_reasons": [],
            "policy_version": "bench", "created_at": created, "updated_at": last_at, "last_activity_at": last_at,
            **milestones,
        })
    # the sources rollups qualification would have kept (no credits: first and last touch)
    total = source_rollups.Rollups()
    opportunities_of = {o["contact_id"]: [(o["stage"], o["amount"])] for o in opportunity_rows}
    for contact in contact_rows:
        total.add(source_rollups.facts_of(contact, opportunities_of.get(contact["id"], ())))
    sums, days = source_rollups.stored_rows(total)
    with engine.begin() as conn:
        for table, rows in ((Account, accounts), (Contact, contact_rows), (Opportunity, opportunity_rows),
                            (SourceRollup, sums), (QualifyDaysRollup, days)):
            for start in range(0, len(rows), 5000):
                conn.execute(insert(table.__table__), rows[start:start + 5000])
    engine.dispose()
    return {"accounts": len(accounts), "contacts": len(contact_rows), "opportunities": len(opportunity_rows)}


def create_key(db: Path) -> str:
    key = new_key()
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(insert(PipelineApiKey.__table__).values(
            id=str(uuid.uuid4()), name="bench", scopes="pipeline", key_hash=hash_key(key), prefix=key[:11],
            created_at=datetime.now(timezone.utc)))
    engine.dispose()
    return key


def deep_cursors(db: Path) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        c = conn.execute(select(Contact.created_at, Contact.id).order_by(Contact.created_at.desc(), Contact.id.desc())
                         .limit(1).offset(CONTACTS // 2)).one()
        total = conn.execute(select(func.count()).select_from(Opportunity)).scalar_one()
        n = conn.execute(select(Opportunity.qualified_at, Opportunity.id)
                         .order_by(Opportunity.qualified_at.desc(), Opportunity.id.desc())
                         .limit(1).offset(total // 2)).one()
    engine.dispose()
    return {"contacts": encode_cursor("contacts", "desc", c[0], c[1]),
            "opportunities": encode_cursor("opportunities", "desc", n[0], n[1])}


def timed(client: httpx.Client, path: str, params: dict | None = None, n: int = REQUESTS) -> list[float]:
    for _ in range(2):  # warm-up
        assert client.get(path, params=params).status_code == 200
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(path, params=params)
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text[:500]
    return sorted(out)


def run(stack: Stack) -> list[Row]:
    own = Stack()
    try:
        own.start_broker()
        db = own.tmp / "pipeline.db"
        started = time.perf_counter()
        counts = seed(db, CONTACTS)
        seeded_s = time.perf_counter() - started
        key = create_key(db)
        cursors = deep_cursors(db)
        pipeline = own.start("pipeline")
        rows = [Row("pipeline", f"seeded {counts['contacts']:,} contacts, {counts['opportunities']:,} opportunities "
                    "(bulk SQL)", seeded_s, "s")]
        with httpx.Client(base_url=pipeline.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            first = client.get("/v1/contacts", params={"limit": 50}).json()
            assert len(first["items"]) == 50 and first["next_cursor"]
            cases = [
                ("GET /v1/analytics/sources (by channel)", "/v1/analytics/sources", None),
                ("GET /v1/analytics/sources?group_by=campaign", "/v1/analytics/sources", {"group_by": "campaign"}),
                ("GET /v1/contacts?limit=50, first page", "/v1/contacts", {"limit": 50}),
                ("GET /v1/contacts?limit=50, page after 50,000", "/v1/contacts",
                 {"limit": 50, "cursor": cursors["contacts"]}),
                ("GET /v1/opportunities?limit=50, first page", "/v1/opportunities", {"limit": 50}),
                ("GET /v1/opportunities?limit=50, middle page", "/v1/opportunities",
                 {"limit": 50, "cursor": cursors["opportunities"]}),
                # a filter's index in the list's order (migration 0016): a page, not every match sorted
                ("GET /v1/contacts?motion=inbound&limit=50", "/v1/contacts", {"motion": "inbound", "limit": 50}),
                ("GET /v1/contacts?stage=lead&limit=50", "/v1/contacts", {"stage": "lead", "limit": 50}),
                ("GET /v1/opportunities?stage=customer&limit=50", "/v1/opportunities",
                 {"stage": "customer", "limit": 50}),
                ("GET /v1/opportunities?motion=inbound&limit=50", "/v1/opportunities",
                 {"motion": "inbound", "limit": 50}),
            ]
            for label, path, params in cases:
                lat = timed(client, path, params)
                rows.append(Row("pipeline", f"{label} p50", lat[len(lat) // 2] * 1000, "ms"))
                rows.append(Row("pipeline", f"{label} p95", lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000, "ms"))
        return rows
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
