"""Qualification use cases: plain async functions over the consumer's unit of work.

Each fact (a lead, a prospect, a sales touch) resolves its contact and account, joins the
contact's timeline, and re-qualifies the contact: attribution (first and last touch,
motion), score (fit + engagement under the policy of the motion), forward stage moves
(each one a ``stage_changes`` row and a ``stage.changed`` event) and, on reaching
``sql``, one opportunity and its ``opportunity.qualified`` event — all in the caller's
transaction, the events through the outbox.

Times of derived facts are the time of the fact that caused them (its ``occurred_at``)
and derived ids are name-based (uuid5 of their cause), so a replay into an empty store
rebuilds the same rows and the same event ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter as Tally
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import DATABASE
from pipeline_store.models import PipelineOutbox, Touch
from services.qualification import records, repository
from services.qualification.domain import attribution, identity
from services.qualification.domain import scoring, stages
from services.qualification.domain.policy import PolicyError, PolicySet, load_policies
from services.qualification.records import AccountRecord, ContactRecord
from services.qualification.repository import utc
from shared.consumer import PermanentError, is_transient
from shared.db import transaction_time
from shared.events import (
    OPPORTUNITY_QUALIFIED, STAGE_CHANGED, AccountOut, CloudEvent, ContactOut, LeadCaptured,
    OpportunityQualified, ProspectAdded, ScoreOut, ScoreReason, StageChanged, TouchOut, TouchRecorded,
    make_event,
)
from shared.identity import normalise_email
from shared.outbox import stage_event

SOURCE = "/leadstream/qualification"
CHANGED_BY = "qualification"
PolicyFileError = PolicyError

_NAMESPACE = uuid.UUID("0b6a3f5e-2f7d-4f0e-9d8e-5c1a7e2b9c44")
_CAUSED_BY_LIMIT = 200
_MILESTONES = {"lead": "lead_at", "mql": "mql_at", "sql": "sql_at", "opportunity": "opportunity_at",
               "customer": "customer_at", "lost": "lost_at"}
_PROFILE_FIELDS = ("first_name", "last_name", "title", "phone", "linkedin_url")
_ACCOUNT_FIELDS = ("company", "industry", "employees", "country", "website")


_NAMESPACE_BYTES = _NAMESPACE.bytes


def derived_id(*parts: str) -> str:
    """A name-based id: the same cause always derives the same id (replays are stable).

    ``str(uuid.uuid5(_NAMESPACE, "|".join(parts)))`` (RFC 4122 version 5), without building
    the UUID object: one or more per event on the worker's hot path."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(parts).encode()).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Qualifier:
    """The policies loaded once at start (and their file), handed to every handler."""

    policies: PolicySet
    source: str = ""

    @property
    def version(self) -> str:
        return self.policies.version

    def describe(self) -> dict[str, Any]:
        return {"version": self.policies.version, "file": self.source,
                "half_life_days": self.policies.half_life_days}


def load_qualifier(path: Path | str) -> Qualifier:
    """Load and validate the policy file; ``PolicyError`` names the file and the line."""
    return Qualifier(load_policies(path), str(path))


# ---------------------------------------------------------------------- facts in


async def record_lead(session: AsyncSession, q: Qualifier, event: CloudEvent, data: LeadCaptured) -> None:
    """An inbound form submission: contact, account, timeline, re-qualification."""
    with session.no_autoflush:
        at = utc(data.occurred_at)
        values = data.model_dump(include=set(_PROFILE_FIELDS + _ACCOUNT_FIELDS))
        contact = await _resolve(session, data.email, at, motion="inbound")
        await _merge_firmographics(session, contact, values, event.type, at, website=data.website)
        channel = attribution.derive_inbound_channel(
            data.utm.source, data.utm.medium, data.referrer, data.page_url, data.form_type
        )
        await _add_touch(session, contact, event, at, motion="inbound", channel=channel, campaign=data.utm.campaign,
                         form_id=data.form_id, form_type=data.form_type, lead_magnet=data.lead_magnet)
        await requalify(session, q, contact, cause=event.id, at=at)


