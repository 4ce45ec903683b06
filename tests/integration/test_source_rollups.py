"""The sources rollups against a straightforward computation over the raw rows, on random
histories (hypothesis), on SQLite and PostgreSQL.

A history is applied as the services apply it: qualification's use cases in batches of
facts (snapshot units of work, arrival order shuffled so that earlier touches arrive late),
then sales' transitions with amounts through the pipeline's. Every sources answer (each
model, grouping, a few ranges and motion filters) read from the rollups must equal the
one computed here from contacts, opportunities and credits alone; every opportunity's
credits sum to 1 under every model; and a rebuild from the raw rows changes nothing.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from pipeline_store import models as store
from pipeline_store import source_rollups
from services.pipeline import service as pipeline_service
from services.pipeline.analytics import Thresholds
from services.pipeline.schemas import SourcesQuery, TransitionIn
from services.qualification import service as qualification
from services.qualification.domain import evaluation
from services.qualification.domain.attribution import Touch
from shared.amounts import ExpectedAmounts
from shared.auth import Principal
from shared.events import (
    LEAD_CAPTURED, PROSPECT_ADDED, TOUCH_RECORDED, LeadCaptured, ProspectAdded, TouchRecorded, make_event,
)
from shared.times import as_utc
from tests.support import ROOT

pytestmark = pytest.mark.timeout(600)

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
QUALIFIER = qualification.load_qualifier(ROOT / "deploy" / "config" / "scoring.yaml")
EXPECTED = ExpectedAmounts(inbound=Decimal("12000"), blended=Decimal("30000.50"))  # none for outbound
SALES = Principal(key_id="k", name="sales", scopes=frozenset({"pipeline"}))
BUSINESS = dict(company="Acme", title="VP Sales", employees=250, industry="Software", country="US")
UTMS = [None, {"source": "google", "medium": "cpc", "campaign": "brand"},
        {"source": "linkedin", "medium": "paid_social", "campaign": "abm"}, {"source": "newsletter",
                                                                              "medium": "email"}]
FORMS = ["demo_request", "webinar", "content_download", "newsletter", "pricing"]
OUTCOMES = ["sent", "opened", "clicked", "replied", "positive_reply", "meeting_booked", "not_interested"]
CHANNELS = ["cold_email", "cold_call", "social"]
TABLES = (store.AttributionCredit, store.SourceRollup, store.QualifyDaysRollup, store.StageChange, store.Score,
          store.Opportunity, store.Touch, store.PipelineOutbox, store.Contact, store.Account)

fact = st.one_of(
    st.tuples(st.just("lead"), st.sampled_from(FORMS), st.sampled_from(range(len(UTMS))), st.booleans()),
    st.tuples(st.just("prospect"), st.none(), st.none(), st.booleans()),
    st.tuples(st.just("touch"), st.sampled_from(OUTCOMES), st.sampled_from(CHANNELS), st.sampled_from(["s1", "s2"])),
)
# minute of occurrence from T0: mostly March and April 2026, so ranges read month, day and hour
# rows; some within a few hours of the date-time bounds (partial hours, read from the raw rows);
# some across 2025-2027, so ranges read year rows and ragged years
DAY = 24 * 60
minute = st.one_of(st.integers(0, 60 * DAY), st.integers(DAY + 13 * 60 - 10, DAY + 14 * 60 + 10),
                   st.integers(2 * DAY + 4 * 60, 2 * DAY + 8 * 60), st.integers(-430 * DAY, 700 * DAY))
person = st.lists(st.tuples(fact, minute), min_size=1, max_size=5)
sale = st.tuples(st.sampled_from(["accept", "win", "lose", "none"]), st.sampled_from([None, 1000, 2500.5, 40000]))
history = st.tuples(st.lists(st.tuples(person, sale), min_size=1, max_size=8),
                    st.randoms(use_true_random=False), st.integers(1, 6))


def _event(email: str, kind: tuple, minute: int, n: int):  # noqa: ANN202
    at = T0 + timedelta(minutes=minute)
    name, a, b, c = kind
    if name == "lead":
        data = LeadCaptured(email=email, form_type=a, utm=UTMS[b] or {}, form_id=f"f-{a}", occurred_at=at,
                            **(BUSINESS if c else {}))
        return make_event(LEAD_CAPTURED, data, source="/t", subject=email, time=at), data
    if name == "prospect":
        data = ProspectAdded(email=email, list="q1", occurred_at=at, **(BUSINESS if c else {}))
        return make_event(PROSPECT_ADDED, data, source="/t", subject=email, time=at), data
    data = TouchRecorded(email=email, outcome=a, channel=b, sequence=c, occurred_at=at, external_id=f"x{n}")
    return make_event(TOUCH_RECORDED, data, source="/t", subject=email, time=at), data


_APPLY = {LEAD_CAPTURED: qualification.record_lead, PROSPECT_ADDED: qualification.record_prospect,
          TOUCH_RECORDED: qualification.record_touch}


async def _apply(db, people, rng, batch: int) -> None:  # noqa: ANN001
    events = [_event(f"p{i}@co{i % 3}.com", kind, minute, n)
              for i, (facts, _) in enumerate(people) for n, (kind, minute) in enumerate(facts)]
    rng.shuffle(events)  # arrival order is not occurrence order
    for start in range(0, len(events), batch):
        async with db.snapshot_unit_of_work() as session:
            for event, data in events[start:start + batch]:
                await _APPLY[event.type](session, QUALIFIER, event, data)
    async with db.reader() as session:
        opportunities = {o.contact_id: o.id for o in (await session.execute(select(store.Opportunity))).scalars()}
        contacts = {c.email: c.id for c in (await session.execute(select(store.Contact))).scalars()}
    for i, (_, (move, amount)) in enumerate(people):
        opportunity = opportunities.get(contacts.get(f"p{i}@co{i % 3}.com"))
        if opportunity is None or move == "none":
            continue
        steps = {"accept": [("opportunity", amount)], "win": [("opportunity", None), ("customer", amount or 500)],
                 "lose": [("lost", None)]}[move]
        for to, value in steps:
            body = TransitionIn(to=to, amount=None if value is None else Decimal(str(value)),
                                reason="r" if to == "lost" else None)
            async with db.unit_of_work() as session:
                await pipeline_service.transition(session, opportunity, body, SALES, expected_amounts=EXPECTED)


# ---- the reference: the sources answer computed from the raw rows ------------------------------


async def _check_credits_follow_the_touches(db, policies=QUALIFIER.policies) -> None:  # noqa: ANN001
    """Every opportunity's stored credits are each model's over its contact's touches as
    stored now (those that count, within the lookback, by occurrence time), however late
    each touch arrived: the reference below may then read the stored credits."""
    async with db.reader() as session:
        contacts = {c.id: c for c in (await session.execute(select(store.Contact))).scalars()}
        touches = defaultdict(list)
        for t in (await session.execute(select(store.Touch))).scalars():
            touches[t.contact_id].append(t)
        stored = defaultdict(dict)
        for row in (await session.execute(select(store.AttributionCredit))).scalars():
            for model, column in source_rollups.CREDIT_COLUMNS.items():
                if getattr(row, column) is not None:
                    stored[(row.opportunity_id, model)][row.event_id] = getattr(row, column)
        opportunities = (await session.execute(select(store.Opportunity))).scalars().all()
    for o in opportunities:
        contact = contacts[o.contact_id]
        facts = [Touch(t.motion, t.channel or "other", as_utc(t.occurred_at), t.campaign, t.form_id, t.form_type,
                       t.sequence, t.event_id, t.outcome) for t in touches[contact.id]]
        real = {t.event_id for t in touches[contact.id] if t.channel is not None}
        want = evaluation.credits(policies, facts, real, as_utc(contact.sql_at), contact.mql_event_id)
        for model in source_rollups.MODELS:
            expected = {c.touch.event_id: c.credit for c in want.get(model, ())}
            got = stored.get((o.id, model), {})
            assert got.keys() == expected.keys(), (o.id, model, got, expected)
            assert all(math.isclose(got[k], v, abs_tol=1e-9) for k, v in expected.items()), (o.id, model, got)


def _utc(value):  # noqa: ANN001, ANN202
    return as_utc(value)


def _in_range(at: datetime, start, end) -> bool:  # noqa: ANN001
    if start is not None and at < (start if isinstance(start, datetime) else
                                   datetime.combine(start, time(0), tzinfo=timezone.utc)):
        return False
    if end is not None:
        if isinstance(end, datetime):
            return at <= end
        return at < datetime.combine(end + timedelta(days=1), time(0), tzinfo=timezone.utc)
    return True


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The lower and upper weighted medians."""
    pairs = sorted(p for p in pairs if p[1] > 1e-12)
    total = sum(w for _, w in pairs)
    if total <= 1e-12:
        return None
    seen, lower = 0.0, None
    for days, weight in pairs:
        seen += weight
        if lower is None and seen >= total / 2 - 1e-9:
            lower = days
        if seen > total / 2 + 1e-9:
            return lower, days
    return lower, lower


