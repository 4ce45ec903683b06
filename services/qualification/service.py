"""Qualification use cases: plain async functions over the consumer's unit of work.

Each fact (a lead, a prospect, a sales touch) resolves its contact and account, joins the
contact's timeline, and re-qualifies the contact: attribution (first and last touch,
motion), score (fit + engagement under the policy of the motion), forward stage moves
(each one a ``stage_changes`` row and a ``stage.changed`` event) and, on reaching
``sql``, one opportunity and its ``opportunity.qualified`` event — all in the caller's
transaction, the events through the outbox.

Times of derived facts are the time of the fact that caused them (its ``occurred_at``)
and derived ids are name-based (``domain/ids.py``), so a replay into an empty store
rebuilds the same rows and the same event ids. The rules themselves are pure modules in
``domain/`` (identity, attribution, scoring, stages, evaluation); re-scoring a whole store
under another policy is ``rescore.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import PipelineOutbox, Touch
from services.qualification import credits as attribution_credits
from services.qualification import events, records, repository
from services.qualification.domain import attribution, consent, evaluation, identity, ids, stages
from services.qualification.domain.channels import ChannelRules, load_channel_rules
from services.qualification.domain.evaluation import Evaluation
from services.qualification.domain.policy import PolicyError, PolicySet, load_policies
from services.qualification.records import AccountRecord, ContactRecord
from services.qualification.settings import QualificationSettings
from shared.consumer import PermanentError
from shared.db import transaction_time
from shared.events import CloudEvent, LeadCaptured, ProspectAdded, TouchRecorded
from shared.events import LEAD_CAPTURED, event_id_time
from shared.identity import normalise_email
from shared.outbox import stage_event
from shared.privacy import PrivacyKey
from shared.times import as_utc

PolicyFileError = PolicyError

_MILESTONES = {"lead": "lead_at", "mql": "mql_at", "sql": "sql_at", "opportunity": "opportunity_at",
               "customer": "customer_at", "lost": "lost_at"}
_PROFILE_FIELDS = ("first_name", "last_name", "title", "phone", "linkedin_url")
ACCOUNT_FIELDS = events.ACCOUNT_FIELDS


@dataclass(frozen=True)
class Qualifier:
    """The policies and channel rules loaded once at start (and their files), handed to
    every handler."""

    policies: PolicySet
    source: str
    channels: ChannelRules
    # keys the hashes of erased people (facts about one still in flight are dropped); None: no check
    privacy: PrivacyKey | None = None

    @property
    def version(self) -> str:
        return self.policies.version

    def describe(self) -> dict[str, Any]:
        return {"version": self.policies.version, "file": self.source,
                "half_life_days": self.policies.half_life_days,
                "channels": {"version": self.channels.version, "file": self.channels.source}}


def load_qualifier(path: Path | str, channels: Path | str | None = None) -> Qualifier:
    """Load and validate the policy file and the channel rules (by default the
    ``channels.yaml`` beside the policy file, else the configured one); ``PolicyError`` or
    ``ChannelRulesError`` names the file, the line (and the rule)."""
    if channels is None:
        beside = Path(path).with_name("channels.yaml")
        channels = beside if beside.exists() else QualificationSettings().channels_file
    return Qualifier(load_policies(path), str(path), load_channel_rules(channels))


# ---------------------------------------------------------------------- facts in


async def record_lead(session: AsyncSession, q: Qualifier, event: CloudEvent, data: LeadCaptured) -> None:
    """An inbound form submission: contact, account, timeline, re-qualification."""
    with session.no_autoflush:
        at = as_utc(data.occurred_at)
        values = data.model_dump(include=set(_PROFILE_FIELDS + ACCOUNT_FIELDS))
        contact = await _resolve(session, q, event, data, at, motion="inbound")
        if contact is None:
            return
        await _merge_firmographics(session, contact, values, event.type, at, website=data.website)
        channel = q.channels.classify(data.utm.source, data.utm.medium, data.referrer, data.page_url,
                                      data.form_type, data.utm.campaign)
        await _add_touch(session, contact, event, at, motion="inbound", channel=channel, campaign=data.utm.campaign,
                         form_id=data.form_id, form_type=data.form_type, lead_magnet=data.lead_magnet,
                         channel_rules_version=q.channels.version)
        _record_consents(session, contact, consent.of_lead(data.consent, data.form_id, event.id, at))
        await requalify(session, q, contact, cause=event.id, at=at)


async def record_prospect(session: AsyncSession, q: Qualifier, event: CloudEvent, data: ProspectAdded) -> None:
    """A researched contact from a sales tool: enters (or joins) as outbound."""
    with session.no_autoflush:
        at = as_utc(data.occurred_at)
        values = data.model_dump(include=set(_PROFILE_FIELDS + ACCOUNT_FIELDS))
        contact = await _resolve(session, q, event, data, at, motion="outbound")
        if contact is None:
            return
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
        at = as_utc(data.occurred_at)
        contact = await _resolve(session, q, event, data, at, motion="outbound")
        if contact is None:
            return
        if data.rep and not contact.owner:
            contact.owner = data.rep
        if contact.account_domain is None:  # a touch may be the first fact of a person: its account too
            await _join_account(session, contact, at)
        await _add_touch(session, contact, event, at, motion="outbound", channel=data.channel, campaign=data.sequence,
                         sequence=data.sequence, step=data.step, outcome=data.outcome, rep=data.rep)
        _record_consents(session, contact, consent.of_touch(data.outcome, data.channel, event.id, at))
        result = await requalify(session, q, contact, cause=event.id, at=at, flags={data.outcome})
        # side effects of the outcome: a bounce marks the address, an opt-out is remembered
        if result.decision.email_invalid:
            contact.email_invalid = True
        if result.decision.unsubscribed:
            contact.unsubscribed = True


async def prefetch(session: AsyncSession, facts: list[Any], privacy: PrivacyKey | None = None) -> None:
    """Load what a batch of facts will read (contacts, timelines, accounts and, with
    ``privacy``, whether the people it would create were erased) up front."""
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
    if privacy is not None:
        await repository.prefetch_erased(session, [privacy.subject_of(e) for e in repository.unknown(session, emails)])


# ---------------------------------------------------------------------- identity


def _lifts_erasure(event: CloudEvent, data: Any, requested_at: datetime | None) -> bool:
    """A fact about an erased person creates them again only if it is a new marketing opt-in:
    a lead with ``consent.marketing: true`` that capture accepted after the erasure was asked
    (capture drops the others; a fact accepted earlier and still in flight stays erased)."""
    if event.type != LEAD_CAPTURED or data.consent is None or data.consent.marketing is not True:
        return False
    accepted_at = event_id_time(event.id)
    return accepted_at is not None and (requested_at is None or accepted_at >= as_utc(requested_at))


async def _resolve(session: AsyncSession, q: Qualifier, event: CloudEvent, data: Any, at: datetime, *,
                   motion: str) -> ContactRecord | None:
    """The fact's contact, created if new; ``None`` when the person was erased and the fact
    does not lift it (see ``_lifts_erasure``): the fact is then dropped."""
    raw_email = data.email
    try:
        email = normalise_email(raw_email)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc
    contact = await repository.contact_by_email(session, email)
    if contact is not None:
        return contact
    if q.privacy is not None:
        subject = q.privacy.subject_of(email)
        erased = await repository.erased(session, subject)
        if erased is None:
            repository.check_not_erased(session, subject)
        else:
            if not _lifts_erasure(event, data, None if erased is True else erased):
                return None
            repository.lift_erasure(session, subject)
    contact = ContactRecord(
        id=ids.contact_id(email), email=email, email_as_typed=raw_email.strip()[:320],
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
    account_values = {k: v for k, v in values.items() if k in ACCOUNT_FIELDS}
    records.change_account(session, account, partial(_merge_account, account_values, source, at))
    contact.account_domain = domain


async def _join_account(session: AsyncSession, contact: ContactRecord, at: datetime) -> None:
    """The account of the contact's email (none for free mail), for a fact that carries no
    company values (a touch)."""
    domain = identity.account_domain(contact.email)
    if domain is not None:
        await repository.ensure_account(session, domain, at)
        contact.account_domain = domain


def _merge_account(values: dict, source: str, at: datetime, account: AccountRecord) -> None:
    """Merge a fact's company values into the account (replayed at commit onto the row as it
    is then: merging again what is already merged changes nothing)."""
    account.firmographics = identity.merge_firmographics(account.firmographics or {}, values, source, at)
    known = identity.firmographic_values(account.firmographics)
    for name in ACCOUNT_FIELDS:
        if known.get(name) is not None:
            setattr(account, name, known[name])
    account.updated_at = max(as_utc(account.updated_at) or at, at)


# every column, so the touches of a batch go as one multi-row INSERT (same keys in each row)
_TOUCH_FIELDS = dict.fromkeys(c.key for c in Touch.__table__.columns)


async def _add_touch(session: AsyncSession, contact: ContactRecord, event: CloudEvent, at: datetime,
                     **fields: Any) -> None:
    await repository.add_touch(session, {
        **_TOUCH_FIELDS, **fields, "event_id": event.id, "contact_id": contact.id, "event_type": event.type,
        "occurred_at": at, "recorded_at": transaction_time(session), "data": event.data,
    })
    contact.last_activity_at = max(as_utc(contact.last_activity_at) or at, at)
    contact.updated_at = transaction_time(session)


def _record_consents(session: AsyncSession, contact: ContactRecord, facts: list[consent.ConsentFact]) -> None:
    """Add the fact's consent entries to the contact's ledger, in the fact's transaction (the
    inbox makes a redelivered fact record nothing; the ledger's unique cause is the backstop)."""
    for fact in facts:
        repository.add_consent(session, {
            "contact_id": contact.id, "purpose": fact.purpose, "status": fact.status, "text": fact.text,
            "source": fact.source, "occurred_at": fact.occurred_at, "cause_event_id": fact.cause_event_id,
            "recorded_at": transaction_time(session),
        })