async def record_prospect(session: AsyncSession, q: Qualifier, event: CloudEvent, data: ProspectAdded) -> None:
    """A researched contact from a sales tool: enters (or joins) as outbound."""
    with session.no_autoflush:
        at = utc(data.occurred_at)
        values = data.model_dump(include=set(_PROFILE_FIELDS + _ACCOUNT_FIELDS))
        contact = await _resolve(session, data.email, at, motion="outbound")
        await _merge_firmographics(session, contact, values, event.type, at, website=data.website)
        if data.owner and not contact.owner:
            contact.owner = data.owner
        # the prospect record is in the timeline (it is how the contact entered) but has no
        # channel: attribution prefers the first real touch when there is one
        await _add_touch(session, contact, event, at, motion="outbound", channel=None,
                         campaign=data.list or data.source, rep=data.owner)
        await requalify(session, q, contact, cause=event.id, at=at)


async def record_touch(session: AsyncSession, q: Qualifier, event: CloudEvent, data: TouchRecorded) -> None:
    """A sales touch (email, call, social, …) with its outcome, and its side effects."""
    with session.no_autoflush:
        at = utc(data.occurred_at)
        contact = await _resolve(session, data.email, at, motion="outbound")
        if data.rep and not contact.owner:
            contact.owner = data.rep
        await _add_touch(session, contact, event, at, motion="outbound", channel=data.channel, campaign=data.sequence,
                         sequence=data.sequence, step=data.step, outcome=data.outcome, rep=data.rep)
        result = await requalify(session, q, contact, cause=event.id, at=at, flags={data.outcome})
        # side effects of the outcome: a bounce marks the address, an opt-out is remembered
        if result.decision.email_invalid:
            contact.email_invalid = True
        if result.decision.unsubscribed:
            contact.unsubscribed = True


async def prefetch(session: AsyncSession, facts: list[Any]) -> None:
    """Load what a batch of facts will read (contacts, timelines, accounts) up front."""
    emails, domains = set(), set()
    for data in facts:
        try:
            email = normalise_email(data.email)
        except ValueError:
            continue
        emails.add(email)
        domain = identity.account_domain(email, getattr(data, "website", None))
        if domain:
            domains.add(domain)
    await repository.prefetch(session, emails, domains)


# ---------------------------------------------------------------------- identity


async def _resolve(session: AsyncSession, raw_email: str, at: datetime, *, motion: str) -> ContactRecord:
    try:
        email = normalise_email(raw_email)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc
    contact = await repository.contact_by_email(session, email)
    if contact is not None:
        return contact
    contact = ContactRecord(
        id=derived_id("contact", email), email=email, email_as_typed=raw_email.strip()[:320],
        stage=stages.entry_stage(motion), motion=motion, email_invalid=False, unsubscribed=False, firmographics={},
        fit_score=0.0, fit_reasons=[], engagement_score=0.0, engagement_reasons=[],
        created_at=at, updated_at=at, last_activity_at=at,
    )
    repository.add_contact(session, contact)
    contact.entering = True  # requalify records the entry stage change
    return contact


async def _merge_firmographics(session: AsyncSession, contact: ContactRecord, values: dict, source: str, at: datetime,
                               *, website: str | None) -> None:
    merged = identity.merge_firmographics(contact.firmographics or {}, values, source, at)
    contact.firmographics = merged
    plain = identity.firmographic_values(merged)
    for name in _PROFILE_FIELDS:
        if plain.get(name) is not None:
            setattr(contact, name, str(plain[name])[:200 if name != "linkedin_url" else 2048])
    domain = identity.account_domain(contact.email, website or plain.get("website"))
    if domain is None:
        return
    account = await repository.ensure_account(session, domain, at)
    account_values = {k: v for k, v in values.items() if k in _ACCOUNT_FIELDS}
    records.change_account(session, account, partial(_merge_account, account_values, source, at))
    contact.account_domain = domain


def _merge_account(values: dict, source: str, at: datetime, account: AccountRecord) -> None:
    """Merge a fact's company values into the account (replayed at commit onto the row as it
    is then: merging again what is already merged changes nothing)."""
    account.firmographics = identity.merge_firmographics(account.firmographics or {}, values, source, at)
    known = identity.firmographic_values(account.firmographics)
    for name in _ACCOUNT_FIELDS:
        if known.get(name) is not None:
            setattr(account, name, known[name])
    account.updated_at = max(utc(account.updated_at) or at, at)


# every column, so the touches of a batch go as one multi-row INSERT (same keys in each row)
_TOUCH_FIELDS = dict.fromkeys(c.key for c in Touch.__table__.columns)