def _median_close(got: float | None, medians: tuple[float, float] | None) -> bool:
    """The rollups read each histogram bucket as its mean: the answer lies within the buckets
    of the lower and upper medians (exactly the median when each is alone in its bucket)."""
    if got is None or medians is None:
        return got is None and medians is None
    edges = (float("-inf"), *source_rollups.BUCKET_EDGES, float("inf"))
    low, high = edges[source_rollups.bucket_of(medians[0])], edges[source_rollups.bucket_of(medians[1]) + 1]
    return low - 0.01 <= got <= high + 0.01


async def raw_rows(db, model: str):  # noqa: ANN001, ANN201
    """The raw rows the reference reads for ``model``: contacts, opportunities, its credits."""
    async with db.reader() as session:
        contacts = (await session.execute(select(store.Contact))).scalars().all()
        opportunities = (await session.execute(select(store.Opportunity))).scalars().all()
        A = store.AttributionCredit  # noqa: N806
        credit = getattr(A, source_rollups.CREDIT_COLUMNS[model])
        credits = (await session.execute(select(A.contact_id, A.channel, A.campaign, A.form_id, A.sequence,
                                                credit.label("credit")).where(credit.is_not(None))
                                         .order_by(A.contact_id, A.position))).all()
    return contacts, opportunities, credits


