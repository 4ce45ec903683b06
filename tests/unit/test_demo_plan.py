"""The demo's plan: what `leadstream demo` will send, decided from the seed alone."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from leadstream.demo import INBOUND, plan

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
