"""Pipeline use cases: read the one pipeline, move opportunities, answer the sources question."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import rollups, source_rollups
from pipeline_store.models import Account, Contact, Opportunity, PipelineOutbox, StageChange, TransitionRequest
from services.pipeline import balance, repository, transitions
from services.pipeline.balance import BalanceThresholds
from services.pipeline.analytics import GROUP_KEYS, Thresholds, sources_figures
from services.pipeline.cursor import BadCursor, Position, decode_cursor, encode_cursor
from services.pipeline.schemas import (
    AccountBrief,
    AccountView,
    BalanceQuery,
    ConsentEntryView,
    ConsentState,
    ContactDetail,
    ContactFilters,
    ContactPage,
    ContactProfile,
    ContactSummary,
    CreditedTouch,
    Milestones,
    ModelCredits,
    MotionMix,
    OpportunityAttribution,
    OpportunityFilters,
    OpportunityPage,
    OpportunityView,
    ScoreRecord,
    ScoreView,
    SourcesQuery,
    StageChangeView,
    TimelineEntry,
    Touchpoint,
    TransitionIn,
    TransitionOut,
)
from shared.amounts import NO_EXPECTED_AMOUNTS, ExpectedAmounts
from shared.auth import Principal
from shared.consent import current_state, in_ledger_order
from shared.errors import ProblemError
from shared.events import STAGE_CHANGED, StageChanged, make_event
from shared.identity import normalise_domain, normalise_email
from shared.outbox import stage_event

SOURCE = "/leadstream/pipeline"
ACCOUNT_CONTACTS_LIMIT = 1000


# ---- shaping rows into answers ---------------------------------------------------------


def _query_error(field: str, message: str, kind: str = "value_error") -> ProblemError:
    return ProblemError(422, "The query has invalid parameters.", type_="https://leadstream.dev/problems/validation",
                        errors=[{"field": field, "in": "query", "message": message, "type": kind}])


def _check_range(params: Any, start: str, end: str, start_name: str | None = None) -> None:
    """A range's end must not be before its start; an end given as a date covers its whole day
    (``from=2026-11-13T10:00:00Z&to=2026-11-13`` is ten o'clock to midnight)."""
    low, high = getattr(params, start), getattr(params, end)
    if low is None or high is None:
        return
    low = repository._instant(low)  # noqa: SLF001
    if isinstance(high, datetime):
        backwards = high < low
    else:
        backwards = repository._instant(high + timedelta(days=1)) <= low  # noqa: SLF001
    if backwards:
        raise _query_error(end, f"must not be before {start_name or start}")


def _position(cursor: str | None, kind: str, order: str) -> Position | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, kind, order)
    except BadCursor as exc:
        raise _query_error("cursor", str(exc), "cursor_invalid") from None


def _touch(model: Any, prefix: str) -> Touchpoint | None:
    values = {name: getattr(model, prefix + name)
              for name in ("motion", "channel", "campaign", "form_id", "sequence", "event_id", "at")}
    if all(v is None for v in values.values()):
        return None
    return Touchpoint(**values)


def contact_summary(contact: Contact, company: str | None) -> ContactSummary:
    return ContactSummary(
        id=contact.id, email=contact.email, first_name=contact.first_name, last_name=contact.last_name,
        title=contact.title, company=company, account_domain=contact.account_domain, owner=contact.owner,
        stage=contact.stage, motion=contact.motion, fit_score=contact.fit_score, fit_grade=contact.fit_grade,
        engagement_score=contact.engagement_score,
        first_touch=_touch(contact, "first_touch_"), last_touch=_touch(contact, "last_touch_"),
        created_at=contact.created_at, qualified_at=contact.sql_at, updated_at=contact.updated_at,
    )


def _amount(value: Any) -> float | None:
    return None if value is None else float(value)