def reference(rows, model: str, group_by: str, start, end, motions):  # noqa: ANN001, ANN201
    """(sums, days, shares): per group, its credited sums and (days, weight) pairs; per
    dimension (channel, campaign, motion), each name's credited qualified opportunities."""
    contacts, opportunities, credits = rows
    opps, credited = defaultdict(list), defaultdict(list)
    for o in opportunities:
        opps[o.contact_id].append(o)
    for c in credits:
        credited[c.contact_id].append(c)
    column = {"channel": "channel", "campaign": "campaign", "form": "form_id", "sequence": "sequence"}.get(group_by)
    sums = defaultdict(lambda: defaultdict(float))
    days = defaultdict(list)
    shares = {dimension: defaultdict(float) for dimension in ("channel", "campaign", "motion")}
    for c in contacts:
        at = _utc(c.first_touch_at) or _utc(c.created_at)
        if not _in_range(at, start, end) or (motions and c.motion not in motions):
            continue
        which = "last" if model == "last" else "first"
        weights = [(getattr(x, column) if column else None, x.credit) for x in credited[c.id]] or [
            (getattr(c, f"{which}_touch_{column}") if column else None, 1.0)]
        for name, w in [(x.channel, x.credit) for x in credited[c.id]] or [(getattr(c, f"{which}_touch_channel"),
                                                                              1.0)]:
            shares["channel"][name] += w * len(opps[c.id])
        for name, w in [(x.campaign, x.credit) for x in credited[c.id]] or [(getattr(c, f"{which}_touch_campaign"),
                                                                               1.0)]:
            shares["campaign"][name] += w * len(opps[c.id])
        shares["motion"][c.motion] += len(opps[c.id])
        reached = [c.lead_at, c.mql_at, c.sql_at, c.opportunity_at, c.customer_at]
        for name, w in weights:
            key = (c.motion, name) if column else (c.motion,)
            row = sums[key]
            row["contacts"] += w
            for i, metric in enumerate(("leads", "mql", "sql", "opportunities", "won")):
                row[metric] += w * any(m is not None for m in reached[i:])
            for o in opps[c.id]:
                row["qualified_opportunities"] += w
                if o.amount is not None and o.stage in ("sql", "opportunity", "customer"):
                    row["pipeline_amount"] += w * float(o.amount)
                    row["pipeline_amounts"] += w
                    if o.amount_estimated:
                        row["estimated_pipeline_amount"] += w * float(o.amount)
                if o.amount is not None and o.stage == "customer":
                    row["won_amount"] += w * float(o.amount)
                    row["won_amounts"] += w
            if c.sql_at is not None:
                days[key].append(((_utc(c.sql_at) - at).total_seconds() / 86400, w))
    return sums, days, shares


def _close(a, b, tol: float = 1e-3) -> bool:  # noqa: ANN001
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), abs_tol=tol)


RATES = (("lead_to_mql", "mql", "leads"), ("mql_to_sql", "sql", "mql"), ("sql_to_opportunity", "opportunities", "sql"),
         ("opportunity_to_won", "won", "opportunities"))
WARNING = re.compile(r"(\d+)% of qualified pipeline comes from (?:the )?(.+?)(?: (campaign|motion))?")


def _check_judgement(report: dict, shares, skip_motion: bool) -> None:  # noqa: ANN001
    """The concentration index (Herfindahl–Hirschman over the channels' shares) and the
    dependency warnings (a named source above its dimension's threshold, biggest first),
    worked out from the reference's shares. A share within 1e-6 of a threshold may go either
    way (the rollups' float sums and these differ in the last bits)."""
    share = {}
    for dimension, counts in shares.items():
        n = sum(counts.values())
        share[dimension] = {name: v / n for name, v in counts.items() if v > 1e-9} if n > 1e-9 else {}
    channel = [v for v in share["channel"].values() if v]
    assert _close(report["concentration_index"], sum(v * v for v in channel) if channel else None, 1e-4), (
        report["concentration_index"], share["channel"])
    limits = Thresholds()
    sure, maybe = set(), set()
    for dimension in ("channel", "campaign") + (() if skip_motion else ("motion",)):
        limit = getattr(limits, dimension)
        for name, value in share[dimension].items():
            if name is not None and value > limit + 1e-6:
                sure.add((dimension, name))
            elif name is not None and value > limit - 1e-6:
                maybe.add((dimension, name))
    got = []
    for sentence in report["warnings"]:
        found = WARNING.fullmatch(sentence)
        assert found, sentence
        pct, name, kind = found.groups()
        dimension = kind or "channel"
        got.append((dimension, name))
        assert abs(int(pct) - 100 * share[dimension][name]) <= 0.5 + 1e-6, (sentence, share[dimension][name])
    assert sure <= set(got) <= sure | maybe, (report["warnings"], sure, maybe)
    assert [d for d, _ in got] == sorted((d for d, _ in got), key=("channel", "campaign", "motion").index)
    for (d1, n1), (d2, n2) in zip(got, got[1:]):  # biggest first within a dimension
        assert d1 != d2 or share[d1][n1] >= share[d2][n2] - 1e-6, report["warnings"]