async def _add_touch(session: AsyncSession, contact: ContactRecord, event: CloudEvent, at: datetime,
                     **fields: Any) -> None:
    await repository.add_touch(session, {
        **_TOUCH_FIELDS, **fields, "event_id": event.id, "contact_id": contact.id, "event_type": event.type,
        "occurred_at": at, "recorded_at": transaction_time(session), "data": event.data,
    })
    contact.last_activity_at = max(utc(contact.last_activity_at) or at, at)
    contact.updated_at = transaction_time(session)


# ---------------------------------------------------------------------- qualification


@dataclass
class Evaluation:
    """What the policy says about a contact after a fact."""

    fit: scoring.FitScore
    engagement: scoring.EngagementScore
    decision: stages.Decision
    motion: str
    first: attribution.Touch | None
    last: attribution.Touch | None


def _attribute(facts: list[attribution.Touch], real: set[str], qualified_at: datetime | None):
    """Motion, first touch, last touch before qualification. A prospect record (no channel)
    counts for the motion, and for first/last touch only when no real touch exists."""
    before = [f for f in facts if qualified_at is None or f.occurred_at <= qualified_at]
    motion = attribution.motion_of({f.motion for f in before} or {facts[0].motion})
    touching = [f for f in facts if f.event_id in real] or facts
    first = last = None
    for fact in touching:
        first = attribution.first_touch(first, fact)
        last = attribution.last_touch_before_qualification(last, fact, qualified_at)
    return motion, first, last


def evaluate(policies: PolicySet, current_stage: str | None, contact: ContactRecord, account_values: dict,
             facts: list[attribution.Touch], real: set[str], *, as_of: datetime, qualified_at: datetime | None,
             flags: set[str], since: datetime | None = None) -> Evaluation:
    """Attribution, scores and the stage decision for a contact's facts, as of ``as_of``."""
    motion, first, last = _attribute(facts, real, qualified_at)
    fit = scoring.fit_score(_profile(contact, account_values), contact.email, policies)
    engagement = scoring.engagement_score(facts, as_of, policies, since=since)
    decision = stages.evaluate(current_stage, motion, fit, engagement, flags, policies)
    return Evaluation(fit, engagement, decision, motion, first, last)


def _profile(contact: ContactRecord, account_values: dict) -> dict:
    values = identity.firmographic_values(contact.firmographics or {})
    for name, value in account_values.items():
        if value is not None and name != "domain":
            values.setdefault(name, value)
    return values


async def requalify(session: AsyncSession, q: Qualifier, contact: ContactRecord, *, cause: str, at: datetime,
                    flags: set[str] | None = None) -> Evaluation:
    """Re-evaluate the contact after a fact and apply what follows (score, stages, opportunity)."""
    policies = q.policies
    timeline = await repository.timeline(session, contact.id)
    facts, real = timeline.facts, timeline.real
    account_values = await _account_values(session, contact)
    new, contact.entering = contact.entering, False
    since = await repository.entered_stage_at(session, contact.id, "nurture") if contact.stage == "nurture" else None
    # decay up to the latest fact known: the result does not depend on arrival order
    as_of = max(at, facts[-1].occurred_at) if facts else at
    result = evaluate(policies, None if new else contact.stage, contact, account_values, facts, real,
                      as_of=as_of, qualified_at=utc(contact.sql_at), flags=flags or set(), since=utc(since))
    await apply_evaluation(session, contact, result, policies.version, cause=cause, at=at, facts=facts, real=real,
                           account_values=account_values)
    return result


async def _account_values(session: AsyncSession, contact: ContactRecord) -> dict:
    if not contact.account_domain:
        return {}
    account = await repository.account_by_domain(session, contact.account_domain)
    if account is None:
        return {}
    return {"domain": account.domain, **{name: getattr(account, name) for name in _ACCOUNT_FIELDS}}