# ---------------------------------------------------------------------- qualification


async def requalify(session: AsyncSession, q: Qualifier, contact: ContactRecord, *, cause: str, at: datetime,
                    flags: set[str] | None = None) -> Evaluation:
    """Re-evaluate the contact after a fact and apply what follows (score, stages, opportunity)."""
    policies = q.policies
    timeline = await repository.timeline(session, contact.id)
    facts, real = timeline.facts, timeline.real
    account_values = await account_values_of(session, contact)
    new, contact.entering = contact.entering, False
    since = await repository.entered_stage_at(session, contact.id, "nurture") if contact.stage == "nurture" else None
    # decay up to the latest fact known: the result does not depend on arrival order
    as_of = max(at, facts[-1].occurred_at) if facts else at
    profile = evaluation.profile(contact.firmographics, account_values)
    result = evaluation.evaluate(policies, None if new else contact.stage, contact.email, profile, facts, real,
                                 as_of=as_of, qualified_at=as_utc(contact.sql_at), flags=flags or set(),
                                 since=as_utc(since))
    qualified_at = as_utc(contact.sql_at)
    await apply_evaluation(session, contact, result, policies, cause=cause, at=at, facts=facts, real=real,
                           account_values=account_values)
    if qualified_at is not None and qualified_at == as_utc(contact.sql_at) and at <= qualified_at:
        # a fact that occurred before the qualification (synced late) may change its credits
        # (a touch in the lookback), and the opportunity's motion and first and last touch (any
        # fact: a prospect record or a touch older than the lookback makes it blended too)
        if cause in real and attribution_credits.late_touch_counts(
                qualified_at, at, policies.attribution_lookback_days):
            await refresh_credits(session, policies, contact, facts, real)
        await _refresh_opportunity_touches(session, contact, facts, real)
    return result