def _check_report(report: dict, sums, days, shares=None, *, skip_motion: bool = False) -> None:  # noqa: ANN001
    rows = {tuple(r[k] for k in report["keys"]): r for r in report["rows"]}
    expected = {k: v for k, v in sums.items() if round(v["contacts"], 4)}
    assert set(rows) == set(expected), (set(rows), set(expected))
    total_n = sum(v["qualified_opportunities"] for v in expected.values())
    total_amount = sum(v["pipeline_amount"] for v in expected.values() if v["pipeline_amounts"] > 1e-9)
    for key, want in expected.items():
        got = rows[key]
        for metric in ("contacts", "leads", "mql", "sql", "opportunities", "won", "qualified_opportunities"):
            assert _close(got[metric], want[metric]), (key, metric, got[metric], want[metric])
        assert _close(got["pipeline_amount"], want["pipeline_amount"] if want["pipeline_amounts"] > 1e-9 else None,
                      0.01), (key, got, want)
        assert _close(got["won_amount"], want["won_amount"] if want["won_amounts"] > 1e-9 else None, 0.01)
        assert _close(got["estimated_pipeline_amount"], want["estimated_pipeline_amount"]
                      if want["pipeline_amounts"] > 1e-9 else None, 0.01), (key, got, want)
        assert _close(got["share"], want["qualified_opportunities"] / total_n if total_n > 1e-9 else None)
        for rate, numerator, denominator in RATES:
            assert _close(got[rate], want[numerator] / want[denominator] if want[denominator] > 1e-9 else None), (
                key, rate, got, want)
        assert _close(got["amount_share"], want["pipeline_amount"] / total_amount
                      if want["pipeline_amounts"] > 1e-9 and abs(total_amount) > 1e-9 else None), (key, got, want)
        medians = _medians(days.get(key, []))
        assert _median_close(got["median_days_to_qualify"], medians), (key, got, medians)
    totals = defaultdict(float)
    for want in expected.values():
        for metric, value in want.items():
            totals[metric] += value
    for metric in ("contacts", "leads", "mql", "sql", "opportunities", "won", "qualified_opportunities"):
        assert _close(report["totals"][metric], totals[metric]), (metric, report["totals"], dict(totals))
    for rate, numerator, denominator in RATES:
        assert _close(report["totals"][rate], totals[numerator] / totals[denominator]
                      if totals[denominator] > 1e-9 else None), (rate, report["totals"], dict(totals))
    if shares is not None:
        _check_judgement(report, shares, skip_motion)


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=timezone.utc)


RANGES = [(None, None), (date(2026, 3, 3), date(2026, 3, 4)), (date(2026, 3, 15), date(2026, 4, 30)),
          (_at(2, 13, 30), _at(4, 6, 15)),  # partial hours at both ends, whole hours between
          (_at(3, 13, 50), _at(3, 14, 10)),  # one day, across an hour's start, no whole hour
          (_at(3, 13, 5), _at(3, 13, 40)),  # inside one hour
          (_at(3, 13), _at(4, 6)),  # on the hour: the last hour's first instant only
          # most of the first partial day (the day's row less an hour) and of an end hour (the
          # hour's row less the contacts after the bound)
          (_at(3, 0, 20), _at(4, 6, 45)),
          (date(2025, 6, 15), date(2027, 2, 10)), (datetime(2025, 12, 31, 23, 30, tzinfo=timezone.utc), None),
          (None, datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc))]


GROUPINGS = ("motion", "channel", "campaign", "form", "sequence")
MOTIONS = (None, ["inbound"])


def _groupings(i: int) -> list[tuple[list[str] | None, str]]:
    """The motion filters and groupings RANGES[i] is asked with: the three day ranges with
    every one; the others (how a range is read: hours, years, open ends, not what it groups
    by) with two each, in turn, so every grouping and filter meets hour and year ranges."""
    if i < 3:
        return [(motions, group_by) for motions in MOTIONS for group_by in GROUPINGS]
    return [(MOTIONS[i % 2], GROUPINGS[i % 5]), (MOTIONS[(i + 1) % 2], GROUPINGS[(i + 2) % 5])]


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=history)
async def test_rollup_answers_equal_the_raw_rows_on_random_histories(pipeline_store, case):
    people, rng, batch = case
    db = pipeline_store
    async with db.unit_of_work() as session:
        for table in TABLES:
            await session.execute(delete(table))
    await _apply(db, people, rng, batch)

    async with db.reader() as session:
        credits = (await session.execute(select(store.AttributionCredit))).scalars().all()
    per = defaultdict(float)
    for c in credits:
        for model, column in source_rollups.CREDIT_COLUMNS.items():
            if getattr(c, column) is not None:
                per[(c.opportunity_id, model)] += getattr(c, column)
    assert all(math.isclose(v, 1.0) for v in per.values()), per  # every opportunity, every model
    assert {m for _, m in per} in (set(), set(source_rollups.MODELS))
    await _check_credits_follow_the_touches(db)

    thresholds = Thresholds()
    for model in source_rollups.MODELS:
        # read once per model (~40 answers): nothing below writes, and loading every row as
        # objects per answer was most of the test's CPU
        rows = await raw_rows(db, model)
        for i, (start, end) in enumerate(RANGES):
            for motions, group_by in _groupings(i):
                query = SourcesQuery.model_validate({"from": start, "to": end, "group_by": group_by,
                                                     "motion": motions, "attribution": model})
                async with db.reader() as session:
                    report = await pipeline_service.source_analytics(session, query, thresholds)
                _check_report(report, *reference(rows, model, group_by, start, end, motions),
                              skip_motion=bool(motions and len(motions) == 1))

    # a rebuild from the raw rows gives the rows the transactions kept
    table = store.SourceRollup.__table__
    columns = [table.c[k] for k in source_rollups.KEY] + [table.c[m] for m in source_rollups.METRICS]
    n = len(source_rollups.KEY)
    async with db.reader() as session:
        kept = {tuple(r[:n]): r[n:] for r in (await session.execute(select(*columns))).all()}
    async with db.unit_of_work() as session:
        await source_rollups.rebuild(session)
    async with db.reader() as session:
        rebuilt = {tuple(r[:n]): r[n:] for r in (await session.execute(select(*columns))).all()}
    zero = (0.0,) * len(source_rollups.METRICS)
    for key in set(kept) | set(rebuilt):
        a, b = kept.get(key, zero), rebuilt.get(key, zero)
        assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b)), (key, a, b)



