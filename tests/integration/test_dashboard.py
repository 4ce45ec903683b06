"""The sources dashboard (server-rendered) over a seeded store: sign-in, figures, filters, sign-out."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import update

from services.pipeline.charts import bar_chart, stacked_columns, weekly_series
from services.pipeline.dashboard import COOKIE
from shared.store.models import PipelineApiKey
from tests.integration.test_pipeline_api import _seed_history, add_key, pipeline  # noqa: F401 - fixture


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
    forged = await pipeline.get("/dashboard", headers={"Authorization": ""}, cookies={COOKIE: "x.9999999999.forged"})
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
    page = await pipeline.get("/dashboard", headers={"Authorization": ""}, cookies={COOKIE: session})
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
    inbound = text((await pipeline.get("/dashboard", params={"motion": "inbound"}, headers={"Authorization": ""},
                                       cookies={COOKIE: session})).text)
    assert f"Qualified opportunities {inbound_api['totals']['qualified_opportunities']:,}" in inbound
    for warning in inbound_api["warnings"]:
        assert warning in inbound

    bad_range = await pipeline.get("/dashboard", params={"from": "2026-02-01", "to": "2026-01-01"},
                                   headers={"Authorization": ""}, cookies={COOKIE: session})
    assert bad_range.status_code == 422 and "role=\"alert\"" in bad_range.text

    out = await pipeline.post("/dashboard/sign-out", headers={"Authorization": ""}, cookies={COOKIE: session})
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]

    # a revoked key ends its sessions
    async with pipeline.runtime.db.unit_of_work() as s:
        await s.execute(update(PipelineApiKey).values(revoked_at=datetime.now(timezone.utc)))
    after = await pipeline.get("/dashboard", headers={"Authorization": ""}, cookies={COOKIE: session})
    assert 'name="api_key"' in after.text


def test_charts_are_labelled_svg_and_survive_long_names():
    svg = bar_chart("c", "Share by campaign", [("a-very-long-campaign-name-" * 4, 0.7), ("b", 0.3)], percent=True)
    assert svg.startswith("<svg") and 'role="img"' in svg and "<title" in svg and "70%" in svg and "…" in svg
    assert "No data" in bar_chart("e", "Empty", [])
    when = [datetime(2026, 11, 2, tzinfo=timezone.utc), datetime(2026, 11, 17, tzinfo=timezone.utc)]
    weeks, series = weekly_series([(when[0], "inbound"), (when[1], "outbound"), (when[1], "inbound")])
    assert [w.isoformat() for w in weeks] == ["2026-11-02", "2026-11-09", "2026-11-16"]  # Mondays
    assert series == {"inbound": [1, 0, 1], "outbound": [0, 0, 1]}
    assert "week of 2026-11-16" in stacked_columns("s", "Weekly", weeks, series)


async def test_browser_form_fields_left_empty_mean_no_bound(pipeline):  # noqa: F811
    key = pipeline.headers["Authorization"].split()[1]
    session = (await sign_in(pipeline, key)).cookies[COOKIE]
    page = await pipeline.get("/dashboard?from=&to=&motion=inbound", headers={"Authorization": ""},
                              cookies={COOKIE: session})
    assert page.status_code == 200 and "Totals" in page.text
    bad = await pipeline.get("/dashboard?from=yesterday", headers={"Authorization": ""}, cookies={COOKIE: session})
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.text