async def apply_evaluation(session: AsyncSession, contact: ContactRecord, result: Evaluation, version: str, *,
                           cause: str, at: datetime, facts: list[attribution.Touch], real: set[str],
                           account_values: dict, steps: tuple[str, ...] | None = None) -> list[str]:
    """Store the score and attribution, and every stage entered with its event."""
    fit, engagement = result.fit, result.engagement
    fit_reasons = _fit_reasons(fit.reasons)
    engagement_reasons = _reasons(engagement.reasons)
    repository.add_score(session, dict(
        contact_id=contact.id, fit_score=float(fit.points), fit_grade=fit.grade, fit_reasons=fit_reasons,
        engagement_score=float(engagement.points), engagement_reasons=engagement_reasons,
        policy_version=version, cause_event_id=cause if not cause.startswith("rescore:") else None, scored_at=at,
    ))
    contact.fit_score, contact.fit_grade, contact.fit_reasons = float(fit.points), fit.grade, fit_reasons
    contact.engagement_score, contact.engagement_reasons = float(engagement.points), engagement_reasons
    contact.policy_version = version
    decision = result.decision
    steps = decision.steps if steps is None else steps
    previous = decision.from_stage if steps is decision.steps else contact.stage
    rule = decision.rule
    opportunity_id = None
    for step in steps:
        if step == stages.QUALIFIED:
            contact.sql_at = at
            result.motion, result.first, result.last = _attribute(facts, real, at)
            opportunity_id = await _qualify(session, contact, result, version, cause, at, facts, account_values)
        contact.stage = step
        _stamp(contact, step, at)
        reason = (f"entered as a {step}" if previous is None else f"{rule} ({version})" if rule else version)
        _record_stage_change(session, contact, previous, step, version, cause, at,
                             opportunity_id if step == stages.QUALIFIED else None, reason=reason)
        previous = step
    contact.motion = result.motion
    _set_touch(contact, "first", result.first)
    _set_touch(contact, "last", result.last)
    return list(steps)


@lru_cache(maxsize=4096)
def _fit_reasons(reasons: tuple) -> list[dict]:
    """The stored form of a fit score's reasons, one list per distinct set: fit scores are
    memoised per profile, so contacts alike share it (and its JSON text when a batch is
    written). Shared: replaced, never changed in place, like every JSON value of a record."""
    return _reasons(reasons)


def _reasons(reasons: Any) -> list[dict]:
    out = []
    for r in reasons or []:
        if isinstance(r, dict):
            out.append({"rule": str(r["rule"]), "points": float(r["points"])})
        elif isinstance(r, tuple | list):
            out.append({"rule": str(r[0]), "points": float(r[1])})
        else:
            out.append({"rule": str(r.rule), "points": float(r.points)})
    return out


def _stamp(contact: ContactRecord, stage: str, at: datetime) -> None:
    column = _MILESTONES.get(stage)
    if column and getattr(contact, column) is None:
        setattr(contact, column, at)


# the contact's columns of its first and last touch, and the attribute of the touch each holds
_TOUCH_COLUMNS = {which: tuple((f"{which}_touch_{attribute}", attribute) for attribute in (
    "motion", "channel", "campaign", "form_id", "sequence", "event_id")) + ((f"{which}_touch_at", "occurred_at"),)
    for which in ("first", "last")}


def _set_touch(contact: ContactRecord, which: str, touch: attribution.Touch | None) -> None:
    for column, attribute in _TOUCH_COLUMNS[which]:
        setattr(contact, column, getattr(touch, attribute) if touch is not None else None)


def _record_stage_change(session: AsyncSession, contact: ContactRecord, from_stage: str | None, to_stage: str,
                         version: str, cause: str, at: datetime, opportunity_id: str | None, *, reason: str) -> None:
    event_id = derived_id("stage.changed", contact.id, cause, from_stage or "", to_stage)
    # every value comes from the stage machine and the store: construct without re-validating
    data = StageChanged.model_construct(
        contact_id=contact.id, email=contact.email, opportunity_id=opportunity_id, from_stage=from_stage,
        to_stage=to_stage, reason=reason, changed_by=CHANGED_BY, policy_version=version,
        cause_event_id=None if cause.startswith("rescore:") else cause, changed_at=at,
    )
    repository.add_stage_change(session, dict(
        contact_id=contact.id, opportunity_id=opportunity_id, from_stage=from_stage, to_stage=to_stage,
        reason=reason, amount=None, changed_by=CHANGED_BY, policy_version=version,
        cause_event_id=data.cause_event_id, event_id=event_id, changed_at=at,
    ))
    event = make_event(STAGE_CHANGED, data, source=SOURCE, subject=contact.email, time=at, event_id=event_id)
    stage_event(session, PipelineOutbox, event, key=contact.email)