def _people(seed: int, n: int = 14) -> list:
    """A fixed history of ``n`` people: a few facts each over three weeks, then a sale."""
    rng = random.Random(seed)
    kinds = [("lead", f, u, rng.random() < 0.7) for f in FORMS for u in range(len(UTMS))] + [
        ("prospect", None, None, True)] + [("touch", o, c, q) for o in OUTCOMES for c in CHANNELS for q in ("s1", "s2")]
    people = []
    for _ in range(n):
        facts = [(rng.choice(kinds), rng.randrange(0, 21 * DAY)) for _ in range(rng.randint(1, 5))]
        people.append((facts, (rng.choice(["accept", "win", "lose", "none"]), rng.choice([None, 1000, 40000]))))
    return people


async def _rollup_rows(db) -> dict[tuple, tuple]:  # noqa: ANN001
    table = store.SourceRollup.__table__
    columns = [table.c[k] for k in source_rollups.KEY] + [table.c[m] for m in source_rollups.METRICS]
    n = len(source_rollups.KEY)
    async with db.reader() as session:
        found = (await session.execute(select(*columns))).all()
    rows = {tuple(r[:n]): tuple(round(x, 9) for x in r[n:]) for r in found}
    return {k: v for k, v in rows.items() if any(v)}


async def _check_answers(db, policies) -> None:  # noqa: ANN001
    """Credits follow the touches under ``policies``; every model's answers equal the raw rows'."""
    await _check_credits_follow_the_touches(db, policies)
    for model in source_rollups.MODELS:
        rows = await raw_rows(db, model)
        for start, end in RANGES[:3]:
            for group_by in ("channel", "campaign", "motion"):
                query = SourcesQuery.model_validate({"from": start, "to": end, "group_by": group_by,
                                                     "attribution": model})
                async with db.reader() as session:
                    report = await pipeline_service.source_analytics(session, query, Thresholds())
                _check_report(report, *reference(rows, model, group_by, start, end, None))


async def test_a_rescore_under_a_new_policy_brings_credits_and_rollups_up_to_date(pipeline_store, tmp_path):
    """A policy with a one-day lookback and newsletters that no longer count changes which
    touches count: applied, the re-score leaves every opportunity's credits those of the new
    policy and every answer equal to the raw rows'; a dry run changes nothing."""
    from services.qualification.rescore import rescore_all

    db = pipeline_store
    # and one who signed up for the newsletter two days before asking for a demo
    signed_up = ([(("lead", "newsletter", 3, True), 0), (("lead", "demo_request", 1, True), 2 * DAY)], ("accept", 1000))
    await _apply(db, [*_people(7), signed_up], random.Random(7), 4)
    await _check_answers(db, QUALIFIER.policies)
    text = (ROOT / "deploy" / "config" / "scoring.yaml").read_text()
    for old, new in (('version: "2026-11-25.1"', 'version: "test-rescore.1"'),
                     ("attribution_lookback_days: 90", "attribution_lookback_days: 1"),
                     ("    newsletter: 3\n", "    newsletter: 0\n")):
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "scoring.yaml").write_text(text)
    (tmp_path / "channels.yaml").write_text((ROOT / "deploy" / "config" / "channels.yaml").read_text())
    policy = qualification.load_qualifier(tmp_path / "scoring.yaml")
    assert policy.policies.attribution_lookback_days == 1

    assert max(await _credited_days_before(db)) > 1  # under the shipped 90 days, touches older than a day count
    assert await _credited_newsletters(db)  # and newsletters count
    async with db.reader() as session:
        credits_before = sorted(map(tuple, (await session.execute(select(store.AttributionCredit.__table__))).all()))
    rollups_before = await _rollup_rows(db)
    await rescore_all(db, policy, apply=False)
    async with db.reader() as session:
        assert sorted(map(tuple, (await session.execute(select(store.AttributionCredit.__table__))).all())) == (
            credits_before)
    assert await _rollup_rows(db) == rollups_before

    await rescore_all(db, policy, apply=True)
    async with db.reader() as session:
        credits_after = sorted(map(tuple, (await session.execute(select(store.AttributionCredit.__table__))).all()))
    assert credits_after != credits_before  # the history has touches the new policy no longer counts
    assert await _credited_days_before(db) and max(await _credited_days_before(db)) <= 1 + 1e-9
    assert not await _credited_newsletters(db)
    await _check_answers(db, policy.policies)


async def _credited_newsletters(db) -> int:  # noqa: ANN001
    """How many credited touches are newsletter sign-ups."""
    A, T = store.AttributionCredit, store.Touch  # noqa: N806
    async with db.reader() as session:
        return (await session.execute(select(func.count()).select_from(A).join(T, T.event_id == A.event_id)
                                      .where(T.form_type == "newsletter"))).scalar_one()


