"""The sources dashboard: server-rendered HTML over the same service functions as the API.

Sign-in takes a pipeline API key once and sets an HttpOnly, SameSite=Strict cookie that
holds only the key's id, an expiry and an HMAC (the key itself is never stored in the
browser); every page checks that the key still exists and is not revoked. Pages carry a
strict Content-Security-Policy (no script at all, styles only from ``/dashboard/static``)
and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from services.pipeline import repository, service
from services.pipeline.charts import bar_chart, stacked_columns, top_series, weekly_series
from services.pipeline.schemas import SourcesQuery
from shared.auth import Principal
from shared.errors import ProblemError
from shared.runtime import Runtime

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATIC_PATH = "/dashboard/static"
static_files = StaticFiles(directory=str(Path(__file__).parent / "static"))
COOKIE = "leadstream_session"
MOTIONS = ("inbound", "outbound", "blended")
REASONS_SHOWN = 4
LATEST = 10
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _page(request: Request, template: str, context: dict, status: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _reasons(score) -> list[dict]:  # noqa: ANN001
    """The biggest reasons of a qualifying score, fit and engagement together, by weight."""
    if score is None:
        return []
    reasons = [{"kind": kind, "rule": r.get("rule", "?"), "points": float(r.get("points", 0))}
               for kind, items in (("fit", score.fit_reasons), ("engagement", score.engagement_reasons))
               for r in (items or []) if isinstance(r, dict)]
    return sorted(reasons, key=lambda r: -abs(r["points"]))[:REASONS_SHOWN]


class Sessions:
    """Stateless signed sessions: ``key_id.expiry.mac``."""

    def __init__(self, secret: str | None, hours: float) -> None:
        self.secret = (secret or secrets.token_urlsafe(32)).encode()
        self.seconds = int(hours * 3600)

    def issue(self, key_id: str) -> str:
        expiry = str(int(time.time()) + self.seconds)
        return f"{key_id}.{expiry}.{self._mac(key_id, expiry)}"

    def key_id(self, token: str | None) -> str | None:
        try:
            key_id, expiry, mac = (token or "").split(".")
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(key_id, expiry)) or int(expiry) < time.time():
            return None
        return key_id

    def _mac(self, key_id: str, expiry: str) -> str:
        digest = hmac.new(self.secret, f"{key_id}.{expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def _signed_in(request: Request, runtime) -> Principal | None:  # noqa: ANN001
    key_id = runtime.sessions.key_id(request.cookies.get(COOKIE))
    if key_id is None:
        return None
    principal = await runtime.auth.by_id(key_id)
    return principal if principal and "pipeline" in principal.scopes else None


def _sign_in_page(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    return _page(request, "sign_in.html", {"error": error}, status)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    runtime: Runtime,
    from_text: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to_text: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    motion: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    principal = await _signed_in(request, runtime)
    if principal is None:
        return _sign_in_page(request)
    # a browser form sends empty fields: they mean "no bound"; a bad date is said on the page
    try:
        from_ = date.fromisoformat(from_text) if from_text else None
        to = date.fromisoformat(to_text) if to_text else None
    except ValueError:
        return _page(request, "dashboard.html", {
            "principal": principal, "error": "Dates are YYYY-MM-DD.", "motions": MOTIONS,
            "filters": {"from": from_text, "to": to_text, "motion": motion}}, 422)
    motions = [motion] if motion in MOTIONS else None
    try:
        by = {g: SourcesQuery(**{"from": from_, "to": to, "group_by": g, "motion": motions})
              for g in ("motion", "channel", "campaign")}
    except ValidationError:
        by = {g: SourcesQuery(group_by=g) for g in ("motion", "channel", "campaign")}
    try:
        async with runtime.db.reader() as session:
            figures = {g: await service.source_analytics(session, q, runtime.thresholds) for g, q in by.items()}
            f = repository.SourcesFilter(start=by["motion"].from_, end=by["motion"].to, motions=motions)
            series = await repository.qualified_series(session, f)
            latest = (await repository.list_opportunities(  # one page, plus the row that says "more"
                session, repository.OpportunityQuery(motions=motions, qualified_from=from_, qualified_to=to),
                limit=LATEST, position=None))[:LATEST]
            scores = await repository.qualifying_scores(session, [opp for opp, _ in latest])
    except ProblemError as exc:  # e.g. a range that ends before it starts
        return _page(request, "dashboard.html", {
            "principal": principal, "error": exc.detail, "filters": {"from": from_, "to": to, "motion": motion},
            "motions": MOTIONS}, 422)
    channel_rows = figures["channel"]["rows"]
    by_channel: dict[str, float] = {}
    for row in channel_rows:
        by_channel[row.get("channel") or "unattributed"] = by_channel.get(row.get("channel") or "unattributed", 0) + (
            row["share"] or 0
        )
    by_campaign: dict[str, float] = {}
    for row in figures["campaign"]["rows"]:
        if row.get("campaign"):
            by_campaign[row["campaign"]] = by_campaign.get(row["campaign"], 0) + (row["share"] or 0)
    weeks_m, series_m = weekly_series([(at, m) for at, m, _ in series])
    weeks_c, series_c = weekly_series([(at, c or "unattributed") for at, _, c in series])
    series_c = top_series(series_c)
    charts = {
        "by_motion": stacked_columns("chart-motion", "Qualified opportunities per week, by motion", weeks_m, series_m),
        "by_channel_time": stacked_columns("chart-channel-time", "Qualified opportunities per week, by channel",
                                           weeks_c, series_c),
        "channel_share": bar_chart("chart-channel-share", "Share of qualified pipeline by channel",
                                   sorted(by_channel.items(), key=lambda kv: -kv[1])[:10], percent=True),
        "campaign_share": bar_chart("chart-campaign-share", "Share of qualified pipeline by campaign",
                                    sorted(by_campaign.items(), key=lambda kv: -kv[1])[:10], percent=True),
    }
    return _page(request, "dashboard.html", {
        "principal": principal,
        "filters": {"from": from_, "to": to, "motion": motion},
        "motions": MOTIONS,
        "totals": figures["motion"]["totals"],
        "funnel": figures["motion"]["rows"],
        "channels": channel_rows,
        "concentration_index": figures["channel"]["concentration_index"],
        "warnings": figures["channel"]["warnings"],
        "latest": [{"opportunity": opp, "email": email, "reasons": _reasons(scores.get(opp.id))}
                   for opp, email in latest],
        "charts": charts,
    })


@router.post("/dashboard/sign-in")
async def sign_in(
    request: Request, runtime: Runtime, api_key: Annotated[str, Form(max_length=200)] = ""
) -> HTMLResponse:
    try:
        principal = await runtime.auth.verify(api_key.strip(), "pipeline")
    except ProblemError as exc:
        return _sign_in_page(request, exc.detail, status=exc.status)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, runtime.sessions.issue(principal.key_id), max_age=runtime.sessions.seconds,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/dashboard")
    return response


@router.post("/dashboard/sign-out")
async def sign_out() -> RedirectResponse:
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response
