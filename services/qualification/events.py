"""What qualification publishes, built from values: ``stage.changed`` for every stage a
contact enters and one ``opportunity.qualified`` per contact. The ids are derived from
the cause (``domain/ids.py``) and the time is the cause's, so a replay publishes the same
events; the use cases stage them in the outbox with the facts they announce."""

from __future__ import annotations

from datetime import datetime

from services.qualification.domain import attribution, evaluation, identity
from services.qualification.domain.evaluation import Evaluation
from services.qualification.records import ContactRecord
from shared.consent import current_state, in_ledger_order
from shared.events import (
    OPPORTUNITY_QUALIFIED, STAGE_CHANGED, AccountOut, CloudEvent, ConsentEntryOut, ConsentStateOut, ContactOut,
    OpportunityQualified, ScoreOut, ScoreReason, StageChanged, TouchOut, make_event,
)
from shared.times import as_utc

SOURCE = "/leadstream/qualification"
CHANGED_BY = "qualification"
ACCOUNT_FIELDS = ("company", "industry", "employees", "country", "website")


def stage_changed(contact: ContactRecord, from_stage: str | None, to_stage: str, *, event_id: str,
                  opportunity_id: str | None, reason: str, policy_version: str, cause_event_id: str | None,
                  at: datetime) -> CloudEvent:
    """The ``stage.changed`` event of one move qualification made."""
    # every value comes from the stage machine and the store: construct without re-validating
    data = StageChanged.model_construct(
        contact_id=contact.id, email=contact.email, opportunity_id=opportunity_id, from_stage=from_stage,
        to_stage=to_stage, reason=reason, changed_by=CHANGED_BY, policy_version=policy_version,
        cause_event_id=cause_event_id, changed_at=at,
    )
    return make_event(STAGE_CHANGED, data, source=SOURCE, subject=contact.email, time=at, event_id=event_id)


def touch_out(touch: attribution.Touch | None) -> TouchOut | None:
    if touch is None:
        return None
    return TouchOut(motion=touch.motion, channel=touch.channel, campaign=touch.campaign, form_id=touch.form_id,
                    form_type=touch.form_type, sequence=touch.sequence, event_id=touch.event_id,
                    occurred_at=touch.occurred_at)


def consents_out(entries: list[dict]) -> tuple[list[ConsentEntryOut], dict[str, ConsentStateOut]]:
    """A consent ledger's entries (ledger order) and the current state per purpose, as events carry them."""
    ordered = [ConsentEntryOut(purpose=e["purpose"], status=e["status"], text=e["text"], source=e["source"],
                               occurred_at=as_utc(e["occurred_at"]), cause_event_id=e["cause_event_id"])
               for e in in_ledger_order(entries)]
    state = {purpose: ConsentStateOut(status=e.status, since=e.occurred_at, source=e.source)
             for purpose, e in current_state(ordered).items()}
    return ordered, state


def opportunity_qualified(contact: ContactRecord, account_values: dict, result: Evaluation, *, opportunity_id: str,
                          event_id: str, policy_version: str, caused_by: list[str], at: datetime,
                          consents: list[dict] | None = None) -> CloudEvent:
    """The one ``opportunity.qualified`` event of a contact: who, which account (its
    account's values, or the contact's own without one), attribution, scores, causes and
    the consent ledger as it stands."""
    fit_, engagement_ = result.fit, result.engagement
    fit = ScoreOut(score=float(fit_.points), grade=fit_.grade,
                   reasons=[ScoreReason(**r) for r in evaluation.reasons_of(fit_.reasons)])
    engagement = ScoreOut(score=float(engagement_.points),
                          reasons=[ScoreReason(**r) for r in evaluation.reasons_of(engagement_.reasons)])
    ledger, consent_state = consents_out(consents or [])
    data = OpportunityQualified(
        opportunity_id=opportunity_id,
        contact=ContactOut(id=contact.id, email=contact.email, first_name=contact.first_name,
                           last_name=contact.last_name, title=contact.title, phone=contact.phone,
                           linkedin_url=contact.linkedin_url, owner=contact.owner),
        account=AccountOut(domain=contact.account_domain, **{
            name: account_values.get(name) if account_values else identity.firmographic_values(
                contact.firmographics or {}).get(name)
            for name in ACCOUNT_FIELDS
        }),
        motion=result.motion, first_touch=touch_out(result.first), last_touch=touch_out(result.last),
        fit=fit, engagement=engagement, grade=fit_.grade, policy_version=policy_version, stage="sql",
        qualified_at=at, caused_by=caused_by, consents=ledger, consent_state=consent_state,
    )
    return make_event(OPPORTUNITY_QUALIFIED, data, source=SOURCE, subject=contact.email, time=at, event_id=event_id)
