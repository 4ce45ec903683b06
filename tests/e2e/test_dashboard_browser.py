"""The dashboard in headless Chromium over a history seeded by `leadstream demo` through the APIs.

The whole product runs as real processes (broker, capture, outreach, a qualification worker,
pipeline); the seeder sends leads, prospects, touches and sales decisions over HTTP only.
Chromium is Debian's package (``make test`` installs it); without it the browser part skips.
``LEADSTREAM_UPDATE_SCREENSHOT=1`` also refreshes ``docs/dashboard.png`` for the README.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from leadstream.demo import plan, seed
from leadstream.registry import aupgrade
from services.pipeline.dashboard import BALANCE_LINES
from tests.e2e.stack import FullStack
from tests.support import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = ROOT / "test-output"
SEED, CONTACTS = 5, 240

pytestmark = pytest.mark.timeout(300)
# the tests of the seeded stack run on one parallel worker, which seeds it once (``--dist loadgroup``)
ON_THE_SEEDED_STACK = pytest.mark.xdist_group("dashboard-seeded")


@pytest.fixture(scope="module")
async def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    urls = {db: f"sqlite+aiosqlite:///{tmp / f'{db}.db'}" for db in ("capture", "outreach", "pipeline")}
    for db, url in urls.items():
        await aupgrade(db, url)
    stack = FullStack(urls, tmp)
    try:
        await stack.start(workers=1)
        started = datetime.now(timezone.utc)
        result = await seed(capture_url=stack.capture.url, outreach_url=stack.outreach.url,
                            pipeline_url=stack.pipeline.url, api_key=stack.api_key, seed_value=SEED,
                            contacts=CONTACTS, settle_timeout=60)
        yield stack, result, plan(SEED, CONTACTS, started)
    finally:
        await stack.close()


async def api(stack: FullStack, path: str = "/v1/analytics/sources", **params) -> dict:  # noqa: ANN003
    async with httpx.AsyncClient(base_url=stack.pipeline.url, headers=stack.auth) as client:
        answer = await client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


@ON_THE_SEEDED_STACK
async def test_demo_seeds_everything_through_the_apis(seeded):
    stack, result, planned = seeded
    assert result["leads"] == len(planned.leads) and result["prospects"] == len(planned.prospects)
    assert result["touches"] == len(planned.touches)
    assert result["accepted"] > 0 and result["won"] > 0 and result["lost"] >= 0
    everything = await api(stack)
    assert everything["totals"]["contacts"] == CONTACTS  # every person reached the store, once
    assert everything["totals"]["qualified_opportunities"] > 0 and everything["totals"]["won"] == result["won"]
    assert {r["motion"] for r in (await api(stack, group_by="motion"))["rows"]} >= {"inbound", "outbound"}
    assert any(w.endswith("comes from paid_search") for w in everything["warnings"]), everything["warnings"]
    # open opportunities carry the amount sales expects: pipeline is more than what was won
    assert everything["totals"]["pipeline_amount"] > everything["totals"]["won_amount"] > 0
    # the demo leans on inbound while sales prospects a target list: the balance says weak_control
    balance = await api(stack, path="/v1/analytics/balance")
    assert "weak_control" in [d["rule"] for d in balance["diagnoses"]], balance["diagnoses"]


BALANCED_SEED, BALANCED_CONTACTS = 5, 2000  # the demo's own size: smaller histories' 28-day windows are noisy


async def test_the_balanced_demo_has_no_balance_diagnosis(tmp_path):
    """`leadstream demo --balanced` through the whole product: no balance diagnosis fires."""
    urls = {db: f"sqlite+aiosqlite:///{tmp_path / f'{db}.db'}" for db in ("capture", "outreach", "pipeline")}
    for db, url in urls.items():
        await aupgrade(db, url)
    stack = FullStack(urls, tmp_path)
    try:
        await stack.start(workers=1)
        result = await seed(capture_url=stack.capture.url, outreach_url=stack.outreach.url,
                            pipeline_url=stack.pipeline.url, api_key=stack.api_key, seed_value=BALANCED_SEED,
                            contacts=BALANCED_CONTACTS, settle_timeout=120, balanced=True)
        assert result["accepted"] > 0
        balance = await api(stack, path="/v1/analytics/balance")
        assert balance["totals"]["entrants"] == BALANCED_CONTACTS
        assert balance["diagnoses"] == [], balance["diagnoses"]
    finally:
        await stack.close()


def _balance_cell(value: float | None, how: str) -> str:
    """A balance figure as the panel shows it."""
    if value is None:
        return "–"
    return {"pct": f"{value * 100:.0f}%", "pp": f"{value:+.1f} pts", "num": f"{value:,.0f}"}.get(how, str(value))


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    return None if text in ("–", "") else float(text)


@ON_THE_SEEDED_STACK
async def test_the_dashboard_in_chromium_shows_what_the_api_returns(seeded):
    stack, _, _ = seeded
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.async_api")
    everything, inbound = await api(stack), await api(stack, motion="inbound")
    channels, motions = await api(stack, group_by="channel"), await api(stack, group_by="motion")

    OUTPUT.mkdir(exist_ok=True)
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(stack.pipeline.url) else None)

            # signed out: the sign-in form and nothing else
            await page.goto(f"{stack.pipeline.url}/dashboard")
            assert await page.title() == "Sign in · Leadstream"
            assert await page.get_by_label("Pipeline API key", exact=True).is_visible()
            assert await page.locator("#kpi-qualified").count() == 0 and await page.locator("svg").count() == 0
            await page.get_by_label("Pipeline API key", exact=True).fill("ls_not-a-key")
            await page.get_by_role("button", name="Sign in").click()
            assert "not valid" in await page.get_by_role("alert").inner_text()

            await page.get_by_label("Pipeline API key", exact=True).fill(stack.api_key)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_selector("#kpi-qualified")
            cookie = next(c for c in await context.cookies() if c["name"] == "leadstream_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and stack.api_key not in cookie["value"]
            assert cookie["secure"]  # by default, though served over http (loopback keeps it)
            assert await page.evaluate("document.cookie") == ""  # no script can read the session

            # the totals, the funnel per motion, the channel shares and the warnings are the API's
            totals = everything["totals"]
            for kpi, name in [("contacts", "contacts"), ("qualified", "qualified_opportunities"), ("won", "won"),
                              ("pipeline", "pipeline_amount"), ("estimated", "estimated_pipeline_amount")]:
                assert _number(await page.locator(f"#kpi-{kpi}").inner_text()) == pytest.approx(totals[name] or 0)
            assert _number(await page.locator("#kpi-hhi").inner_text()) == everything["concentration_index"]
            assert await page.locator("#funnel tbody tr").count() == len(motions["rows"])
            for row in motions["rows"]:
                cells = page.locator(f'#funnel tr[data-motion="{row["motion"]}"] td')
                shown = [_number(t) for t in (await cells.all_inner_texts())[:5]]
                assert shown == [row["leads"], row["mql"], row["sql"], row["opportunities"], row["won"]]
                median = _number((await cells.all_inner_texts())[-1])
                assert median == row["median_days_to_qualify"]
            assert await page.locator("#channels tbody tr").count() == len(channels["rows"])
            warnings = await page.locator("#warnings").inner_text()
            assert everything["warnings"] and all(w in warnings for w in everything["warnings"])

            # the balance panel: per motion side by side, the trend chart and the diagnoses, all the API's
            balance = await api(stack, path="/v1/analytics/balance")
            assert [d["rule"] for d in balance["diagnoses"]][:1] == ["weak_control"]  # the demo's history
            assert await page.locator("#balance thead th[data-motion]").all_inner_texts() == [
                "inbound", "outbound", "blended (apart)"]
            for figure, _, how in BALANCE_LINES:  # every figure of the panel, per motion side by side
                cells = await page.locator(f'#balance tr[data-figure="{figure}"] td').all_inner_texts()
                assert [c.strip() for c in cells] == [_balance_cell(r[figure], how) for r in balance["rows"]], figure
            diagnoses = page.locator("#diagnoses li")
            assert await diagnoses.count() == len(balance["diagnoses"])
            for i, d in enumerate(balance["diagnoses"]):
                assert await diagnoses.nth(i).get_attribute("data-rule") == d["rule"]
                assert d["sentence"] in await diagnoses.nth(i).inner_text()
            assert await page.locator("#chart-balance-trend").count() == 1

            # readable and accessible: labelled charts and controls, the stylesheet applied, nothing external
            charts = page.locator("svg[role=img]")
            assert await charts.count() == 6
            for i in range(6):
                assert (await charts.nth(i).locator(":scope > title").text_content()).strip()
                assert await charts.nth(i).get_attribute("aria-labelledby")
            unlabelled = await page.evaluate(
                "[...document.querySelectorAll('input,select')].filter(e => e.labels.length === 0).length")
            assert unlabelled == 0
            assert await page.evaluate("getComputedStyle(document.querySelector('section')).borderRadius") == "8px"
            assert await page.evaluate("document.documentElement.scrollWidth") <= 1280
            await page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
            if os.environ.get("LEADSTREAM_UPDATE_SCREENSHOT"):
                await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=False)

            # the motion filter: a GET form, the figures and warnings of that motion
            await page.get_by_label("Motion", exact=True).select_option("inbound")
            await page.get_by_role("button", name="Apply").click()
            await page.wait_for_url("**motion=inbound**")
            assert _number(await page.locator("#kpi-qualified").inner_text()) == \
                inbound["totals"]["qualified_opportunities"]
            assert await page.locator("#funnel tbody tr").count() == 1
            warnings = await page.locator("#warnings").inner_text()
            assert any(w.endswith("comes from paid_search") for w in inbound["warnings"])
            assert all(w in warnings for w in inbound["warnings"])
            assert await page.get_by_label("Motion", exact=True).input_value() == "inbound"  # the form keeps the filter

            # the attribution model: the figures of that model, and the top channel's share under every model
            linear = await api(stack, motion="inbound", attribution="linear")
            linear_channels = await api(stack, motion="inbound", attribution="linear", group_by="channel")
            await page.get_by_label("Attribution model", exact=True).select_option("linear")
            await page.get_by_role("button", name="Apply").click()
            await page.wait_for_url("**attribution=linear**")
            assert await page.get_by_label("Attribution model", exact=True).input_value() == "linear"
            assert _number(await page.locator("#kpi-qualified").inner_text()) == pytest.approx(
                linear["totals"]["qualified_opportunities"], abs=0.5)
            assert await page.locator("#channels tbody tr").count() == len(linear_channels["rows"])
            across = page.locator("#chart-top-channel-models")
            described = await across.locator(":scope > desc").text_content()
            assert all(f"{model}:" in described for model in ("first", "last", "linear", "position", "time_decay",
                                                               "w_shaped"))
            best = max(r["share"] or 0 for r in linear_channels["rows"])
            title = await page.locator("#share-models-title").inner_text()
            assert any(r["channel"] in title for r in linear_channels["rows"] if r["share"] == best)

            # a phone: nothing wider than the screen, tables scroll or become cards inside their section
            phone_context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            await phone_context.add_cookies([cookie])
            phone = await phone_context.new_page()
            await phone.goto(f"{stack.pipeline.url}/dashboard")
            assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
            card = await phone.locator("#latest tbody tr").first.bounding_box()
            assert card is not None and card["width"] <= 390
            await phone.screenshot(path=str(OUTPUT / "dashboard-phone.png"), full_page=True)
            await phone_context.close()

            # sign out: back to the form, and the dashboard stays closed
            await page.get_by_role("button", name="Sign out").click()
            await page.wait_for_selector("#api_key")
            await page.goto(f"{stack.pipeline.url}/dashboard")
            assert await page.locator("#api_key").is_visible()
            assert await page.locator("#kpi-qualified").count() == 0
            assert outside == []  # nothing loaded from anywhere else
        finally:
            await browser.close()