async def _credited_days_before(db) -> list[float]:  # noqa: ANN001
    """How long before its opportunity qualified each credited touch occurred, in days."""
    A, C = store.AttributionCredit, store.Contact  # noqa: N806
    async with db.reader() as session:
        rows = (await session.execute(select(A.occurred_at, C.sql_at).join(C, C.id == A.contact_id))).all()
    return [(as_utc(sql_at) - as_utc(at)).total_seconds() / 86400 for at, sql_at in rows]


async def test_a_replay_into_an_empty_store_rebuilds_the_same_credits_and_rollups(database_factory):
    """Replaying the topics into an empty store (a restore, ``operations.md``) rebuilds the
    credits and rollups the first store kept: each contact's facts arrive in the same order
    (one key, one partition), interleaved and batched differently."""
    from shared.db import Database

    people = _people(11)
    events = [(i, _event(f"p{i}@co{i % 3}.com", kind, minute, n))
              for i, (facts, _) in enumerate(people) for n, (kind, minute) in enumerate(facts)]
    random.Random(3).shuffle(events)
    stores = []
    for order, batch in ((events, 4), (sorted(events, key=lambda e: e[0] % 4), 1)):  # stable: each contact's order
        db = Database(await database_factory("pipeline"), pool_size=1)
        stores.append(db)
        for start in range(0, len(order), batch):
            async with db.snapshot_unit_of_work() as session:
                for _, (event, data) in order[start:start + batch]:
                    await _APPLY[event.type](session, QUALIFIER, event, data)
    try:
        first, replayed = stores
        async with first.reader() as a, replayed.reader() as b:
            query = select(store.AttributionCredit.__table__)
            assert sorted(map(tuple, (await a.execute(query)).all())) == sorted(
                map(tuple, (await b.execute(query)).all()))
        kept, rebuilt = await _rollup_rows(first), await _rollup_rows(replayed)
        assert kept.keys() == rebuilt.keys()
        for key, values in kept.items():  # summed in another order: equal up to the last bits
            assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(values, rebuilt[key], strict=True)), key
        assert await _rollup_rows(first)
        await _check_answers(replayed, QUALIFIER.policies)
    finally:
        for db in stores:
            await db.dispose()


async def test_the_hour_and_year_migration_fills_the_rollups_from_the_raw_rows(database_factory):
    """0013 makes the rollups again with hour and year rows, filled from the raw rows (what the
    transactions would have kept); its downgrade keeps the day and month rows."""
    import asyncio
    import random

    from alembic import command
    from sqlalchemy import text

    from leadstream.registry import DATABASES, aupgrade
    from shared.db import Database
    from shared.migrate import alembic_config

    url = await database_factory("pipeline")
    people = [([(("lead", "demo_request", 1, True), 30), (("touch", "replied", "cold_email", "s1"), 90)],
               ("win", 2500.5)),
              ([(("prospect", None, None, True), -400 * DAY), (("touch", "meeting_booked", "cold_call", "s2"),
                                                                -399 * DAY + 75)], ("accept", 1000)),
              ([(("lead", "webinar", 2, False), 45 * DAY + 13 * 60 + 7)], ("none", None))]
    table = store.SourceRollup.__table__
    columns = [table.c[k] for k in source_rollups.KEY] + [table.c[m] for m in source_rollups.METRICS]
    n = len(source_rollups.KEY)

    async def rows(db: Database) -> dict[tuple, tuple]:
        async with db.reader() as session:
            return {tuple(r[:n]): tuple(r[n:]) for r in (await session.execute(select(*columns))).all()}

    db = Database(url, pool_size=1)
    try:
        await _apply(db, people, random.Random(1), 2)
        kept = await rows(db)
    finally:
        await db.dispose()
    assert {key[1] for key in kept} == {"h", "d", "m", "y"}

    config = alembic_config(DATABASES["pipeline"].migrations, url)
    await asyncio.to_thread(command.downgrade, config, "0012")
    db = Database(url, pool_size=1)
    try:
        async with db.reader() as session:
            old = (await session.execute(text("SELECT * FROM source_rollups"))).mappings().all()
    finally:
        await db.dispose()
    assert "hour" not in old[0]
    at = source_rollups.KEY.index("hour")
    assert {tuple(str(r[k]) for k in source_rollups.KEY if k != "hour") for r in old} == {
        tuple(map(str, key[:at] + key[at + 1:])) for key in kept if key[1] in ("d", "m")}

    await aupgrade("pipeline", url)
    db = Database(url, pool_size=1)
    try:
        rebuilt = await rows(db)
    finally:
        await db.dispose()
    assert set(rebuilt) == set(kept)
    for key, values in kept.items():
        assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(values, rebuilt[key])), key