async def refresh_credits(session: AsyncSession, policies: PolicySet, contact: ContactRecord,
                          facts: list[attribution.Touch], real: set[str]) -> None:
    """Recompute the credits of the contact's opportunity (if it has one) from its timeline."""
    opportunity_id = await repository.opportunity_of(session, contact.id)
    qualified_at = as_utc(contact.sql_at)
    if opportunity_id is None or qualified_at is None:
        return
    credits = evaluation.credits(policies, facts, real, qualified_at, contact.mql_event_id)
    attribution_credits.note_credits(session, contact, opportunity_id, credits)


async def account_values_of(session: AsyncSession, contact: ContactRecord) -> dict:
    """The contact's account's values (``{}`` without one), as the fit score and the
    ``opportunity.qualified`` event read them."""
    if not contact.account_domain:
        return {}
    account = await repository.account_by_domain(session, contact.account_domain)
    if account is None:
        return {}
    return {"domain": account.domain, **{name: getattr(account, name) for name in ACCOUNT_FIELDS}}


async def apply_evaluation(session: AsyncSession, contact: ContactRecord, result: Evaluation, policies: PolicySet, *,
                           cause: str, at: datetime, facts: list[attribution.Touch], real: set[str],
                           account_values: dict, steps: tuple[str, ...] | None = None) -> list[str]:
    """Store the score and attribution, and every stage entered with its event."""
    attribution_credits.note_contact(session, contact)
    version = policies.version
    fit, engagement = result.fit, result.engagement
    fit_reasons = evaluation.fit_reasons(fit.reasons)
    engagement_reasons = evaluation.reasons_of(engagement.reasons)
    repository.add_score(session, dict(
        contact_id=contact.id, fit_score=float(fit.points), fit_grade=fit.grade, fit_reasons=fit_reasons,
        engagement_score=float(engagement.points), engagement_reasons=engagement_reasons,
        policy_version=version, cause_event_id=ids.event_cause(cause), scored_at=at,
    ))
    contact.fit_score, contact.fit_grade = float(fit.points), fit.grade
    contact.engagement_score = float(engagement.points)
    records.replace_json(contact, "fit_reasons", fit_reasons)  # most often the same: then not written again
    records.replace_json(contact, "engagement_reasons", engagement_reasons)
    contact.policy_version = version
    decision = result.decision
    steps = decision.steps if steps is None else steps
    previous = decision.from_stage if steps is decision.steps else contact.stage
    rule = decision.rule
    opportunity_id = None
    for step in steps:
        if step == "mql" and contact.mql_at is None:
            contact.mql_event_id = ids.event_cause(cause)  # the fact that made it mql (w_shaped credits it)
        if step == stages.QUALIFIED:
            contact.sql_at = at
            result.motion, result.first, result.last = evaluation.attribute(facts, real, at)
            opportunity_id = await _qualify(session, contact, result, version, cause, at, facts, account_values)
            attribution_credits.note_credits(session, contact, opportunity_id, evaluation.credits(
                policies, facts, real, at, contact.mql_event_id))
        contact.stage = step
        _stamp(contact, step, at)
        reason = (f"entered as a {step}" if previous is None else f"{rule} ({version})" if rule else version)
        _record_stage_change(session, contact, previous, step, version, cause, at,
                             opportunity_id if step == stages.QUALIFIED else None, reason=reason)
        previous = step
    contact.motion = result.motion
    records.set_touch(contact, "first", result.first)
    records.set_touch(contact, "last", result.last)
    return list(steps)


