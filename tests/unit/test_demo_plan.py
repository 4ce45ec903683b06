"""The demo's plan: what `leadstream demo` will send, decided from the seed alone."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from leadstream.demo import INBOUND, _decisions, plan

NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    assert plan(7, 400, NOW) == plan(7, 400, NOW)
    assert plan(7, 400, NOW) != plan(8, 400, NOW)


def test_the_plan_is_relative_to_now_so_a_later_run_has_the_same_shape():
    a, b = plan(7, 400, NOW), plan(7, 400, NOW + timedelta(days=3))
    assert [lead["email"] for lead in a.leads] == [lead["email"] for lead in b.leads]
    assert [t["outcome"] for t in a.touches] == [t["outcome"] for t in b.touches]


@pytest.mark.parametrize("contacts", [40, 400, 2000])
def test_every_person_enters_once_within_the_last_90_days(contacts):
    p = plan(3, contacts, NOW)
    outbound = [x for x in p.prospects if x["list"] != "inbound-follow-up"]
    assert len(p.leads) + len(outbound) == contacts
    emails = [lead["email"] for lead in p.leads] + [x["email"] for x in outbound]
    assert len(set(emails)) == contacts
    for moment in [lead["occurred_at"] for lead in p.leads] + [t["occurred_at"] for t in p.touches]:
        assert NOW - timedelta(days=91) <= datetime.fromisoformat(moment) <= NOW


def test_both_motions_every_channel_and_blended_accounts():
    p = plan(7, 2000, NOW)
    assert 0.55 < len(p.leads) / 2000 < 0.75  # inbound leads; the rest are outbound prospects
    mediums = Counter((lead.get("utm") or {}).get("medium") for lead in p.leads)
    assert {"cpc", "paid_social", "email", "webinar"} <= set(mediums)
    assert any("google.com" in (lead.get("referrer") or "") for lead in p.leads)  # organic search
    assert {lead["form_type"] for lead in p.leads} >= {"demo_request", "content_download", "newsletter", "webinar"}
    assert {t["channel"] for t in p.touches} == {"cold_email", "cold_call", "social", "video"}
    outcomes = {t["outcome"] for t in p.touches}
    assert {"meeting_booked", "positive_reply", "bounced", "unsubscribed", "not_interested"} <= outcomes
    followed_up = [x for x in p.prospects if x["list"] == "inbound-follow-up"]
    assert followed_up and {x["email"] for x in followed_up} <= {lead["email"] for lead in p.leads}
    lead_domains = {lead["email"].split("@")[1] for lead in p.leads}
    prospect_domains = {x["email"].split("@")[1] for x in p.prospects if x["list"] != "inbound-follow-up"}
    assert len(lead_domains & prospect_domains) >= 10  # accounts touched by both motions


def test_paid_search_is_the_deliberate_over_dependence():
    p = plan(7, 2000, NOW)
    high_intent = [lead for lead in p.leads if lead["form_type"] in ("demo_request", "contact_sales", "pricing")]
    paid = [lead for lead in high_intent if (lead.get("utm") or {}).get("medium") == "cpc"]
    assert len(paid) / len(high_intent) > 0.55  # the channel warning (over 50%) has something to say
    assert max(share for channel, share, _ in INBOUND if channel != "paid_search") < 0.2


def test_touches_are_in_time_order_with_stable_external_ids():
    p = plan(7, 400, NOW)
    times = [t["occurred_at"] for t in p.touches]
    assert times == sorted(times)
    ids = [t["external_id"] for t in p.touches]
    assert len(set(ids)) == len(ids) and all(i.startswith("demo-7-") for i in ids)


# ---- the balance diagnoses over the plan ------------------------------------------------------

HAND_RAISERS = ("demo_request", "contact_sales", "pricing")  # the shipped policy's hand_raiser rule


def _balance_of(p, now: datetime) -> list[str]:  # noqa: ANN001
    """The balance diagnoses' rules over the plan, as the shipped policy will judge it: a
    hand-raiser's form from a business address qualifies at once, a prospect on a meeting or a
    positive reply; fit grades from the policy's own fit score (domain functions, no I/O)."""
    from services.pipeline.balance import BalanceThresholds, CohortSum, Sums, Windows, answer, diagnose
    from services.pipeline.analytics import Thresholds
    from services.qualification.domain.channels import load_channel_rules
    from services.qualification.domain.policy import load_policies
    from services.qualification.domain.scoring import fit_score
    from services.qualification.domain.identity import is_free_mail
    from tests.support import ROOT

    policies = load_policies(ROOT / "deploy" / "config" / "scoring.yaml")
    derive_inbound_channel = load_channel_rules(ROOT / "deploy" / "config" / "channels.yaml").classify
    fields = ("title", "company", "industry", "employees", "country")
    cohort: dict[tuple, list[int]] = {}
    days_to_sql: dict[tuple, int] = {}
    effort: dict[tuple, list[int]] = {}
    window: dict[tuple, int] = {}
    followed_up = {x["email"] for x in p.prospects if x["list"] == "inbound-follow-up"}

    def add(day, entry, motion, channel, fit, sql_days) -> None:  # noqa: ANN001
        row = cohort.setdefault((entry, motion, channel), [0, 0, 0])
        row[0] += 1
        row[1] += fit
        if sql_days is not None:
            row[2] += 1
            days_to_sql[(entry, motion, sql_days)] = days_to_sql.get((entry, motion, sql_days), 0) + 1
            window[(day, entry, motion, channel)] = window.get((day, entry, motion, channel), 0) + 1

    for lead in p.leads:
        at = datetime.fromisoformat(lead["occurred_at"])
        utm = lead.get("utm") or {}
        channel = derive_inbound_channel(utm.get("source"), utm.get("medium"), lead.get("referrer"),
                                         lead.get("page_url"), lead["form_type"])
        sql = lead["form_type"] in HAND_RAISERS and not is_free_mail(lead["email"].split("@")[1])
        motion = "blended" if lead["email"] in followed_up and not sql else "inbound"
        fit = fit_score({k: lead[k] for k in fields}, lead["email"], policies).grade in ("A", "B")
        add(at.date(), "inbound", motion, channel, fit, 0 if sql else None)
        effort.setdefault((at.date(), "inbound"), [0, 0])[0] += 1
    touches: dict[str, list[dict]] = {}
    for t in p.touches:
        touches.setdefault(t["email"], []).append(t)
        effort.setdefault((datetime.fromisoformat(t["occurred_at"]).date(), "outbound"), [0, 0])[1] += 1
    for x in p.prospects:
        if x["list"] == "inbound-follow-up":
            continue
        own = sorted(touches[x["email"]], key=lambda t: t["occurred_at"])
        first = datetime.fromisoformat(own[0]["occurred_at"])
        won = next((t for t in own if t["outcome"] in ("meeting_booked", "positive_reply")), None)
        days = (datetime.fromisoformat(won["occurred_at"]) - first).days if won else None
        fit = fit_score({k: x[k] for k in fields}, x["email"], policies).grade in ("A", "B")
        add(first.date(), "outbound", "outbound", own[0]["channel"], fit, days)
    sums = Sums(
        cohort=[CohortSum(e, m, c, n, fit, sql) for (e, m, c), (n, fit, sql) in cohort.items()],
        days_to_sql=[(e, m, d, n) for (e, m, d), n in days_to_sql.items()],
        effort={m: (sum(v[0] for (_, mm), v in effort.items() if mm == m),
                    sum(v[1] for (_, mm), v in effort.items() if mm == m)) for m in ("inbound", "outbound")},
        window=[(d, e, m, c, n) for (d, e, m, c), n in window.items()],
        window_effort=[(d, m, v[0], v[1]) for (d, m), v in effort.items()],
    )
    return [d.rule for d in diagnose(answer(sums, Windows(now.date())), BalanceThresholds(), Thresholds())]


