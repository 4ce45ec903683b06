"""The sources dashboard (server-rendered) over a seeded store: sign-in, figures, filters, sign-out."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy import text as text_sql

from pipeline_store.models import Contact, Opportunity, PipelineApiKey, Score
from services.pipeline import repository
from services.pipeline.charts import weekly_series
from services.pipeline.repository import SourcesFilter
from services.pipeline.dashboard import COOKIE, LATEST
from tests.integration.test_pipeline_api import T0, _seed_history, add_key, pipeline  # noqa: F401 - fixture


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def sign_in(client, key: str):  # noqa: ANN001, ANN201
    return await client.post("/dashboard/sign-in", data={"api_key": key}, headers={"Authorization": ""})


async def test_signed_out_visitors_see_only_the_sign_in_form(pipeline):  # noqa: F811
    page = await pipeline.get("/dashboard", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'name="api_key"' in page.text and "Totals" not in page.text
    bad = await sign_in(pipeline, "ls_wrong")
    assert bad.status_code == 401 and "not valid" in bad.text and 'name="api_key"' in bad.text
    outreach_only = await add_key(pipeline.runtime.db, "bot", "outreach")
    assert (await sign_in(pipeline, outreach_only)).status_code == 403
    forged = await pipeline.get("/dashboard", headers={"Authorization": "", "Cookie": f"{COOKIE}=x.9999999999.forged"})
    assert 'name="api_key"' in forged.text


async def test_figures_equal_the_api_filters_warnings_and_sign_out(pipeline):  # noqa: F811
    await _seed_history(pipeline)
    key = pipeline.headers["Authorization"].split()[1]
    signed = await sign_in(pipeline, key)
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    cookie = signed.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and key not in cookie
    session = signed.cookies[COOKIE]

    api = (await pipeline.get("/v1/analytics/sources", params={"group_by": "channel"})).json()
    page = await pipeline.get("/dashboard", headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"})
    assert page.status_code == 200
    body = text(page.text)
    assert f"Qualified opportunities {api['totals']['qualified_opportunities']:,}" in body
    assert f"Won {api['totals']['won']:,}" in body
    assert str(api["concentration_index"]) in body
    for warning in api["warnings"]:
        assert warning in body
    assert api["warnings"], "the seeded history depends on one channel"
    assert "<svg" in page.text and "<title" in page.text  # labelled charts

    inbound_api = (await pipeline.get("/v1/analytics/sources", params={"motion": "inbound"})).json()
    inbound = text((await pipeline.get("/dashboard", params={"motion": "inbound"},
                                       headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"})).text)
    assert f"Qualified opportunities {inbound_api['totals']['qualified_opportunities']:,}" in inbound
    for warning in inbound_api["warnings"]:
        assert warning in inbound

    bad_range = await pipeline.get("/dashboard", params={"from": "2026-02-01", "to": "2026-01-01"},
                                   headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"})
    assert bad_range.status_code == 422 and "role=\"alert\"" in bad_range.text

    out = await pipeline.post("/dashboard/sign-out", headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"})
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]

    # a revoked key ends its sessions
    async with pipeline.runtime.db.unit_of_work() as s:
        await s.execute(update(PipelineApiKey).values(revoked_at=datetime.now(timezone.utc)))
    after = await pipeline.get("/dashboard", headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"})
    assert 'name="api_key"' in after.text


async def test_browser_form_fields_left_empty_mean_no_bound(pipeline):  # noqa: F811
    key = pipeline.headers["Authorization"].split()[1]
    session = (await sign_in(pipeline, key)).cookies[COOKIE]
    page = await pipeline.get(
        "/dashboard?from=&to=&motion=inbound", headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"}
    )
    assert page.status_code == 200 and "Totals" in page.text
    bad = await pipeline.get(
        "/dashboard?from=yesterday", headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"}
    )
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.text


async def signed_in_page(client, params: dict | None = None):  # noqa: ANN001, ANN201
    key = client.headers["Authorization"].split()[1]
    session = (await sign_in(client, key)).cookies[COOKIE]
    return await client.get(
        "/dashboard", params=params or {}, headers={"Authorization": "", "Cookie": f"{COOKIE}={session}"}
    )


async def test_pages_forbid_scripts_and_caching_and_the_stylesheet_is_served_locally(pipeline):  # noqa: F811
    signed_out = await pipeline.get("/dashboard", headers={"Authorization": ""})
    page = await signed_in_page(pipeline)
    for answer in (signed_out, page):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "style-src 'self'" in csp and "script" not in csp
        assert answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text and "http://" not in answer.text and "https://" not in answer.text
    assert '<link rel="stylesheet" href="/dashboard/static/dashboard.css">' in page.text
    css = await pipeline.get("/dashboard/static/dashboard.css", headers={"Authorization": ""})
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@media (max-width: 640px)" in css.text
    assert (await pipeline.get("/dashboard/static/../app.py", headers={"Authorization": ""})).status_code == 404


async def test_latest_opportunities_show_the_score_that_qualified_them_with_reasons(pipeline):  # noqa: F811
    s = pipeline.store
    contact = s.contact(channel="paid_search", campaign="brand", stage="sql", sql_at=T0 + timedelta(days=2))
    await s.add(contact)

    def score(at: datetime, rule: str, points: float) -> Score:
        return Score(contact_id=contact.id, fit_score=70, fit_grade="B",
                     fit_reasons=[{"rule": "title.seniority=vp", "points": 25}, {"rule": "free_mail", "points": -5}],
                     engagement_score=points, engagement_reasons=[{"rule": rule, "points": points}],
                     policy_version="2025-01", scored_at=at)

    await s.add(score(T0, "form.newsletter", 5), score(T0 + timedelta(days=2), "form.demo_request", 60),
                score(T0 + timedelta(days=9), "touch.opened", 1))  # before, at and after qualification
    await s.add(s.opportunity(contact, stage="sql"))
    body = text((await signed_in_page(pipeline)).text)
    assert "form.demo_request +60" in body and "title.seniority=vp +25" in body and "free_mail -5" in body
    assert "form.newsletter" not in body and "touch.opened" not in body  # not the score that qualified it


async def test_latest_shows_at_most_ten_and_hostile_campaign_names_stay_text(pipeline):  # noqa: F811
    s = pipeline.store
    hostile = "<img src=x onerror=alert(1)>" + "-very-long-campaign-name" * 6  # 172 of 200 characters
    contacts = [s.contact(channel="paid_search", campaign=hostile, stage="sql", sql_at=T0 + timedelta(hours=i))
                for i in range(LATEST + 3)]
    await s.add(*contacts)
    await s.add(*(s.opportunity(c) for c in contacts))
    page = await signed_in_page(pipeline)
    latest = page.text.split('id="latest"')[1].split("</table>")[0]
    assert latest.count("<tr>") == LATEST + 1  # the header row and ten opportunities
    assert "<img" not in page.text and "&lt;img src=x" in page.text
    empty = await signed_in_page(pipeline, {"from": "2030-01-01"})
    assert "No opportunity was qualified in this range." in empty.text
    assert "No qualified pipeline" in empty.text  # the charts say so in words


async def test_the_attribution_model_selector_and_a_bad_model(pipeline):  # noqa: F811
    await _seed_history(pipeline)
    key = pipeline.headers["Authorization"].split()[1]
    session = (await sign_in(pipeline, key)).cookies[COOKIE]
    headers = {"Authorization": "", "Cookie": f"{COOKIE}={session}"}
    page = await pipeline.get("/dashboard", params={"attribution": "w_shaped"}, headers=headers)
    assert page.status_code == 200
    assert '<option value="w_shaped" selected>' in page.text
    api = (await pipeline.get("/v1/analytics/sources", params={"attribution": "w_shaped"})).json()
    assert f"Qualified opportunities {api['totals']['qualified_opportunities']:,}" in text(page.text)
    # beside the share chart: the top channel's share under each model
    assert "How paid_search's share moves across models" in text(page.text)
    assert 'id="chart-top-channel-models"' in page.text
    bad = await pipeline.get("/dashboard", params={"attribution": "u_shaped"}, headers=headers)
    assert bad.status_code == 422 and "Unknown attribution model" in bad.text


async def test_the_weekly_series_are_counted_by_the_database_per_utc_day(pipeline):  # noqa: F811
    """The over-time charts read a row per qualification day and key, counted by the database,
    never each opportunity: the same counts as the opportunities one by one, the cohort's
    range and motions applied, and days in UTC whatever the session's time zone (an instant
    early on a UTC day is the evening before in New York)."""
    await _seed_history(pipeline)
    s = pipeline.store
    early = datetime(2025, 2, 10, 3, 30, tzinfo=timezone.utc)  # 2025-02-09 22:30 in New York
    extra = [s.contact(channel="paid_search", first_at=T0 + timedelta(days=3)) for _ in range(3)]
    await s.add(*extra)
    await s.add(*(s.opportunity(c, qualified_at=early + timedelta(minutes=i)) for i, c in enumerate(extra)))
    filters = [SourcesFilter(), SourcesFilter(start=T0.date(), end=(T0 + timedelta(days=40)).date()),
               SourcesFilter(motions=["outbound"]), SourcesFilter(start=(T0 + timedelta(days=2)).date()),
               SourcesFilter(end=(T0 + timedelta(days=1)).date(), motions=["inbound", "blended"])]
    # a contact whose first touch was not kept is in the cohort of its created_at
    untouched = s.contact(channel=None, first_at=T0, first_touch_at=None, created_at=T0 + timedelta(days=5))
    await s.add(untouched)
    await s.add(s.opportunity(untouched, qualified_at=T0 + timedelta(days=6)))
    for f in filters:
        counted = await _series(pipeline, f)
        async with pipeline.runtime.db.reader() as session:
            one_by_one = (await session.execute(
                select(Opportunity.qualified_at, Opportunity.motion, Opportunity.first_touch_channel,
                       Contact.first_touch_at, Contact.created_at, Contact.motion)
                .join(Contact, Contact.id == Opportunity.contact_id))).all()
        expected: dict[tuple, int] = {}
        for at, motion, channel, first_at, created_at, contact_motion in one_by_one:
            cohort_at = utc(first_at if first_at is not None else created_at)
            if f.start is not None and cohort_at < utc(f.start):
                continue
            if f.end is not None and cohort_at >= utc(f.end) + timedelta(days=1):
                continue
            if f.motions and contact_motion not in f.motions:
                continue
            day = utc(at).date()
            expected[(day, motion, channel)] = expected.get((day, motion, channel), 0) + 1
        assert {(d, m, c): n for d, m, c, n in counted} == expected and len(counted) == len(expected)
        assert [row[0] for row in counted] == sorted(row[0] for row in counted)
    everything = {(d, m, c): n for d, m, c, n in await _series(pipeline, SourcesFilter())}
    assert everything[(date(2025, 2, 10), "inbound", "paid_search")] == 3
    assert (await _series(pipeline, SourcesFilter(start=(T0 + timedelta(days=5)).date(),
                                                 end=(T0 + timedelta(days=5)).date()))) == [
        ((T0 + timedelta(days=6)).date(), "inbound", None, 1)]  # in the cohort of its created_at
    async with pipeline.runtime.db.reader() as session:
        stored = (await session.execute(select(func.count()).select_from(Opportunity))).scalar()
    assert sum(everything.values()) == stored
    weeks, series = weekly_series([(d, m, n) for d, m, _, n in await _series(pipeline, SourcesFilter())])
    assert sum(map(sum, series.values())) == stored
    assert date(2025, 2, 10) in weeks  # a Monday


def utc(moment: datetime | date) -> datetime:
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


async def _series(client, f):  # noqa: ANN001, ANN202
    async with client.runtime.db.reader() as session:
        if (await session.connection()).dialect.name == "postgresql":
            await session.execute(text_sql("SET LOCAL TIME ZONE 'America/New_York'"))
        return await repository.qualified_series(session, f)