async def test_the_credits_migration_makes_one_row_per_touch_and_goes_back(database_factory):
    """0014 makes the credits one row per (opportunity, touch), each model's credit in its
    column: NULL where the model had no row for the touch, positions in the counting order;
    its downgrade makes a row per model and credited touch again, each numbered in order."""
    import asyncio
    import random

    from alembic import command
    from sqlalchemy import text

    from leadstream.registry import DATABASES, aupgrade
    from shared.db import Database
    from shared.migrate import alembic_config

    url = await database_factory("pipeline")
    people = [([(("touch", "replied", "cold_email", "s1"), 10), (("touch", "clicked", "social", "s2"), 20),
                (("lead", "demo_request", 1, True), 30)], ("accept", 1000)),
              ([(("lead", "demo_request", 2, True), 45)], ("none", None)),
              ([(("lead", "webinar", 2, False), 50)], ("none", None))]
    A = store.AttributionCredit.__table__  # noqa: N806
    models = source_rollups.CREDIT_COLUMNS

    async def stored(database_url: str) -> list[dict]:
        db = Database(database_url, pool_size=1)
        try:
            async with db.reader() as session:
                query = select(A).order_by(A.c.opportunity_id, A.c.position)
                return [dict(r) for r in (await session.execute(query)).mappings().all()]
        finally:
            await db.dispose()

    async def old_rows() -> dict[tuple, tuple]:
        db = Database(url, pool_size=1)
        try:
            async with db.reader() as session:
                rows = (await session.execute(text(
                    "SELECT opportunity_id, model, event_id, position, contact_id, channel, credit "
                    "FROM attribution_credits"))).all()
        finally:
            await db.dispose()
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5], r[6]) for r in rows}

    def unpivoted(rows: list[dict]) -> dict[tuple, tuple]:
        return {(r["opportunity_id"], model, r["event_id"]): (r["position"], r["contact_id"], r["channel"],
                                                             r[column])
                for r in rows for model, column in models.items()}

    db = Database(url, pool_size=1)
    try:
        await _apply(db, people, random.Random(1), 2)
    finally:
        await db.dispose()
    kept = await stored(url)
    assert len({r["opportunity_id"] for r in kept}) == 2 and len(kept) >= 4, kept
    assert all(r[column] is not None for r in kept for column in models.values())
    config = alembic_config(DATABASES["pipeline"].migrations, url)

    await asyncio.to_thread(command.downgrade, config, "0013")
    assert await old_rows() == unpivoted(kept)
    await aupgrade("pipeline", url)
    assert await stored(url) == kept

    # a model without a row for a touch (first: only the touch it credits) leaves it NULL, and
    # downgrading numbers each model's touches again
    await asyncio.to_thread(command.downgrade, config, "0013")
    db = Database(url, pool_size=1)
    try:
        async with db.unit_of_work() as session:
            await session.execute(text("DELETE FROM attribution_credits WHERE model = 'first' AND credit = 0"))
    finally:
        await db.dispose()
    await aupgrade("pipeline", url)
    pivoted = await stored(url)
    assert pivoted == [{**r, "credit_first": r["credit_first"] or None} for r in kept]
    await asyncio.to_thread(command.downgrade, config, "0013")
    old = await old_rows()
    assert {(k[0], k[2]): v[0] for k, v in old.items() if k[1] == "first"} == {
        (r["opportunity_id"], r["event_id"]): 0 for r in kept if r["credit_first"]}
    assert {k: v for k, v in old.items() if k[1] != "first"} == {
        k: v for k, v in unpivoted(kept).items() if k[1] != "first"}
    await aupgrade("pipeline", url)


async def test_the_opportunity_touches_migration_fills_them_from_the_contact_where_its_touch_is_theirs(
        database_factory):
    """0017 gives opportunities their touches whole (the first's event id and time, the
    last's form, sequence, event id and time), filled from the contact where its touch is
    the opportunity's; an opportunity whose touch differs from its contact's keeps them null.
    Qualification writes them as the contact's from then on."""
    import asyncio

    from alembic import command
    from sqlalchemy import text

    from leadstream.registry import DATABASES, aupgrade
    from shared.db import Database
    from shared.migrate import alembic_config

    url = await database_factory("pipeline")
    people = [([(("touch", "replied", "cold_email", "s1"), 10), (("lead", "demo_request", 1, True), 30)],
               ("none", None)),
              ([(("lead", "demo_request", 2, True), 45)], ("none", None)),
              ([(("touch", "replied", "cold_email", "s2"), 5), (("lead", "demo_request", 3, True), 50)],
               ("none", None))]
    new = [f"first_touch_{n}" for n in ("event_id", "at")] + [
        f"last_touch_{n}" for n in ("form_id", "sequence", "event_id", "at")]
    opportunity_columns = store.Opportunity.__table__.c

    async def touches(database_url: str) -> dict[str, tuple]:
        db = Database(database_url, pool_size=1)
        try:
            async with db.reader() as session:
                rows = (await session.execute(select(opportunity_columns.contact_id,
                                                     *(opportunity_columns[n] for n in new)))).all()
        finally:
            await db.dispose()
        return {r[0]: tuple(as_utc(v) if isinstance(v, datetime) else v for v in r[1:]) for r in rows}

    db = Database(url, pool_size=1)
    try:
        await _apply(db, people, random.Random(2), 3)
        async with db.reader() as session:
            contacts = {c.id: c for c in (await session.execute(select(store.Contact))).scalars()}
    finally:
        await db.dispose()
    written = await touches(url)
    assert len(written) == 3
    for contact_id, values in written.items():  # qualification wrote the contact's touches whole
        contact = contacts[contact_id]
        assert values == tuple(as_utc(getattr(contact, n)) if n.endswith("_at") else getattr(contact, n)
                               for n in new), contact.email
        assert (values[2] or values[3]) and values[4]  # the last touch's form or sequence, and its id
    config = alembic_config(DATABASES["pipeline"].migrations, url)
    await asyncio.to_thread(command.downgrade, config, "0016")
    # one contact's last touch is not its opportunity's (it moved on; the opportunity keeps its own)
    moved = next(iter(written))
    db = Database(url, pool_size=1)
    try:
        async with db.unit_of_work() as session:
            await session.execute(text("UPDATE contacts SET last_touch_campaign = 'later' WHERE id = :id"),
                                  {"id": moved})
    finally:
        await db.dispose()
    await aupgrade("pipeline", url)
    filled = await touches(url)
    assert filled[moved] == (*written[moved][:2], None, None, None, None)
    assert {k: v for k, v in filled.items() if k != moved} == {k: v for k, v in written.items() if k != moved}