def opportunity_view(opp: Opportunity, email: str) -> OpportunityView:
    return OpportunityView(
        id=opp.id, contact_id=opp.contact_id, email=email, account_domain=opp.account_domain, stage=opp.stage,
        motion=opp.motion, owner=opp.owner,
        first_touch=_touch(opp, "first_touch_"), last_touch=_touch(opp, "last_touch_"),
        fit_score=opp.fit_score, engagement_score=opp.engagement_score, grade=opp.grade,
        policy_version=opp.policy_version, amount=_amount(opp.amount),
        amount_estimated=bool(opp.amount_estimated) and opp.amount is not None, currency=opp.currency,
        qualified_event_id=opp.qualified_event_id, caused_by=list(opp.caused_by or []),
        qualified_at=opp.qualified_at, accepted_at=opp.accepted_at, closed_at=opp.closed_at,
        close_reason=opp.close_reason, updated_at=opp.updated_at,
    )


def stage_change_view(change: StageChange) -> StageChangeView:
    return StageChangeView(
        id=change.id, opportunity_id=change.opportunity_id, from_stage=change.from_stage, to_stage=change.to_stage,
        reason=change.reason, amount=_amount(change.amount), changed_by=change.changed_by,
        policy_version=change.policy_version, cause_event_id=change.cause_event_id, event_id=change.event_id,
        changed_at=change.changed_at,
    )


def _account_brief(account: Account) -> AccountBrief:
    return AccountBrief(domain=account.domain, company=account.company, industry=account.industry,
                        employees=account.employees, country=account.country, website=account.website)


# ---- contacts and accounts -------------------------------------------------------------


def _email_filter(text: str) -> str:
    """The contact identity to look for; text that cannot be one matches no contact."""
    try:
        return normalise_email(text)
    except ValueError:
        return text.strip().lower()


async def list_contacts(session: AsyncSession, params: ContactFilters) -> ContactPage:
    _check_range(params, "created_from", "created_to")
    _check_range(params, "qualified_from", "qualified_to")
    query = repository.ContactQuery(
        email=_email_filter(params.email) if params.email else None,
        stages=params.stage, motions=params.motion, channels=params.channel, campaign=params.campaign,
        account=normalise_domain(params.account) if params.account else None, owner=params.owner,
        attribution=params.attribution,
        created_from=params.created_from, created_to=params.created_to,
        qualified_from=params.qualified_from, qualified_to=params.qualified_to,
    )
    position = _position(params.cursor, "contacts", "desc")
    rows = await repository.list_contacts(session, query, limit=params.limit, position=position)
    page, more = rows[: params.limit], len(rows) > params.limit
    last = page[-1][0] if more else None
    return ContactPage(
        items=[contact_summary(c, company) for c, company in page],
        next_cursor=encode_cursor("contacts", "desc", last.created_at, last.id) if last else None,
    )


async def contact_detail(session: AsyncSession, contact_id: str) -> ContactDetail:
    found = await repository.contact(session, contact_id)
    if found is None:
        raise ProblemError(404, f"No contact with id {contact_id!r}.")
    c, account = found
    return ContactDetail(
        **dict(contact_profile(c, account)),
        stage_history=await stage_history(session, c.id),
        score_history=await score_history(session, c.id),
        timeline=await timeline(session, c.id),
        opportunities=[opportunity_view(o, e) for o, e in await repository.opportunities_of(session, contact_id=c.id)],
        **await consent_ledger(session, c.id),
    )


def contact_profile(c: Contact, account: Account | None) -> ContactProfile:
    """The contact's own values, scores and account (without its histories)."""
    summary = contact_summary(c, account.company if account else None)
    return ContactProfile(
        **dict(summary),
        email_as_typed=c.email_as_typed, phone=c.phone, linkedin_url=c.linkedin_url,
        email_invalid=c.email_invalid, unsubscribed=c.unsubscribed,
        fit=ScoreView(score=c.fit_score, grade=c.fit_grade, reasons=list(c.fit_reasons or [])),
        engagement=ScoreView(score=c.engagement_score, reasons=list(c.engagement_reasons or [])),
        policy_version=c.policy_version,
        firmographics=dict(c.firmographics or {}),
        account=_account_brief(account) if account else None,
        milestones=Milestones(lead_at=c.lead_at, mql_at=c.mql_at, sql_at=c.sql_at, opportunity_at=c.opportunity_at,
                              customer_at=c.customer_at, lost_at=c.lost_at),
        last_activity_at=c.last_activity_at,
    )


