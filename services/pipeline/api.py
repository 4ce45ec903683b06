"""Pipeline routes: parse, call the service, shape the answer. No logic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from services.pipeline import service
from services.pipeline.analytics import csv_name, to_csv
from services.pipeline.balance import to_csv as balance_csv
from services.pipeline.schemas import (
    AccountView,
    BalanceQuery,
    ContactDetail,
    ContactFilters,
    ContactPage,
    OpportunityAttribution,
    OpportunityFilters,
    OpportunityPage,
    OpportunityView,
    SourcesQuery,
    TransitionIn,
    TransitionOut,
)
from services.pipeline.auth import PROBLEM, auth_errors, caller_with
from shared.idempotency import write_and_wake
from shared.runtime import Runtime
from shared.web import api_guards, require_json

SCOPE = "pipeline"
authenticate, Caller = caller_with(SCOPE)
AUTH_ERRORS = auth_errors(SCOPE)
QUERY_ERRORS = AUTH_ERRORS | {422: {"description": "Invalid query parameters, each named", **PROBLEM}}

router = APIRouter(prefix="/v1", tags=["pipeline"], dependencies=api_guards(authenticate), responses=AUTH_ERRORS)


@router.get("/contacts", response_model=ContactPage, summary="List contacts", responses=QUERY_ERRORS,
            description="Newest first. Every list answers `{\"items\", \"next_cursor\"}`; the next page is the "
            "same query with `cursor=<next_cursor>`. List filters take repeated values or commas.")
async def list_contacts(params: Annotated[ContactFilters, Query()], runtime: Runtime) -> ContactPage:
    async with runtime.db.reader() as session:
        return await service.list_contacts(session, params)


@router.get("/contacts/{contact_id}", response_model=ContactDetail, summary="One contact, in full",
            responses=AUTH_ERRORS | {404: {"description": "Unknown contact", **PROBLEM}},
            description="Stage and stage history, fit and engagement with reasons and grade, policy version, "
            "motion, first and last touch, firmographics with sources, the full timeline of inbound and "
            "outbound facts (oldest first), the contact's opportunities, and its consent ledger (`consents`) with the "
            "current consent per purpose (`consent_state`).")
async def get_contact(contact_id: str, runtime: Runtime) -> ContactDetail:
    async with runtime.db.reader() as session:
        return await service.contact_detail(session, contact_id)


@router.get("/accounts/{domain}", response_model=AccountView, summary="One account by domain",
            responses=AUTH_ERRORS | {404: {"description": "Unknown account", **PROBLEM}},
            description="Firmographics with sources, contacts, opportunities and the motion mix "
            "(contacts and opportunities per motion).")
async def get_account(domain: str, runtime: Runtime) -> AccountView:
    async with runtime.db.reader() as session:
        return await service.account_view(session, domain)


@router.get("/opportunities", response_model=OpportunityPage, summary="List opportunities", responses=QUERY_ERRORS,
            description="By qualification time, newest first (`order=asc` for oldest first). The cursor is opaque "
            "and keyset-based: walking the pages while new opportunities arrive never skips or repeats one.")
async def list_opportunities(params: Annotated[OpportunityFilters, Query()], runtime: Runtime) -> OpportunityPage:
    async with runtime.db.reader() as session:
        return await service.list_opportunities(session, params)


@router.get("/opportunities/{opportunity_id}", response_model=OpportunityView, summary="One opportunity",
            responses=AUTH_ERRORS | {404: {"description": "Unknown opportunity", **PROBLEM}})
async def get_opportunity(opportunity_id: str, runtime: Runtime) -> OpportunityView:
    async with runtime.db.reader() as session:
        return await service.opportunity_detail(session, opportunity_id)


@router.get("/opportunities/{opportunity_id}/attribution", response_model=OpportunityAttribution,
            summary="How each attribution model credits an opportunity's touches",
            responses=AUTH_ERRORS | {404: {"description": "Unknown opportunity", **PROBLEM}},
            description="Per model (`first`, `last`, `linear`, `position`, `time_decay`, `w_shaped`), each "
            "counting touch (inbound and outbound touches the policy gives positive engagement points, within "
            "the lookback before qualification, by occurrence time) with its event id, motion, channel, "
            "campaign and `occurred_at`, and its credit; credits sum to 1 per model. The qualification they "
            "count back from is `credits_as_of`: the opportunity's `qualified_at`, or the contact's later "
            "qualification when it qualified again after sales nurtured it.")
async def get_opportunity_attribution(opportunity_id: str, runtime: Runtime) -> OpportunityAttribution:
    async with runtime.db.reader() as session:
        return await service.opportunity_attribution(session, opportunity_id)


@router.post(
    "/opportunities/{opportunity_id}/transitions",
    response_model=TransitionOut,
    summary="Move an opportunity: accept, win, lose, disqualify, nurture",
    description="`sql` → `opportunity` (accept, optionally with the expected `amount`; without one, the "
    "motion's expected amount of `scoring.yaml` if it sets one, answered with `amount_estimated: true`); "
    "`opportunity` → `customer` (win, `amount` required: it replaces the expected one); "
    "`sql` or `opportunity` → `lost`, `disqualified` or `nurture` (`reason` required). Amounts are in the "
    "opportunity's currency, greater than 0, at most 13 digits before the point and 2 after. The change is stored "
    "with the API key's name and published as `io.leadstream.stage.changed.v1` on `pipeline.changes`. "
    "Send `Idempotency-Key` to make retries safe: a retry answers the same and changes nothing.",
    dependencies=[Depends(require_json)],
    responses=AUTH_ERRORS | {
        404: {"description": "Unknown opportunity", **PROBLEM},
        409: {"description": "Illegal move (names `current_stage` and `allowed`), or an Idempotency-Key "
              "reused with another request", **PROBLEM},
        415: {"description": "Body not JSON", **PROBLEM},
        422: {"description": "Invalid or missing fields, each named", **PROBLEM},
    },
)
async def post_transition(
    opportunity_id: str,
    body: TransitionIn,
    caller: Caller,
    runtime: Runtime,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Response:
    async def write():  # noqa: ANN202
        async with runtime.db.unit_of_work() as session:
            return await service.transition(session, opportunity_id, body, caller, idempotency_key,
                                            expected_amounts=runtime.expected_amounts)

    # a concurrent request with the same Idempotency-Key committed first: answer as it did
    result = await write_and_wake(runtime.relay, write, retries=1 if idempotency_key else 0,
                                  published=lambda result: not result.replayed)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return JSONResponse(result.answer, headers=headers)


SOURCES_EXAMPLE = {
    "group_by": "channel", "attribution": "first", "from": "2025-01-01", "to": "2025-03-31", "motion": None,
    "date_basis": "first_touch", "keys": ["motion", "channel"],
    "rows": [{
        "motion": "inbound", "channel": "paid_search", "contacts": 120, "leads": 100, "mql": 40, "sql": 20,
        "opportunities": 12, "won": 4, "lead_to_mql": 0.4, "mql_to_sql": 0.5, "sql_to_opportunity": 0.6,
        "opportunity_to_won": 0.3333, "qualified_opportunities": 20, "pipeline_amount": 180000.0,
        "estimated_pipeline_amount": 24000.0, "won_amount": 60000.0, "median_days_to_qualify": 6.5,
        "share": 0.7143, "amount_share": 0.6,
    }],
    "totals": {"contacts": 200, "leads": 170, "mql": 60, "sql": 28, "opportunities": 17, "won": 6,
               "qualified_opportunities": 28, "share": 1.0, "amount_share": 1.0},
    "concentration_index": 0.55,
    "warnings": ["71% of qualified pipeline comes from paid_search"],
}


@router.get(
    "/analytics/sources",
    summary="Where the best opportunities come from, and where we are too dependent",
    responses=QUERY_ERRORS | {200: {
        "description": "Per group: the funnel (contacts that reached each milestone), stage-to-stage "
        "conversion rates, pipeline amount (open and won; `estimated_pipeline_amount` is its part that is "
        "scoring.yaml's expected amount of opportunities accepted without one) and won amount, median "
        "days from first touch to `sql` (read from a histogram kept with the rollups: exact when each middle "
        "value is alone in its bucket, otherwise the mean of the middle buckets' means), "
        "`share` of qualified opportunities by count and `amount_share` of pipeline amount; then totals, the "
        "Herfindahl–Hirschman concentration index over channel shares (0–1) and dependency warnings. "
        "`Accept: text/csv` answers the rows as CSV.",
        "content": {"application/json": {"example": SOURCES_EXAMPLE}, "text/csv": {}},
    }},
    description="The cohort is the contacts whose first touch falls within `from`–`to` (a date includes "
    "its whole day); rows are grouped by the contact's motion and the first-touch (or, with "
    "`attribution=last`, the last touch before qualification) channel, campaign, form or sequence.",
)
async def get_source_analytics(
    params: Annotated[SourcesQuery, Query()], request: Request, runtime: Runtime
) -> Response:
    async with runtime.db.reader() as session:
        report = await service.source_analytics(session, params, runtime.thresholds)
    return _json_or_csv(request, report, lambda: to_csv(report["rows"], report["keys"]), csv_name(report))


BALANCE_EXAMPLE = {
    "from": "2025-01-01", "to": "2025-03-31", "date_basis": "first_touch",
    "rows": [{
        "motion": "inbound", "entrants": 1200, "fit_ab": 372, "fit_share": 0.31, "qualified_opportunities": 72,
        "share": 0.72, "pipeline_amount": 540000.0, "amount_share": 0.64, "won": 12, "won_amount": 180000.0,
        "entrant_to_sql": 0.06, "sql_to_customer": 0.1667, "median_days_to_sql": 3.0,
        "effort_kind": "form_submissions", "effort": 1500, "effort_per_sql": 20.83, "effort_per_sql_recent": 19.5,
        "effort_per_sql_prior": 21.0, "recent_share": 0.75, "prior_share": 0.7, "share_change_pp": 5.0,
        "assisted": 9, "assisted_share": 0.125,
    }],
    "totals": {"entrants": 1500, "qualified_opportunities": 100, "assisted": 14, "assisted_share": 0.14},
    "trend": {"days": 28, "recent": {"from": "2025-03-04", "to": "2025-03-31", "qualified_opportunities": 30},
              "prior": {"from": "2025-02-04", "to": "2025-03-03", "qualified_opportunities": 28},
              "weeks": [], "channels": []},
    "diagnoses": [{
        "rule": "weak_control",
        "sentence": "72 % of qualified pipeline is inbound, yet 31 % of inbound entrants fit (A/B) against 64 % of "
        "outbound prospects: stronger prospecting would add control over who enters",
        "figures": {"inbound_share": 0.72, "inbound_fit_share": 0.31, "outbound_fit_share": 0.64, "fit_gap": 0.33},
    }],
}


@router.get(
    "/analytics/balance",
    summary="Which motion the business needs more of right now",
    responses=QUERY_ERRORS | {200: {
        "description": "Per motion (`inbound`, `outbound`: how contacts entered; `blended`, shown apart: those "
        "the other motion also touched before qualification): entrants and their fit share (grade A or B), "
        "qualified opportunities and their share of qualified pipeline, won and won amount, conversions "
        "entrant → `sql` and `sql` → `customer`, median whole days from first touch to `sql`, effort per "
        "qualified opportunity (form submissions for inbound, sales touches for outbound), the share in the "
        "last 28 days of the range against the 28 days before (in percentage points) and the assisted share; "
        "then the diagnoses, each a rule id, a sentence and its figures. `Accept: text/csv` answers the rows "
        "as CSV.",
        "content": {"application/json": {"example": BALANCE_EXAMPLE}, "text/csv": {}},
    }},
    description="The cohort is the contacts whose first touch falls within `from`–`to` (whole UTC days); "
    "effort counts the form submissions and sales touches that occurred within them. Answered from rollups "
    "kept with every fact, so any range costs the same.",
)
async def get_balance_analytics(
    params: Annotated[BalanceQuery, Query()], request: Request, runtime: Runtime
) -> Response:
    async with runtime.db.reader() as session:
        report = await service.balance_analytics(session, params, runtime.thresholds, runtime.balance_thresholds)
    return _json_or_csv(request, report, lambda: balance_csv(report["rows"]), "balance-by-motion.csv")


def prefers_csv(accept: str) -> bool:
    """Whether an ``Accept`` header prefers ``text/csv`` to JSON (RFC 9110 quality values).
    CSV only when named with a weight above 0; against JSON named too, a tie answers JSON;
    against a wildcard (``*/*``, ``application/*``) at the same weight, the named CSV wins."""
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media:
            ranges[media.lower()] = max(q, ranges.get(media.lower(), 0.0))

    csv = ranges.get("text/csv", 0.0)  # */* alone asks for the default, JSON
    if csv <= 0:
        return False
    if "application/json" in ranges:
        return csv > ranges["application/json"]
    return csv >= ranges.get("application/*", ranges.get("*/*", 0.0))


def _json_or_csv(request: Request, report: dict, csv: Callable[[], str], filename: str) -> Response:
    """An analytics answer as JSON, or its rows as a CSV attachment when the client prefers ``text/csv``."""
    if prefers_csv(request.headers.get("accept", "")):
        return Response(csv(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return JSONResponse(report)