def _touch_out(touch: attribution.Touch | None) -> TouchOut | None:
    if touch is None:
        return None
    return TouchOut(motion=touch.motion, channel=touch.channel, campaign=touch.campaign, form_id=touch.form_id,
                    form_type=touch.form_type, sequence=touch.sequence, event_id=touch.event_id,
                    occurred_at=touch.occurred_at)


async def _qualify(session: AsyncSession, contact: ContactRecord, result: Evaluation, version: str, cause: str,
                   at: datetime, facts: list[attribution.Touch], account_values: dict) -> str:
    """Create the contact's opportunity and its one ``opportunity.qualified`` event."""
    existing = await repository.opportunity_of(session, contact.id)
    if existing is not None:  # qualified before (then moved back by sales): one per contact
        return existing
    opportunity_id = derived_id("opportunity", contact.id)
    event_id = derived_id("opportunity.qualified", contact.id)
    fit_, engagement_ = result.fit, result.engagement
    caused_by = [f.event_id for f in facts if f.event_id and f.occurred_at <= at][-_CAUSED_BY_LIMIT:]
    if cause not in caused_by and not cause.startswith("rescore:"):
        caused_by.append(cause)
    fit = ScoreOut(score=float(fit_.points), grade=fit_.grade,
                   reasons=[ScoreReason(**r) for r in _reasons(fit_.reasons)])
    engagement = ScoreOut(score=float(engagement_.points),
                          reasons=[ScoreReason(**r) for r in _reasons(engagement_.reasons)])
    data = OpportunityQualified(
        opportunity_id=opportunity_id,
        contact=ContactOut(id=contact.id, email=contact.email, first_name=contact.first_name,
                           last_name=contact.last_name, title=contact.title, phone=contact.phone,
                           linkedin_url=contact.linkedin_url, owner=contact.owner),
        account=AccountOut(domain=contact.account_domain, **{
            name: account_values.get(name) if account_values else identity.firmographic_values(
                contact.firmographics or {}).get(name)
            for name in _ACCOUNT_FIELDS
        }),
        motion=result.motion, first_touch=_touch_out(result.first), last_touch=_touch_out(result.last),
        fit=fit, engagement=engagement, grade=fit_.grade, policy_version=version, stage="sql",
        qualified_at=at, caused_by=caused_by,
    )
    first, last = result.first, result.last
    repository.add_opportunity(session, dict(
        id=opportunity_id, contact_id=contact.id, account_domain=contact.account_domain, stage="sql",
        motion=result.motion, owner=contact.owner,
        first_touch_motion=first.motion if first else None, first_touch_channel=first.channel if first else None,
        first_touch_campaign=first.campaign if first else None, first_touch_form_id=first.form_id if first else None,
        first_touch_sequence=first.sequence if first else None,
        last_touch_motion=last.motion if last else None, last_touch_channel=last.channel if last else None,
        last_touch_campaign=last.campaign if last else None,
        fit_score=float(fit_.points), engagement_score=float(engagement_.points), grade=fit_.grade,
        policy_version=version, qualified_event_id=event_id, caused_by=caused_by, qualified_at=at, updated_at=at,
    ))
    event = make_event(OPPORTUNITY_QUALIFIED, data, source=SOURCE, subject=contact.email, time=at, event_id=event_id)
    stage_event(session, PipelineOutbox, event, key=contact.email)
    return opportunity_id


# ---------------------------------------------------------------------- re-scoring


@dataclass
class RescoreReport:
    """What a new policy version changes, by motion."""

    version: str
    applied: bool
    contacts: Tally = field(default_factory=Tally)
    grade_changes: Tally = field(default_factory=Tally)
    stage_changes: Tally = field(default_factory=Tally)
    moves: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))

    def lines(self) -> list[str]:
        out = [f"policy {self.version}: {sum(self.contacts.values())} contacts re-scored"]
        for motion in sorted(self.contacts):
            moves = ", ".join(f"{k}: {v}" for k, v in sorted(self.moves[motion].items())) or "none"
            out.append(f"  {motion}: {self.contacts[motion]} contacts, {self.grade_changes[motion]} change grade, "
                       f"{self.stage_changes[motion]} change stage ({moves})")
        return out

    def add(self, other: RescoreReport) -> None:
        self.contacts.update(other.contacts)
        self.grade_changes.update(other.grade_changes)
        self.stage_changes.update(other.stage_changes)
        for motion, moves in other.moves.items():
            self.moves[motion].update(moves)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "applied": self.applied, "contacts": dict(self.contacts),
                "grade_changes": dict(self.grade_changes), "stage_changes": dict(self.stage_changes),
                "moves": {m: dict(t) for m, t in self.moves.items()}}