async def stage_history(session: AsyncSession, contact_id: str) -> list[StageChangeView]:
    return [stage_change_view(s) for s in await repository.stage_history(session, contact_id)]


async def score_history(session: AsyncSession, contact_id: str) -> list[ScoreRecord]:
    return [
        ScoreRecord(
            fit=ScoreView(score=s.fit_score, grade=s.fit_grade, reasons=list(s.fit_reasons or [])),
            engagement=ScoreView(score=s.engagement_score, reasons=list(s.engagement_reasons or [])),
            policy_version=s.policy_version, cause_event_id=s.cause_event_id, scored_at=s.scored_at,
        )
        for s in await repository.score_history(session, contact_id)
    ]


async def consent_ledger(session: AsyncSession, contact_id: str) -> dict[str, Any]:
    """``consents`` (the ledger, in ledger order) and ``consent_state`` (purpose → its latest entry)."""
    entries = [ConsentEntryView.model_validate(e, from_attributes=True)
               for e in in_ledger_order(await repository.consents(session, contact_id))]
    state = {purpose: ConsentState(status=e.status, since=e.occurred_at, source=e.source)
             for purpose, e in current_state(entries).items()}
    return {"consents": entries, "consent_state": state}


async def timeline(session: AsyncSession, contact_id: str) -> list[TimelineEntry]:
    """Every fact about the contact, oldest first, with its payload as received."""
    touches = await repository.timeline(session, contact_id)
    return [TimelineEntry.model_validate(t, from_attributes=True) for t in touches]


async def account_view(session: AsyncSession, domain: str) -> AccountView:
    key = normalise_domain(domain)
    account = await repository.account(session, key)
    if account is None:
        raise ProblemError(404, f"No account with domain {key!r}.")
    contacts = await repository.account_contacts(session, key, ACCOUNT_CONTACTS_LIMIT)
    return AccountView(
        **_account_brief(account).model_dump(),
        firmographics=dict(account.firmographics or {}),
        created_at=account.created_at, updated_at=account.updated_at,
        motion_mix=MotionMix(**await repository.motion_mix(session, key)),
        contacts=[contact_summary(c, account.company) for c in contacts],
        opportunities=[opportunity_view(o, e) for o, e in await repository.opportunities_of(session, domain=key)],
    )


# ---- opportunities ---------------------------------------------------------------------


async def list_opportunities(session: AsyncSession, params: OpportunityFilters) -> OpportunityPage:
    _check_range(params, "qualified_from", "qualified_to")
    _check_range(params, "closed_from", "closed_to")
    query = repository.OpportunityQuery(
        stages=params.stage, motions=params.motion, channels=params.channel, campaign=params.campaign,
        form=params.form, sequence=params.sequence, owner=params.owner,
        account=normalise_domain(params.account) if params.account else None,
        grade=params.grade.upper() if params.grade else None, attribution=params.attribution,
        qualified_from=params.qualified_from, qualified_to=params.qualified_to,
        closed_from=params.closed_from, closed_to=params.closed_to,
    )
    position = _position(params.cursor, "opportunities", params.order)
    rows = await repository.list_opportunities(
        session, query, limit=params.limit, position=position, order=params.order
    )
    page, more = rows[: params.limit], len(rows) > params.limit
    last = page[-1][0] if more else None
    return OpportunityPage(
        items=[opportunity_view(o, e) for o, e in page],
        next_cursor=encode_cursor("opportunities", params.order, last.qualified_at, last.id) if last else None,
    )