async def test_a_contact_qualified_again_after_nurture_is_credited_back_from_its_new_qualification(pipeline_store):
    """Sales nurtures an opportunity; the contact's later demo request qualifies it again (the
    one opportunity of a contact stays, with its first qualification). The credits then count
    back from the new qualification, and the attribution answer says so (``credits_as_of``);
    the sources answers still equal the raw rows'."""
    db = pipeline_store
    email = "nora@acme.com"

    async def lead(form_type: str, utm: dict, at: datetime) -> None:
        data = LeadCaptured(email=email, form_type=form_type, utm=utm, form_id=f"f-{form_type}", occurred_at=at,
                            **BUSINESS)
        async with db.snapshot_unit_of_work() as session:
            event = make_event(LEAD_CAPTURED, data, source="/t", subject=email, time=at)
            await qualification.record_lead(session, QUALIFIER, event, data)

    start = datetime.now(timezone.utc) - timedelta(days=3)
    await lead("demo_request", UTMS[1], start)
    async with db.reader() as session:
        opportunity = (await session.execute(select(store.Opportunity))).scalar_one()
    async with db.unit_of_work() as session:  # accepted with the amount sales expects, then nurtured
        await pipeline_service.transition(session, opportunity.id, TransitionIn(to="opportunity", amount=24000),
                                          SALES)
    async with db.unit_of_work() as session:
        await pipeline_service.transition(session, opportunity.id, TransitionIn(to="nurture", reason="not now"), SALES)
    await _check_answers(db, QUALIFIER.policies)  # a nurtured opportunity is no pipeline
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    await lead("pricing", UTMS[2], later)
    async with db.reader() as session:
        contact = (await session.execute(select(store.Contact))).scalar_one()
        reopened = (await session.execute(select(store.Opportunity))).scalar_one()
        answer = await pipeline_service.opportunity_attribution(session, opportunity.id)
    assert contact.stage == "sql" and as_utc(contact.sql_at) == later  # qualified again
    # its one opportunity is open again, at sql, for sales to accept anew (its amount kept)
    assert (reopened.id, reopened.stage, reopened.closed_at, reopened.amount) == (opportunity.id, "sql", None, 24000)
    assert as_utc(answer.qualified_at) == as_utc(opportunity.qualified_at) == start
    assert answer.credits_as_of == later
    for model in answer.models:
        assert model.basis == "counting_touches"
        assert [t.occurred_at for t in model.touches] == [start, later]  # both within the lookback of `later`
        assert math.isclose(sum(t.credit for t in model.touches), 1.0)
    await _check_answers(db, QUALIFIER.policies)  # its amount is open pipeline again, in the rollups too
    async with db.unit_of_work() as session:
        moved = await pipeline_service.transition(session, opportunity.id, TransitionIn(to="opportunity"), SALES)
    assert moved.answer["opportunity"]["stage"] == "opportunity", moved.answer
    await _check_answers(db, QUALIFIER.policies)


@pytest.mark.parametrize("backend", ["sqlite"])  # the query planner in question (PostgreSQL keeps statistics)
async def test_a_motion_filter_leaves_the_cohort_range_to_its_index(pipeline_store, backend):
    """A cohort of one motion over a date-time range is found through the range's index
    (``ix_contacts_cohort``), in every query of the sources answer that reads contacts (the
    partial hours of its bounds) and in the dashboard's cohort. SQLite, without statistics,
    took the motion's index and read every contact of the motion: 2 s against 4 ms for half
    an hour of one motion over 1,000,000 contacts."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from services.pipeline import repository

    start = datetime(2026, 4, 1, 9, 30, tzinfo=timezone.utc)
    seen: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202, ARG001
        if "contacts.motion" in statement and not executemany:
            seen.append((statement, tuple(parameters)))

    query = SourcesQuery.model_validate({"from": start, "to": start + timedelta(days=2, minutes=30),
                                         "group_by": "channel", "motion": ["inbound"], "attribution": "linear"})
    event.listen(Engine, "before_cursor_execute", record)
    try:
        async with pipeline_store.reader() as session:
            await pipeline_service.source_analytics(session, query, Thresholds())
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    cohort = repository._cohort(repository.SourcesFilter(start=start, end=start + timedelta(minutes=30),  # noqa: SLF001
                                                          motions=["inbound"]))
    async with pipeline_store.reader() as session:
        compiled = select(store.Contact.id).where(*cohort).compile(
            dialect=session.bind.dialect, compile_kwargs={"literal_binds": True})
        seen.append((str(compiled), ()))
        assert len(seen) >= 3, seen  # the partial hours' two reads, and the cohort
        connection = await session.connection()
        for statement, parameters in seen:
            rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)).all()
            plan = " ".join(str(row[-1]) for row in rows)
            assert "ix_contacts_cohort" in plan and "ix_contacts_motion" not in plan, (statement, plan)
