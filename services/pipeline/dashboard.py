"""The sources dashboard: server-rendered HTML over the same service functions as the API.

Sign-in takes a pipeline API key once and sets an HttpOnly, SameSite=Strict, Secure cookie
holding only a random session token (the key itself is never stored in the browser); the
session lives in the pipeline store (``services/pipeline/sessions.py``), so signing out or
revoking the key ends it at once. Sign-in and sign-out refuse cross-site requests (login
CSRF). Pages carry a strict Content-Security-Policy (no script at all, styles only from
``/dashboard/static``) and ``Cache-Control: no-store``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from pipeline_store.source_rollups import DEFAULT_MODEL, MODELS
from services.pipeline import repository, service, sessions
from services.pipeline.charts import bar_chart, stacked_columns, top_series, weekly_series
from services.pipeline.schemas import BalanceQuery, SourcesQuery
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
BALANCE_LINES = [  # the balance panel's rows: (figure, label, how it is shown)
    ("entrants", "Entrants", "num"), ("fit_share", "Fit share (A/B)", "pct"),
    ("qualified_opportunities", "Qualified opportunities", "num"), ("share", "Share of qualified pipeline", "pct"),
    ("won", "Won", "num"), ("won_amount", "Won amount", "num"), ("entrant_to_sql", "Entrant → SQL", "pct"),
    ("sql_to_customer", "SQL → customer", "pct"), ("median_days_to_sql", "Median days to SQL", "days"),
    ("effort_per_sql", "Effort per opportunity", "effort"), ("share_change_pp", "Share, last 28 days vs before", "pp"),
    ("assisted_share", "Assisted by the other motion", "pct"),
]
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
    """How the dashboard's sessions are kept: their lifetime and the cookie's flags."""

    def __init__(self, hours: float, secure_cookie: bool) -> None:
        self.lifetime = timedelta(hours=hours)
        self.seconds = int(self.lifetime.total_seconds())
        self.secure_cookie = secure_cookie

    def cookie_flags(self, request: Request) -> dict:
        # Secure unless turned off for plain-http development (make run); https is always Secure
        secure = self.secure_cookie or request.url.scheme == "https"
        return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/dashboard"}


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _signed_in(request: Request, runtime) -> Principal | None:  # noqa: ANN001
    async with runtime.db.reader() as session:
        principal = await sessions.principal_of(session, request.cookies.get(COOKIE), _now())
    return principal if principal and "pipeline" in principal.scopes else None


def _sign_in_page(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    return _page(request, "sign_in.html", {"error": error}, status)


def _session_ended(request: Request, runtime) -> HTMLResponse:  # noqa: ANN001
    """A cookie that opens no session (signed out, expired, revoked key, malformed): 401, cleared."""
    response = _sign_in_page(request, "Your session has ended; sign in again.", status=401)
    response.delete_cookie(COOKIE, **runtime.sessions.cookie_flags(request))
    return response


def _cross_site(request: Request) -> bool:
    """True for a request another site made the browser send (login CSRF).

    Fetch Metadata first: browsers send ``Sec-Fetch-Site`` and a page cannot set it; only
    ``same-origin`` and ``none`` (typed by the user) pass. Without it, an ``Origin`` must name
    this host (as the browser sent it in ``Host``). A request with neither is not a browser's
    (curl, scripts) and passes, as in Go's ``http.CrossOriginProtection``."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.lower() not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return True
    return origin == "null" or not netloc or netloc.lower() != request.headers.get("host", "").lower()


CROSS_SITE = "Refused: a cross-site request cannot sign in or out. Open the dashboard and use its form."


def _dates(from_text: str | None, to_text: str | None) -> tuple[date | None, date | None]:
    """The filter's dates; ``ValueError`` saying which one is wrong. A browser form sends empty
    fields: they mean "no bound". The bounds are the API's (``SourcesQuery``)."""
    values = {}
    for name, text in (("from", from_text), ("to", to_text)):
        try:
            values[name] = date.fromisoformat(text) if text else None
        except ValueError:
            raise ValueError(f"Dates are YYYY-MM-DD ({name}).") from None
    try:
        SourcesQuery.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = error["msg"].removeprefix("Value error, ")
        raise ValueError(f"Check the dates ({error['loc'][0]}): {message}.") from None
    return values["from"], values["to"]