@pytest.mark.parametrize("seed_value", [7, 5])
def test_the_demo_history_is_diagnosed_weak_control(seed_value):
    rules = _balance_of(plan(seed_value, 2000, NOW), NOW)
    assert "weak_control" in rules, rules


@pytest.mark.parametrize("seed_value", [7, 5])
def test_the_balanced_demo_history_has_no_diagnosis(seed_value):
    assert _balance_of(plan(seed_value, 2000, NOW, balanced=True), NOW) == []


def test_sales_decisions_are_the_seeds_and_each_opportunitys_moves_keep_their_order():
    opportunities = [{"id": f"o{n}", "stage": "sql" if n % 5 else "disqualified"} for n in range(400)]

    def drawn(seed: int) -> list:
        rng = random.Random(seed)
        return [_decisions(rng, o, 7) for o in opportunities]

    again = drawn(8)
    assert drawn(8) == again and drawn(9) != again
    assert all(not moves for o, moves in zip(opportunities, again) if o["stage"] != "sql")
    kinds = [tuple(body["to"] for _, body, _ in moves) for moves in again]
    assert set(kinds) <= {(), ("disqualified",), ("opportunity",), ("opportunity", "customer"), ("opportunity", "lost")}
    assert {("opportunity", "customer"), ("opportunity", "lost"), ("disqualified",)} <= set(kinds)
    for o, moves in zip(opportunities, again):
        assert all(path == f"/v1/opportunities/{o['id']}/transitions" for path, _, _ in moves)
        keys = [key["Idempotency-Key"] for _, _, key in moves]
        assert len(set(keys)) == len(keys) and all(k.startswith(f"demo-7-{o['id']}") for k in keys)