async def opportunity_detail(session: AsyncSession, opportunity_id: str) -> OpportunityView:
    found = await repository.opportunity(session, opportunity_id)
    if found is None:
        raise ProblemError(404, f"No opportunity with id {opportunity_id!r}.")
    return opportunity_view(*found)


async def _rollup_facts(session: AsyncSession, contact: Contact,
                        earlier: source_rollups.ContactFacts | None = None) -> source_rollups.ContactFacts:
    """What the contact contributes to the sources rollups as the session sees it now (its
    credits read once: ``earlier``'s, a transition does not change them)."""
    values = {name: getattr(contact, name) for name in source_rollups.CONTACT_COLUMNS}
    opportunities = (await source_rollups.opportunities_of(session, [contact.id])).get(contact.id, ())
    credits = earlier.credits if earlier is not None else (await source_rollups.credits_of(session, [contact.id])).get(
        contact.id)
    return source_rollups.facts_of(values, opportunities, credits)


async def opportunity_attribution(session: AsyncSession, opportunity_id: str) -> OpportunityAttribution:
    """Per model, the opportunity's credited touches (what the sources answer counts)."""
    found = await repository.opportunity(session, opportunity_id)
    if found is None:
        raise ProblemError(404, f"No opportunity with id {opportunity_id!r}.")
    opp = found[0]
    contact = (await repository.contact(session, opp.contact_id))[0]  # type: ignore[index]
    stored: dict[str, list[CreditedTouch]] = {}
    for c in await repository.attribution_credits(session, opportunity_id):  # in touch order
        for model, column in source_rollups.CREDIT_COLUMNS.items():
            credit = getattr(c, column)
            if credit is not None:
                stored.setdefault(model, []).append(CreditedTouch(
                    event_id=c.event_id, motion=c.motion, channel=c.channel, campaign=c.campaign,
                    form_id=c.form_id, sequence=c.sequence, occurred_at=c.occurred_at, credit=credit))
    models = []
    for model in source_rollups.MODELS:
        if model in stored:
            models.append(ModelCredits(model=model, basis="counting_touches", touches=stored[model]))
            continue
        which = "last" if model == "last" else "first"
        touch = _touch(contact, f"{which}_touch_")
        touches = [] if touch is None else [CreditedTouch(
            event_id=touch.event_id, motion=touch.motion, channel=touch.channel, campaign=touch.campaign,
            form_id=touch.form_id, sequence=touch.sequence, occurred_at=touch.at, credit=1.0)]
        models.append(ModelCredits(model=model, basis=f"{which}_touch", touches=touches))
    return OpportunityAttribution(opportunity_id=opp.id, contact_id=opp.contact_id, qualified_at=opp.qualified_at,
                                  credits_as_of=contact.sql_at or opp.qualified_at, models=models)


@dataclass(frozen=True)
class Transition:
    answer: dict[str, Any]
    replayed: bool = False


