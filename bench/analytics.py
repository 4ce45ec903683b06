"""Analytics: ``GET /v1/analytics/sources`` latency from the rollups, over 100,000 and
1,000,000 contacts (30% qualified: 30,000 and 300,000 opportunities), on SQLite and
PostgreSQL, for every attribution model, a few ranges, every grouping and one motion filter.

Each store of its own is migrated, then seeded directly (not through Kafka): a year of
contacts across motions, channels, campaigns, forms and sequences, each with one to four
touches of its motion(s) (blended ones with both); qualified ones get an opportunity (open,
won with an amount, lost) and its credits under every model (the real
``attribution_models``, over touches between the first touch and qualification), and the
rollups are what ``pipeline_store.source_rollups`` computes from those rows (as ``rebuild`` would);
credit rows (one per touch) are stored for the contacts of the two days a date-time range reads from the
raw rows (the only ones an answer reads; the rollups hold every contact's).
Rows go in with executemany (SQLite) or COPY (PostgreSQL), a chunk at a time; a PostgreSQL
store is then ``VACUUM ANALYZE``d, as autovacuum would (the test server runs without it), and
``BENCH_ANALYTICS_KEEP=DIR`` keeps the seeded stores there for the next run. Then
``leadstream serve pipeline`` answers one client's sequential requests (latency, not
queueing), then the signed-in dashboard page, which reads eight answers, the weekly series
and the balance. The question the section answers: does the answer time grow with history?
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import orjson

from bench.harness import Row, Stack
from leadstream.registry import aupgrade
from pipeline_store import source_rollups
from pipeline_store.models import (
    AttributionCredit, Contact, Opportunity, PipelineApiKey, QualifyDaysRollup, SourceRollup,
)
from services.qualification.domain.attribution import Touch
from services.qualification.credits import credit_rows
from services.qualification.domain.attribution_models import MODELS, attribute_all
from shared.api_keys import hash_key, new_key
from tests.support import create_postgres_database, drop_postgres_database, postgres_available, postgres_connect

SIZES = [int(n) for n in os.environ.get("BENCH_ANALYTICS_CONTACTS", "100000,1000000").split(",")]
QUALIFIED = 0.3
# per case: a p95 of 15 requests was their slowest one, so one hiccup of the machine decided
# a case; of 40, it is the second slowest
REQUESTS = int(os.environ.get("BENCH_ANALYTICS_REQUESTS", "40"))
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
INBOUND = [("paid_search", 30), ("organic_search", 25), ("paid_social", 10), ("email", 10), ("referral", 8),
           ("webinar", 7), ("content", 5), ("direct", 5)]
OUTBOUND = [("cold_email", 60), ("cold_call", 25), ("social", 15)]
CHUNK = 20_000
# a directory where seeded stores are kept (a SQLite file and the name of a PostgreSQL database per
# size) and reused by the next run: seeding 1,000,000 contacts takes far longer than measuring them
KEEP = os.environ.get("BENCH_ANALYTICS_KEEP")


def _pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def _touch(rng: random.Random, motion: str, at: datetime, n: int) -> Touch:
    if motion == "inbound":
        channel = _pick(rng, INBOUND)
        campaign = f"{channel}-campaign-{rng.randrange(6)}"
        return Touch("inbound", channel, at, campaign, form_id=f"{campaign}-form", form_type="webinar",
                     event_id=f"e{n:012d}")
    channel = _pick(rng, OUTBOUND)
    sequence = f"{channel}-sequence-{rng.randrange(6)}"
    return Touch("outbound", channel, at, sequence, sequence=sequence, outcome="replied", event_id=f"e{n:012d}")


def histories(contacts: int, seed_value: int = 11) -> Iterator[tuple[dict, dict | None, dict[str, tuple]]]:
    """Each contact's row, its opportunity's row (or ``None``) and its credits per model."""
    rng = random.Random(seed_value)
    n = 0
    for c in range(contacts):
        motion = rng.choices(["inbound", "outbound", "blended"], weights=[55, 35, 10])[0]
        first_at = NOW - timedelta(days=rng.uniform(0, 365))
        qualified = rng.random() < QUALIFIED
        sql_at = first_at + timedelta(days=rng.expovariate(1 / 6)) if qualified else None
        last_at = sql_at or first_at + timedelta(days=rng.uniform(0, 20))
        motions = ["inbound", "outbound"] if motion == "blended" else [motion]
        touches = []
        for i in range(rng.randint(1, 4)):
            at = first_at if i == 0 else first_at + (last_at - first_at) * rng.random()
            n += 1
            touches.append(_touch(rng, motions[i % len(motions)], at, n))
        touches.sort(key=lambda t: (t.occurred_at, t.event_id))
        first, last = touches[0], touches[-1]
        contact_id = str(uuid.UUID(int=rng.getrandbits(128)))
        milestones = dict.fromkeys(("lead_at", "mql_at", "sql_at", "opportunity_at", "customer_at", "lost_at"))
        stage = "prospect" if motion == "outbound" else "lead"
        if motion != "outbound" or rng.random() < 0.5 or qualified:
            milestones["lead_at"], stage = first_at, "lead"
            if qualified or rng.random() < 0.3:
                milestones["mql_at"], stage = sql_at or first_at + timedelta(days=1), "mql"
        opportunity, credits = None, {}
        if qualified:
            milestones["sql_at"], stage = sql_at, "sql"
            opp_stage, amount = "sql", None
            if rng.random() < 0.6:
                milestones["opportunity_at"], opp_stage = sql_at + timedelta(days=2), "opportunity"
                amount = Decimal(rng.randrange(5, 200) * 1000)
                roll = rng.random()
                if roll < 0.3:
                    milestones["customer_at"], opp_stage = sql_at + timedelta(days=30), "customer"
                elif roll < 0.6:
                    milestones["lost_at"], opp_stage = sql_at + timedelta(days=20), "lost"
            stage = opp_stage
            opportunity_id = str(uuid.UUID(int=rng.getrandbits(128)))
            opportunity = {
                "id": opportunity_id, "contact_id": contact_id, "account_domain": None, "stage": opp_stage,
                "motion": motion, "owner": None, "first_touch_motion": first.motion,
                "first_touch_channel": first.channel, "first_touch_campaign": first.campaign,
                "first_touch_form_id": first.form_id, "first_touch_sequence": first.sequence,
                "last_touch_motion": last.motion, "last_touch_channel": last.channel,
                "last_touch_campaign": last.campaign, "fit_score": 70.0, "engagement_score": 80.0, "grade": "B",
                "policy_version": "bench", "amount": amount, "amount_estimated": False, "currency": "USD",
                "qualified_event_id": str(uuid.UUID(int=rng.getrandbits(128))), "caused_by": [],
                "qualified_at": sql_at, "accepted_at": milestones["opportunity_at"],
                "closed_at": milestones["customer_at"] or milestones["lost_at"], "close_reason": None,
                "updated_at": sql_at,
            }
            mql = touches[len(touches) // 2].event_id
            credits = attribute_all(touches, sql_at, mql_event_id=mql)
        contact = {
            "id": contact_id, "email": f"person{c}@company{c % 50_000}.example",
            "email_as_typed": f"person{c}@company{c % 50_000}.example", "stage": stage, "motion": motion,
            "email_invalid": False, "unsubscribed": False, "firmographics": {},
            **{f"first_touch_{k}": getattr(first, k) for k in ("motion", "channel", "campaign", "form_id",
                                                               "sequence", "event_id")},
            "first_touch_at": first.occurred_at,
            **{f"last_touch_{k}": getattr(last, k) for k in ("motion", "channel", "campaign", "form_id",
                                                             "sequence", "event_id")},
            "last_touch_at": last.occurred_at, "fit_score": 50.0, "fit_grade": "C", "fit_reasons": [],
            "engagement_score": 40.0, "engagement_reasons": [], "policy_version": "bench",
            "created_at": first_at, "updated_at": last_at, "last_activity_at": last_at, **milestones,
        }
        yield contact, opportunity, credits


# ---- writing rows: executemany on SQLite, COPY on PostgreSQL --------------------------------



def _text_time(value: datetime | None) -> str | None:
    # SQLAlchemy's form of a DateTime on SQLite: naive UTC text
    return None if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class Writer:
    """Rows of one table at a time: executemany on SQLite (times as SQLAlchemy writes them,
    JSON as text), COPY on PostgreSQL. A table's columns are those of its first row."""

    def __init__(self, target: str) -> None:
        self.target = target  # a SQLite path or a PostgreSQL URL

    async def __aenter__(self) -> Writer:
        if self.target.startswith("postgresql"):
            self.pg, self.sqlite = await postgres_connect(self.target), None
        else:
            self.pg, self.sqlite = None, sqlite3.connect(self.target)
            self.sqlite.execute("PRAGMA synchronous=OFF")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.pg is not None:
            await self.pg.close()
        else:
            self.sqlite.commit()
            self.sqlite.close()

    async def write(self, table: Any, rows: list[dict]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        name = table.__table__.name
        kinds = {c.key: type(c.type).__name__ for c in table.__table__.columns}
        if self.pg is not None:
            json = [i for i, c in enumerate(columns) if kinds[c] == "JSON"]
            records = [tuple(row.values()) for row in rows]
            if json:
                records = [tuple(orjson.dumps(v).decode() if i in json else v for i, v in enumerate(r))
                           for r in records]
            await self.pg.copy_records_to_table(name, records=records, columns=columns)
            return
        times = [i for i, c in enumerate(columns) if kinds[c] == "DateTime"]
        json = [i for i, c in enumerate(columns) if kinds[c] == "JSON"]
        numeric = [i for i, c in enumerate(columns) if kinds[c] == "Numeric"]
        dates = [i for i, c in enumerate(columns) if kinds[c] == "Date"]
        records = []
        for row in rows:
            values = list(row.values())
            for i in times:
                values[i] = _text_time(values[i])
            for i in json:
                values[i] = orjson.dumps(values[i]).decode()
            for i in numeric:
                values[i] = None if values[i] is None else str(values[i])
            for i in dates:
                values[i] = values[i].isoformat()
            records.append(values)
        marks = ",".join("?" * len(columns))
        self.sqlite.executemany(f"INSERT INTO {name} ({','.join(columns)}) VALUES ({marks})", records)


async def seed(target: str, contacts: int) -> dict[str, int]:
    """Bulk-write ``contacts`` histories and their rollups; the counts written."""
    total = source_rollups.Rollups()
    counts = {"contacts": 0, "opportunities": 0, "credits": 0}
    async with Writer(target) as writer:
        batch: dict[Any, list[dict]] = {Contact: [], Opportunity: [], AttributionCredit: []}

        async def flush() -> None:
            for table, rows in batch.items():
                await writer.write(table, rows)
                rows.clear()

        for contact, opportunity, credits in histories(contacts):
            batch[Contact].append(contact)
            counts["contacts"] += 1
            opportunities: list[tuple] = []
            by_model: dict[str, list] = {}
            if opportunity is not None:
                batch[Opportunity].append(opportunity)
                counts["opportunities"] += 1
                opportunities.append((opportunity["stage"], opportunity["amount"], False))
                for model, chain in credits.items():
                    by_model[model] = [(tuple(source_rollups.key_text(getattr(c.touch, k))
                                              for k in source_rollups.TOUCH_KEY), c.credit) for c in chain]
                if contact["first_touch_at"].date() in PARTIAL_DAYS:  # the only credits analytics read
                    touch_rows = credit_rows(contact["id"], opportunity["id"], credits)
                    batch[AttributionCredit] += touch_rows
                    counts["credits"] += len(touch_rows)
            total.add(source_rollups.facts_of(contact, opportunities, by_model))
            if len(batch[Contact]) >= CHUNK:
                await flush()
        await flush()
        sums, days = source_rollups.stored_rows(total)
        for start in range(0, len(sums), CHUNK):
            await writer.write(SourceRollup, sums[start:start + CHUNK])
        for start in range(0, len(days), CHUNK):
            await writer.write(QualifyDaysRollup, days[start:start + CHUNK])
        key = new_key()
        await writer.write(PipelineApiKey, [{"id": str(uuid.uuid4()), "name": "bench", "scopes": "pipeline",
                                             "key_hash": hash_key(key), "prefix": key[:11], "created_at": NOW}])
    counts["rollup_rows"] = len(sums)
    counts["day_rows"] = len(days)
    counts["key"] = key  # type: ignore[assignment]
    return counts


# ---- measuring -----------------------------------------------------------------------------

PARTIAL_DAYS = (date(2026, 4, 1), date(2026, 6, 30))  # the date-time range's ends, read from contacts
RANGES = {
    "all time": {},
    "last 30 days": {"from": (NOW - timedelta(days=30)).date().isoformat(), "to": NOW.date().isoformat()},
    "a quarter, date-times": {"from": "2026-04-01T09:30:00Z", "to": "2026-06-30T17:45:00Z"},
}
# every grouping, and one answer for one motion (its warnings leave the motion out)
GROUPINGS = {"channel": {"group_by": "channel"}, "campaign": {"group_by": "campaign"},
             "form": {"group_by": "form"}, "sequence": {"group_by": "sequence"}, "motion": {"group_by": "motion"},
             "channel, inbound only": {"group_by": "channel", "motion": "inbound"}}


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def measure(url: str, key: str) -> dict[tuple[str, str, str], list[float]]:
    out = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for model in MODELS:
            for range_name, bounds in RANGES.items():
                for group_by, grouping in GROUPINGS.items():
                    params = {"attribution": model, **grouping, **bounds}
                    for _ in range(2):  # warm-up
                        assert client.get("/v1/analytics/sources", params=params).status_code == 200
                    times = []
                    for _ in range(REQUESTS):
                        started = time.perf_counter()
                        answer = client.get("/v1/analytics/sources", params=params)
                        times.append(time.perf_counter() - started)
                        assert answer.status_code == 200, answer.text[:300]
                    out[(model, range_name, group_by)] = times
    return out


DASHBOARD_CASES = {"all time": {}, "last 30 days": RANGES["last 30 days"],
                   "all time, w_shaped": {"attribution": "w_shaped"}}


def measure_dashboard(url: str, key: str) -> dict[str, list[float]]:
    """``GET /dashboard`` signed in with ``key``: three answers per grouping, the top channel
    under every model, the weekly series, the latest opportunities and the balance."""
    out = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        signed = client.post("/dashboard/sign-in", data={"api_key": key})
        assert signed.status_code == 303, signed.text[:300]
        for name, params in DASHBOARD_CASES.items():
            assert client.get("/dashboard", params=params).status_code == 200  # warm-up
            times = []
            for _ in range(max(3, REQUESTS // 3)):
                started = time.perf_counter()
                page = client.get("/dashboard", params=params)
                times.append(time.perf_counter() - started)
                assert page.status_code == 200, page.text[:300]
            out[name] = times
    return out


async def _analyze(url: str) -> None:
    """What autovacuum does to freshly copied tables (the test server runs without it): the
    planner's statistics and the visibility map."""
    conn = await postgres_connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def store(backend: str, contacts: int, tmp: Path) -> tuple[dict, float, dict[str, str], str | None]:
    """A seeded store: its counts, the seconds seeding took, the pipeline service's environment
    and the PostgreSQL URL to drop afterwards (``None`` when kept or SQLite)."""
    kept = Path(KEEP) / f"{backend}-{contacts}" if KEEP else None
    if kept is not None and (kept / "seeded.json").exists():
        counts = orjson.loads((kept / "seeded.json").read_bytes())
        target, seeded_s = counts.pop("target"), counts.pop("seconds")
        asyncio.run(aupgrade("pipeline", target))  # migrations added since it was seeded
        if backend == "postgres":
            asyncio.run(_analyze(target))
        return counts, seeded_s, {"LEADSTREAM_PIPELINE_DATABASE_URL": target}, None
    if backend == "postgres":
        target = asyncio.run(create_postgres_database())
    else:
        directory = kept or tmp
        directory.mkdir(parents=True, exist_ok=True)
        target = f"sqlite+aiosqlite:///{directory / 'pipeline.db'}"
    asyncio.run(aupgrade("pipeline", target))
    started = time.perf_counter()
    counts = asyncio.run(seed(target.removeprefix("sqlite+aiosqlite:///"), contacts))
    if backend == "postgres":
        asyncio.run(_analyze(target))
    seeded_s = time.perf_counter() - started
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "seeded.json").write_bytes(orjson.dumps({**counts, "target": target, "seconds": seeded_s}))
    drop = target if backend == "postgres" and kept is None else None
    return counts, seeded_s, {"LEADSTREAM_PIPELINE_DATABASE_URL": target}, drop


def _run_one(backend: str, contacts: int) -> list[Row]:
    own = Stack()
    url = None
    try:
        own.start_broker()
        counts, seeded_s, env, url = store(backend, contacts, own.tmp)
        pipeline = own.start("pipeline", **env, LEADSTREAM_DASHBOARD_SECURE_COOKIE="false")  # plain http here
        label = f"{backend}, {contacts:,} contacts"
        rows = [Row("analytics", f"{label}: seeded {counts['opportunities']:,} opportunities, {counts['credits']:,} "
                    f"credits, {counts['rollup_rows']:,} + {counts['day_rows']:,} rollup rows", seeded_s, "s")]
        timings = measure(pipeline.url, counts["key"])
        everything = [t for ts in timings.values() for t in ts]
        rows.append(Row("analytics", f"{label}: GET /v1/analytics/sources p95, all {len(timings)} cases",
                        _p(everything, 0.95), "ms", target="≤ 100"))
        worst = max(timings, key=lambda k: _p(timings[k], 0.95))
        rows.append(Row("analytics", f"{label}: worst case p95 ({', '.join(worst)})", _p(timings[worst], 0.95), "ms",
                        target="≤ 100"))
        for group_by in GROUPINGS:
            cases = [t for (m, r, g), ts in timings.items() if g == group_by for t in ts]
            rows.append(Row("analytics", f"{label}: p95 by {group_by}", _p(cases, 0.95), "ms"))
        for range_name in RANGES:
            cases = [t for (m, r, g), ts in timings.items() if r == range_name for t in ts]
            rows.append(Row("analytics", f"{label}: p95 {range_name}", _p(cases, 0.95), "ms"))
        for model in MODELS:
            cases = [t for (m, r, g), ts in timings.items() if m == model for t in ts]
            rows.append(Row("analytics", f"{label}: p95 {model}", _p(cases, 0.95), "ms"))
        for name, times in measure_dashboard(pipeline.url, counts["key"]).items():
            rows.append(Row("analytics", f"{label}: GET /dashboard p95, {name}", _p(times, 0.95), "ms"))
        return rows
    finally:
        own.stop()
        shutil.rmtree(own.tmp, ignore_errors=True)
        if url is not None:
            asyncio.run(drop_postgres_database(url))


def run(stack: Stack) -> list[Row]:
    rows: list[Row] = []
    backends = ["sqlite"] + (["postgres"] if postgres_available() else [])
    for backend in backends:
        for contacts in SIZES:
            rows += _run_one(backend, contacts)
    return rows