def channel_shares(rows: list[dict]) -> dict[str, float]:
    """Each channel's share of qualified pipeline (its rows of every motion together)."""
    out: dict[str, float] = {}
    for row in rows:
        name = row.get("channel") or "unattributed"
        out[name] = out.get(name, 0) + (row["share"] or 0)
    return out


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    runtime: Runtime,
    from_text: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to_text: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    motion: Annotated[str | None, Query(max_length=20)] = None,
    attribution: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    principal = await _signed_in(request, runtime)
    if principal is None:
        return _session_ended(request, runtime) if COOKIE in request.cookies else _sign_in_page(request)
    try:
        from_, to = _dates(from_text, to_text)
        if attribution and attribution not in MODELS:
            raise ValueError(f"Unknown attribution model {attribution!r}; choose one of {', '.join(MODELS)}.")
    except ValueError as exc:
        return _page(request, "dashboard.html", {
            "principal": principal, "error": str(exc), "motions": MOTIONS, "models": MODELS,
            "filters": {"from": from_text, "to": to_text, "motion": motion, "attribution": attribution}}, 422)
    motions = [motion] if motion in MOTIONS else None
    model = attribution if attribution in MODELS else DEFAULT_MODEL
    by = {g: SourcesQuery(**{"from": from_, "to": to, "group_by": g, "motion": motions, "attribution": model})
          for g in ("motion", "channel", "campaign")}
    try:
        async with runtime.db.reader() as session:
            figures = {g: await service.source_analytics(session, q, runtime.thresholds) for g, q in by.items()}
            # the top channel's share under every model: how much the answer depends on the model
            across = {m: figures["channel"] if m == model else await service.source_analytics(
                session, by["channel"].model_copy(update={"attribution": m}), runtime.thresholds) for m in MODELS}
            f = repository.SourcesFilter(start=by["motion"].from_, end=by["motion"].to, motions=motions)
            series = await repository.qualified_series(session, f)
            latest = (await repository.list_opportunities(  # one page, plus the row that says "more"
                session, repository.OpportunityQuery(motions=motions, qualified_from=from_, qualified_to=to),
                limit=LATEST, position=None))[:LATEST]
            scores = await repository.qualifying_scores(session, [opp for opp, _ in latest])
            balance = await service.balance_analytics(session, BalanceQuery(**{"from": from_, "to": to}),
                                                      runtime.thresholds, runtime.balance_thresholds)
    except ProblemError as exc:  # e.g. a range that ends before it starts
        return _page(request, "dashboard.html", {
            "principal": principal, "error": exc.detail, "filters": {"from": from_, "to": to, "motion": motion,
                                                                       "attribution": model},
            "motions": MOTIONS, "models": MODELS}, 422)
    channel_rows = figures["channel"]["rows"]
    by_channel = channel_shares(channel_rows)
    top = max(by_channel.items(), key=lambda kv: (kv[1], kv[0]))[0] if by_channel else None
    top_by_model = [(m, channel_shares(across[m]["rows"]).get(top, 0.0)) for m in MODELS] if top else []
    by_campaign: dict[str, float] = {}
    for row in figures["campaign"]["rows"]:
        if row.get("campaign"):
            by_campaign[row["campaign"]] = by_campaign.get(row["campaign"], 0) + (row["share"] or 0)
    weeks_m, series_m = weekly_series([(day, m, n) for day, m, _, n in series])
    weeks_c, series_c = weekly_series([(day, c, n) for day, _, c, n in series])  # no channel: "unattributed"
    series_c = top_series(series_c)
    charts = {
        "by_motion": stacked_columns("chart-motion", "Qualified opportunities per week, by motion", weeks_m, series_m),
        "by_channel_time": stacked_columns("chart-channel-time", "Qualified opportunities per week, by channel",
                                           weeks_c, series_c),
        "channel_share": bar_chart("chart-channel-share", "Share of qualified pipeline by channel",
                                   sorted(by_channel.items(), key=lambda kv: -kv[1])[:10], percent=True),
        "top_channel_models": bar_chart("chart-top-channel-models", f"Share of qualified pipeline from {top} by "
                                        "attribution model", top_by_model, percent=True),
        "campaign_share": bar_chart("chart-campaign-share", "Share of qualified pipeline by campaign",
                                    sorted(by_campaign.items(), key=lambda kv: -kv[1])[:10], percent=True),
    }
    weeks = balance["trend"]["weeks"]
    charts["balance_trend"] = stacked_columns(
        "chart-balance-trend", "Qualified opportunities per week by entry motion, the 28-day windows",
        [date.fromisoformat(w["from"]) for w in weeks],
        {m: [w["counts"][m] for w in weeks] for m in ("inbound", "outbound")},
    ) if any(w["qualified_opportunities"] for w in weeks) else (
        '<p class="empty">No qualified pipeline in the last 56 days of this range.</p>')
    return _page(request, "dashboard.html", {
        "principal": principal,
        "filters": {"from": from_, "to": to, "motion": motion, "attribution": model},
        "balance": balance,
        "balance_lines": BALANCE_LINES,
        "motions": MOTIONS,
        "models": MODELS,
        "top_channel": top,
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
    if _cross_site(request):
        return _sign_in_page(request, CROSS_SITE, status=403)
    try:
        principal = await runtime.auth.verify(api_key.strip(), "pipeline")
    except ProblemError as exc:
        return _sign_in_page(request, exc.detail, status=exc.status)
    async with runtime.db.unit_of_work() as session:
        token = await sessions.open_session(session, principal.key_id, _now(), runtime.sessions.lifetime)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(COOKIE, token, max_age=runtime.sessions.seconds, **runtime.sessions.cookie_flags(request))
    return response


@router.post("/dashboard/sign-out")
async def sign_out(request: Request, runtime: Runtime) -> HTMLResponse:
    if _cross_site(request):
        return _sign_in_page(request, CROSS_SITE, status=403)
    async with runtime.db.unit_of_work() as session:
        await sessions.close_session(session, request.cookies.get(COOKIE))
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(COOKIE, **runtime.sessions.cookie_flags(request))
    return response