def replay_timeline(policies: PolicySet, contact: ContactRecord, account_values: dict, facts: list[attribution.Touch],
                    real: set[str]) -> tuple[Evaluation, str, datetime]:
    """The stored history replayed fact by fact under ``policies`` (each fact scored as of
    its own time): the final evaluation, the furthest lifecycle stage reached and when."""
    stage: str | None = None
    best, best_at = None, facts[0].occurred_at
    result = None
    for n in range(1, len(facts) + 1):
        prefix = facts[:n]
        fact = prefix[-1]
        result = evaluate(policies, stage, contact, account_values, prefix, real, as_of=fact.occurred_at,
                          qualified_at=None, flags={fact.outcome} if fact.outcome else set())
        stage = result.decision.to_stage
        if stage in stages.LIFECYCLE and (best is None or stages.LIFECYCLE.index(stage) > stages.LIFECYCLE.index(best)):
            best, best_at = stage, fact.occurred_at
    return result, best or stage, best_at


def forward_steps(current: str, target: str) -> tuple[str, ...]:
    """Lifecycle stages from ``current`` (exclusive) to ``target``; none unless forward
    and from a stage qualification still owns (never back, never out of sales' hands)."""
    if current not in ("prospect", "lead", "mql") or target not in stages.LIFECYCLE:
        return ()
    lo, hi = stages.LIFECYCLE.index(current), stages.LIFECYCLE.index(target)
    return stages.LIFECYCLE[lo + 1:min(hi, stages.LIFECYCLE.index(stages.QUALIFIED)) + 1] if hi > lo else ()


async def rescore_contact(session: AsyncSession, policies: PolicySet, contact: ContactRecord, report: RescoreReport,
                          apply: bool) -> None:
    timeline = await repository.timeline(session, contact.id)
    if not timeline.facts:
        return
    facts, real = list(timeline.facts), timeline.real
    account_values = await _account_values(session, contact)
    result, target, reached_at = replay_timeline(policies, contact, account_values, facts, real)
    # attribution stays as it is for contacts already qualified
    result.motion, result.first, result.last = _attribute(facts, real, utc(contact.sql_at))
    motion = contact.motion
    report.contacts[motion] += 1
    if result.fit.grade != contact.fit_grade:
        report.grade_changes[motion] += 1
    steps = forward_steps(contact.stage, target)
    if steps:
        report.stage_changes[motion] += 1
        report.moves[motion][f"{contact.stage}->{steps[-1]}"] += 1
    if not apply:
        return
    at = reached_at if steps else facts[-1].occurred_at
    await apply_evaluation(session, contact, result, policies.version, cause=f"rescore:{policies.version}", at=at,
                           facts=facts, real=real, account_values=account_values, steps=steps)


async def _rescore_page(db, q: Qualifier, ids: list[str], attempts: int = 5) -> RescoreReport:  # noqa: ANN001
    """Re-score one page of contacts in one transaction, the contacts locked (workers may be
    running); a deadlock or a busy database retries the page, counted once."""
    attempt = 0
    while True:
        attempt += 1
        page = RescoreReport(q.version, True)
        try:
            async with db.unit_of_work() as session:
                for contact_id in ids:
                    contact = await repository.contact_by_id(session, contact_id, lock=True)
                    if contact is not None:
                        await rescore_contact(session, q.policies, contact, page, apply=True)
            return page
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            await asyncio.sleep(0.1 * 2 ** attempt)


async def rescore_all(settings, q: Qualifier, *, apply: bool) -> RescoreReport:  # noqa: ANN001
    """Re-score every contact of the pipeline store under ``q``'s policy version."""
    from shared.db import Database

    db = Database(settings.database_url(DATABASE), pool_size=2)
    report = RescoreReport(q.version, apply)
    try:
        async for ids in repository.iter_contact_ids(db):
            if apply:
                report.add(await _rescore_page(db, q, ids))
            else:
                async with db.reader() as session:
                    for contact_id in ids:
                        contact = await repository.contact_by_id(session, contact_id)
                        await rescore_contact(session, q.policies, contact, report, apply=False)
    finally:
        await db.dispose()
    return report