def _stamp(contact: ContactRecord, stage: str, at: datetime) -> None:
    column = _MILESTONES.get(stage)
    if column and getattr(contact, column) is None:
        setattr(contact, column, at)


def _record_stage_change(session: AsyncSession, contact: ContactRecord, from_stage: str | None, to_stage: str,
                         version: str, cause: str, at: datetime, opportunity_id: str | None, *, reason: str) -> None:
    event_id = ids.stage_changed_id(contact.id, cause, from_stage, to_stage)
    cause_event_id = ids.event_cause(cause)
    repository.add_stage_change(session, dict(
        contact_id=contact.id, opportunity_id=opportunity_id, from_stage=from_stage, to_stage=to_stage,
        reason=reason, amount=None, changed_by=events.CHANGED_BY, policy_version=version,
        cause_event_id=cause_event_id, event_id=event_id, changed_at=at,
    ))
    event = events.stage_changed(contact, from_stage, to_stage, event_id=event_id, opportunity_id=opportunity_id,
                                 reason=reason, policy_version=version, cause_event_id=cause_event_id, at=at)
    stage_event(session, PipelineOutbox, event, key=contact.email)


def _opportunity_touches(motion: str, first: attribution.Touch | None, last: attribution.Touch | None
                         ) -> dict[str, Any]:
    """An opportunity's motion and its first and last touch before qualification, as columns."""
    return {"motion": motion, **records.touch_values("first", first), **records.touch_values("last", last)}