def fingerprint(opportunity_id: str, body: TransitionIn) -> str:
    payload = {"opportunity_id": opportunity_id, **body.model_dump(mode="json")}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def transition(
    session: AsyncSession, opportunity_id: str, body: TransitionIn, principal: Principal,
    idempotency_key: str | None = None, *, expected_amounts: ExpectedAmounts = NO_EXPECTED_AMOUNTS,
) -> Transition:
    """Move an opportunity and its contact, record who did it, and stage ``stage.changed``.

    A move that carries an amount sets the opportunity's (a win's replaces an expected one);
    an accept without one takes ``expected_amounts``' amount of its motion, marked estimated.
    With an ``Idempotency-Key`` (scoped to the API key) a retry answers what the first
    request answered and changes nothing; the same key with another request is ``409``.
    """
    missing = transitions.missing_fields(body.to, body.reason, body.amount)
    if missing:
        raise ProblemError(422, f"Moving an opportunity to {body.to} needs more fields.", errors=missing,
                           type_="https://leadstream.dev/problems/validation")
    opp = await repository.opportunity_for_update(session, opportunity_id)
    if opp is None:
        raise ProblemError(404, f"No opportunity with id {opportunity_id!r}.")
    scoped_key = f"{principal.key_id}:{idempotency_key}" if idempotency_key else None
    print_ = fingerprint(opportunity_id, body)
    if scoped_key:
        earlier = await repository.transition_request(session, scoped_key)
        if earlier is not None:
            if earlier.fingerprint != print_:
                raise ProblemError(409, "This Idempotency-Key was already used with a different request.",
                                   type_="https://leadstream.dev/problems/idempotency-key-reused")
            return Transition(earlier.response, replayed=True)
    if not transitions.is_allowed(opp.stage, body.to):
        allowed = list(transitions.allowed_transitions(opp.stage))
        detail = (f"The opportunity is in stage {opp.stage!r} and cannot move to {body.to!r}; "
                  + (f"allowed: {', '.join(allowed)}." if allowed else "it is closed, no move is allowed."))
        raise ProblemError(409, detail, type_="https://leadstream.dev/problems/illegal-transition",
                           current_stage=opp.stage, requested=body.to, allowed=allowed)

    now = datetime.now(timezone.utc)
    contact = await repository.contact_for_update(session, opp.contact_id)
    before = rollups.contribution(contact, opp.stage, opp.amount)
    sources_before = await _rollup_facts(session, contact)
    from_stage = opp.stage
    opp.stage, opp.updated_at = body.to, now
    if body.amount is not None:
        opp.amount, opp.amount_estimated = body.amount, False
    elif body.to == "opportunity" and opp.amount is None:
        expected = expected_amounts.for_motion(opp.motion)
        if expected is not None:
            opp.amount, opp.amount_estimated = expected, True
    if body.to == "opportunity":
        opp.accepted_at = now
    else:
        opp.closed_at, opp.close_reason = now, body.reason or None
    contact.stage, contact.updated_at = body.to, now
    milestone = transitions.MILESTONES.get(body.to)
    if milestone and getattr(contact, milestone) is None:
        setattr(contact, milestone, now)
    await repository.move_balance(session, before, rollups.contribution(contact, opp.stage, opp.amount))

    data = StageChanged(
        contact_id=contact.id, email=contact.email, opportunity_id=opp.id, from_stage=from_stage, to_stage=body.to,
        reason=body.reason or None, amount=body.amount, currency=opp.currency if body.amount is not None else None,
        changed_by=principal.name, changed_at=now,
    )
    event = make_event(STAGE_CHANGED, data, source=SOURCE, subject=contact.email, time=now)
    change = StageChange(
        contact_id=contact.id, opportunity_id=opp.id, from_stage=from_stage, to_stage=body.to,
        reason=body.reason or None, amount=body.amount, changed_by=principal.name, event_id=event.id, changed_at=now,
    )
    repository.add(session, change)
    stage_event(session, PipelineOutbox, event, key=contact.email)
    await session.flush()
    # the sources rollups move with the stage and the amount, in this transaction
    await source_rollups.write_difference(session, sources_before,
                                          await _rollup_facts(session, contact, sources_before))
    email = contact.email
    answer = TransitionOut(opportunity=opportunity_view(opp, email), stage_change=stage_change_view(change))
    answer_json = answer.model_dump(mode="json")
    if scoped_key:
        repository.add(session, TransitionRequest(idempotency_key=scoped_key, opportunity_id=opp.id,
                                                  fingerprint=print_, response=answer_json, created_at=now))
    return Transition(answer_json)


