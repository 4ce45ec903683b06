"""Motion balance: ``GET /v1/analytics/balance`` latency over 1,000,000 contacts, SQLite and PostgreSQL.

A pipeline store of this section's own (a SQLite file; a PostgreSQL database of its own when
PostgreSQL answers) is migrated, then seeded directly with bulk SQL: a year of contacts
across motions (blended among them), channels, fit grades and milestones, an opportunity
for each contact that reached ``sql`` (open, won or lost, with amounts), and the year's form
submissions and sales touches per day. The rollups are then built from those rows by the
migration's own backfill (``leadstream``'s Alembic down to the revision before the rollups
and up again; its time is a row), so the answer is read from rollups made exactly as an
upgraded store's are. ``leadstream serve pipeline`` answers sequential requests (one client:
the request's own latency): the whole year, and a 90-day range.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import httpx
from alembic import command
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.harness import Row, Stack
from leadstream.registry import DATABASES, upgrade
from pipeline_store.models import BalanceDay, BalanceEffort, Contact, Opportunity, PipelineApiKey
from shared.api_keys import hash_key, new_key
from shared.migrate import alembic_config
from tests.support import create_postgres_database, drop_postgres_database, postgres_available

CONTACTS = int(os.environ.get("BENCH_BALANCE_CONTACTS", "1000000"))
REQUESTS = 30
CHUNK = 10000
BEFORE_ROLLUPS = "0006"
INBOUND = ["paid_search", "organic_search", "paid_social", "email", "referral", "webinar", "content", "direct"]
OUTBOUND = ["cold_email", "cold_call", "social", "video"]


def _contacts(rng: random.Random, start: int, n: int, now: datetime) -> tuple[list[dict], list[dict]]:
    contacts, opportunities = [], []
    for c in range(start, start + n):
        motion = rng.choices(["inbound", "outbound", "blended"], weights=[55, 35, 10])[0]
        entry = "outbound" if motion == "outbound" or (motion == "blended" and c % 2) else "inbound"
        channel = rng.choice(INBOUND if entry == "inbound" else OUTBOUND)
        first = now - timedelta(days=rng.uniform(0, 365))
        sql_at = first + timedelta(days=rng.expovariate(1 / 9)) if rng.random() < 0.12 else None
        customer_at = opportunity_at = None
        stage, opp_stage, amount = ("lead" if entry == "inbound" else "prospect"), None, None
        if sql_at is not None:
            stage = opp_stage = "sql"
            if rng.random() < 0.6:
                opportunity_at, stage = sql_at + timedelta(days=2), "opportunity"
                opp_stage, amount = "opportunity", Decimal(rng.randrange(5, 200) * 1000)
                roll = rng.random()
                if roll < 0.3:
                    customer_at, stage = opportunity_at + timedelta(days=30), "customer"
                    opp_stage = "customer"
                elif roll < 0.6:
                    stage = opp_stage = "lost"
        contact_id = str(uuid.UUID(int=rng.getrandbits(128)))
        contacts.append({
            "id": contact_id, "email": f"person{c}@company{c % 50000}.example",
            "email_as_typed": f"person{c}@company{c % 50000}.example", "firmographics": {}, "stage": stage,
            "motion": motion, "email_invalid": False, "unsubscribed": False, "first_touch_motion": entry,
            "first_touch_channel": channel, "first_touch_at": first, "fit_score": 50.0,
            "fit_grade": rng.choice("AABBCCDDEF"), "fit_reasons": [], "engagement_score": 0.0,
            "engagement_reasons": [], "created_at": first, "updated_at": first, "sql_at": sql_at,
            "opportunity_at": opportunity_at, "customer_at": customer_at,
        })
        if opp_stage is not None:
            opportunities.append({
                "id": str(uuid.UUID(int=rng.getrandbits(128))), "contact_id": contact_id, "stage": opp_stage,
                "motion": motion, "first_touch_motion": entry, "first_touch_channel": channel, "fit_score": 50.0,
                "engagement_score": 60.0, "policy_version": "bench", "amount": amount, "currency": "USD",
                "amount_estimated": False, "qualified_event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "caused_by": [], "qualified_at": sql_at, "updated_at": sql_at,
            })
    return contacts, opportunities


async def seed_rollups(url: str, contacts: int, now: datetime) -> dict[str, float]:
    """``BENCH_BALANCE_ROLLUPS_ONLY=1``: the same contacts' contributions (``rollups.contribution``)
    written to the rollups in one upsert, without storing the contacts (minutes faster; the
    answer reads only the rollups)."""
    from types import SimpleNamespace

    from pipeline_store import rollups

    rng = random.Random(7)
    deltas = rollups.Deltas()
    started = time.perf_counter()
    opportunities = 0
    for start in range(0, contacts, CHUNK):
        rows, opps = _contacts(rng, start, min(CHUNK, contacts - start), now)
        amounts = {o["contact_id"]: (o["stage"], o["amount"]) for o in opps}
        opportunities += len(opps)
        for row in rows:
            deltas.change(None, rollups.contribution(SimpleNamespace(**row), *amounts.get(row["id"], (None, None))))
    for d in range(366):
        day = (now - timedelta(days=d)).date()
        deltas.effort[(day, "inbound")] = [rng.randrange(800, 1200), 0]
        deltas.effort[(day, "outbound")] = [0, rng.randrange(5000, 9000)]
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        session = SimpleNamespace(connection=lambda: _ready(conn), execute=conn.execute)
        await rollups.write(session, deltas)
        rollup_rows = (await conn.execute(select(func.count()).select_from(BalanceDay))).scalar_one()
    await engine.dispose()
    return {"seeded_s": time.perf_counter() - started, "backfill_s": 0.0, "opportunities": opportunities,
            "rollup_rows": rollup_rows}


async def _ready(value):  # noqa: ANN001, ANN202
    return value


async def seed(url: str, contacts: int, now: datetime) -> dict[str, float]:
    """Bulk-insert the contacts, their opportunities and a year of effort; build the rollups."""
    if os.environ.get("BENCH_BALANCE_ROLLUPS_ONLY"):
        return await seed_rollups(url, contacts, now)
    rng = random.Random(7)
    engine = create_async_engine(url)
    started = time.perf_counter()
    opportunities = 0
    async with engine.begin() as conn:
        for start in range(0, contacts, CHUNK):
            rows, opps = _contacts(rng, start, min(CHUNK, contacts - start), now)
            await conn.execute(insert(Contact.__table__), rows)
            if opps:
                await conn.execute(insert(Opportunity.__table__), opps)
            opportunities += len(opps)
    seeded = time.perf_counter() - started
    await engine.dispose()
    # the rollups, as the migration builds them from the rows of a store it upgrades
    config = alembic_config(DATABASES["pipeline"].migrations, url)
    await asyncio.to_thread(command.downgrade, config, BEFORE_ROLLUPS)
    started = time.perf_counter()
    await asyncio.to_thread(command.upgrade, config, "head")
    backfill = time.perf_counter() - started
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        # a year of effort per day: forms and touches (the touches table itself is not seeded)
        await conn.execute(insert(BalanceEffort.__table__), [
            {"day": (now - timedelta(days=d)).date(), "motion": m, "forms": rng.randrange(800, 1200) if m == "inbound"
             else 0, "touches": rng.randrange(5000, 9000) if m == "outbound" else 0}
            for d in range(366) for m in ("inbound", "outbound")])
        rollup_rows = (await conn.execute(select(func.count()).select_from(BalanceDay))).scalar_one()
    await engine.dispose()
    return {"seeded_s": seeded, "backfill_s": backfill, "opportunities": opportunities, "rollup_rows": rollup_rows}


async def create_key(url: str) -> str:
    key = new_key()
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(insert(PipelineApiKey.__table__).values(
            id=str(uuid.uuid4()), name="bench", scopes="pipeline", key_hash=hash_key(key), prefix=key[:11],
            created_at=datetime.now(timezone.utc)))
    await engine.dispose()
    return key


def timed(client: httpx.Client, params: dict, n: int = REQUESTS) -> list[float]:
    for _ in range(3):  # warm-up
        assert client.get("/v1/analytics/balance", params=params).status_code == 200
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get("/v1/analytics/balance", params=params)
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text[:500]
    return sorted(out)


def _measure(backend: str, url: str, stack: Stack) -> list[Row]:
    now = datetime.now(timezone.utc)
    upgrade("pipeline", url)
    figures = asyncio.run(seed(url, CONTACTS, now))
    key = asyncio.run(create_key(url))
    rows = [
        Row("balance", f"{backend}: seeded {CONTACTS:,} contacts, {figures['opportunities']:,} opportunities "
            "(bulk SQL)", figures["seeded_s"], "s"),
        Row("balance", f"{backend}: rollups built by the migration's backfill ({figures['rollup_rows']:,} day rows)",
            figures["backfill_s"], "s"),
    ] if not os.environ.get("BENCH_BALANCE_ROLLUPS_ONLY") else [
        Row("balance", f"{backend}: rollups of {CONTACTS:,} contacts' contributions ({figures['rollup_rows']:,} day "
            "rows)", figures["seeded_s"], "s")]
    pipeline = stack.start("pipeline", LEADSTREAM_PIPELINE_DATABASE_URL=url)
    try:
        with httpx.Client(base_url=pipeline.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            whole = client.get("/v1/analytics/balance").json()
            assert sum(r["entrants"] for r in whole["rows"][:2]) == CONTACTS, whole["totals"]
            today = date.today()
            for label, params in (("the whole year", {}),
                                  ("a 90-day range", {"from": (today - timedelta(days=120)).isoformat(),
                                                      "to": (today - timedelta(days=30)).isoformat()})):
                lat = timed(client, params)
                rows.append(Row("balance", f"{backend}: GET /v1/analytics/balance, {label}, p50",
                                lat[len(lat) // 2] * 1000, "ms"))
                rows.append(Row("balance", f"{backend}: GET /v1/analytics/balance, {label}, p95",
                                lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000, "ms", target="≤ 100 ms"))
    finally:
        pipeline.stop()
        stack.services.pop("pipeline", None)
    return rows


def run(stack: Stack) -> list[Row]:
    own = Stack()
    try:
        own.start_broker()
        rows = _measure("SQLite", f"sqlite+aiosqlite:///{own.tmp / 'balance.db'}", own)
        if postgres_available():
            url = asyncio.run(create_postgres_database())
            try:
                rows += _measure("PostgreSQL", url, own)
            finally:
                asyncio.run(drop_postgres_database(url))
        return rows
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