async def _refresh_opportunity_touches(session: AsyncSession, contact: ContactRecord, facts: list[attribution.Touch],
                                       real: set[str]) -> None:
    """A touch synced late that occurred before the opportunity qualified takes its place in
    the opportunity's motion and first and last touch too (by occurrence, never arrival)."""
    opportunity_id = await repository.opportunity_of(session, contact.id)
    if opportunity_id is None:
        return
    qualified_at = await repository.opportunity_qualified_at(session, contact.id, opportunity_id)
    if qualified_at is not None:
        touches = _opportunity_touches(*evaluation.attribute(facts, real, as_utc(qualified_at)))
        await repository.update_opportunity(session, contact.id, opportunity_id, touches)


async def _qualify(session: AsyncSession, contact: ContactRecord, result: Evaluation, version: str, cause: str,
                   at: datetime, facts: list[attribution.Touch], account_values: dict) -> str:
    """Create the contact's opportunity and its one ``opportunity.qualified`` event."""
    existing = await repository.opportunity_of(session, contact.id)
    if existing is not None:  # qualified before, then nurtured by sales: one per contact, open again
        was = await repository.reopen_nurtured(session, existing, at)
        if was is not None:
            attribution_credits.note_reopened(session, contact, was)
        return existing
    opportunity_id = ids.opportunity_id(contact.id)  # the same after an erasure: the erased one moved away
    fit_, engagement_ = result.fit, result.engagement
    causes = evaluation.caused_by(facts, ids.event_cause(cause), at)
    # the fact that tipped it: the event, or for a re-score the latest fact up to the moment reached
    event_id = ids.opportunity_qualified_id(contact.id, ids.event_cause(cause) or (causes[-1] if causes else cause))
    repository.add_opportunity(session, dict(
        id=opportunity_id, contact_id=contact.id, account_domain=contact.account_domain, stage="sql",
        **_opportunity_touches(result.motion, result.first, result.last), owner=contact.owner,
        fit_score=float(fit_.points), engagement_score=float(engagement_.points), grade=fit_.grade,
        policy_version=version, qualified_event_id=event_id, caused_by=causes, qualified_at=at, updated_at=at,
    ))
    attribution_credits.note_opportunity(session, contact, "sql")
    event = events.opportunity_qualified(contact, account_values, result, opportunity_id=opportunity_id,
                                         event_id=event_id, policy_version=version, caused_by=causes, at=at,
                                         consents=await repository.consents_of(session, contact.id))
    stage_event(session, PipelineOutbox, event, key=contact.email)
    return opportunity_id