# ---- the sources question --------------------------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def rollup_range(query: SourcesQuery) -> repository.RollupRange:
    """Which whole days the rollups answer and which partial days' windows are left (read by
    hours, ``repository._window_periods``): a date bound covers its whole day; a date-time
    bound off midnight leaves a partial day. The calendar's ends saturate: a partial last
    day of 9999 has no whole day after it."""
    start, end = query.from_, query.to
    first_day = last_day = None
    empty = False
    windows: list[tuple[datetime, datetime, bool]] = []
    start_partial = isinstance(start, datetime) and start.timetz() != time(0, tzinfo=timezone.utc)
    if isinstance(start, datetime):
        first_day = start.date()
        if start_partial:
            if first_day == date.max:
                empty = True
            else:
                first_day += timedelta(days=1)
    elif start is not None:
        first_day = start
    if isinstance(end, datetime):
        last_day = end.date()
        if last_day == date.min:
            empty = True
        else:
            last_day -= timedelta(days=1)
        midnight = _midnight(end.date())
        if start_partial and start.date() == end.date():  # type: ignore[union-attr]
            windows.append((start, end, True))  # type: ignore[arg-type]
            start_partial = False
        else:
            windows.append((max(midnight, start) if isinstance(start, datetime) else midnight, end, True))
    elif end is not None:
        last_day = end
    if start_partial:
        day = start.date()  # type: ignore[union-attr]
        until = datetime.max.replace(tzinfo=timezone.utc) if day == date.max else _midnight(day + timedelta(days=1))
        windows.append((start, until, day == date.max))  # type: ignore[arg-type]
    whole = not empty and (first_day is None or last_day is None or first_day <= last_day)
    return repository.RollupRange(model=query.attribution, motions=query.motion, first_day=first_day,
                                  last_day=last_day, whole_days=whole, windows=tuple(windows),
                                  days_key=("motion", *GROUP_KEYS[query.group_by]))


async def source_analytics(
    session: AsyncSession, query: SourcesQuery, thresholds: Thresholds = Thresholds()
) -> dict[str, Any]:
    """Where qualified pipeline comes from and where the business depends on one source.

    The cohort is the contacts whose first touch falls in [from, to]; their funnel is
    counted by milestone reached, their opportunities give pipeline and won amounts.
    Reusable by any caller holding a session (a dashboard page, a scheduled report).
    """
    _check_range(query, "from_", "to", "from")
    sums, days = await repository.rollup_sums(session, rollup_range(query))
    rows, totals, hhi, warnings = sources_figures(
        sums, days, query.group_by, thresholds, skip_motion=bool(query.motion and len(query.motion) == 1))
    return {
        "group_by": query.group_by,
        "attribution": query.attribution,
        "from": query.from_.isoformat() if query.from_ else None,
        "to": query.to.isoformat() if query.to else None,
        "motion": query.motion,
        "date_basis": "first_touch",
        "keys": ["motion"] if query.group_by == "motion" else ["motion", query.group_by],
        "rows": rows,
        "totals": totals,
        "concentration_index": hhi,
        "warnings": warnings,
    }


# ---- the motion balance ----------------------------------------------------------------


def _day(value: date | datetime | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value


async def balance_analytics(
    session: AsyncSession, query: BalanceQuery, thresholds: Thresholds = Thresholds(),
    balance_thresholds: BalanceThresholds = BalanceThresholds(), today: date | None = None,
) -> dict[str, Any]:
    """Which motion the business needs more of: the figures per motion over the contacts
    whose first touch falls in the range, the 28-day trend and the diagnoses, from the
    rollups. ``today`` ends the trend when the range has no end (default: today, UTC)."""
    _check_range(query, "from_", "to", "from")
    start, end = _day(query.from_), _day(query.to)
    windows = balance.Windows(end or today or datetime.now(timezone.utc).date())
    sums = await repository.balance_sums(session, start, end, (windows.prior[0], windows.recent[1]))
    report = balance.answer(sums, windows)
    diagnoses = balance.diagnose(report, balance_thresholds, thresholds)
    return {
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        "date_basis": "first_touch",
        "rows": report["rows"],
        "totals": report["totals"],
        "trend": report["trend"],
        "diagnoses": [d.as_dict() for d in diagnoses],
    }
