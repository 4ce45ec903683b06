"""Capture use cases: accept a lead (fact + outbox event in one transaction), record spam."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncSession

from services.capture import repository
from services.capture.forms import Form
from services.capture.models import CaptureOutbox
from services.capture.schemas import LeadIn
from shared.errors import ProblemError
from shared.events import LEAD_CAPTURED, make_event, new_event_id
from shared.identity import normalise_email
from shared.outbox import stage_event
from shared.privacy import PrivacyKey, scrub, stage_lifted

SOURCE = "/leadstream/capture"
STORE = "capture"  # its name in erasure reports


@dataclass(frozen=True)
class Capture:
    event_id: str
    duplicate: bool = False
    dropped: bool = False  # an erased person's lead without a new opt-in: answered, not published


def hint(privacy: PrivacyKey, lead: LeadIn, idempotency_key: str | None) -> tuple[str | None, str]:
    """What the group commit looks up for this lead with the others of its batch
    (``repository.prefetch``): its Idempotency-Key and its subject (keyed hash)."""
    return idempotency_key, privacy.subject_of_email(lead.email)


def fingerprint(lead: LeadIn) -> str:
    return hashlib.sha256(orjson.dumps(lead.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


_TIME = TypeAdapter(datetime)


def event_data(lead: LeadIn, occurred_at: datetime) -> dict:
    """The ``lead.captured`` data in its JSON form. LeadIn has LeadCaptured's fields and is
    stricter, so the validated lead's own dump is the event's data: no second model is built."""
    data = lead.model_dump(mode="json", exclude_none=True)
    data["occurred_at"] = _TIME.dump_python(occurred_at, mode="json")
    return data


def apply_form(lead: LeadIn, form: Form | None) -> LeadIn:
    """A declared form fills what the submission left out (its id, type and lead magnet); its
    honeypot (empty, or the lead would be spam) is no custom field."""
    if form is None:
        return lead
    update = {
        "form_id": form.id,
        "form_type": lead.form_type or form.form_type,
        "lead_magnet": lead.lead_magnet or form.lead_magnet,
    }
    if form.honeypot in lead.fields:
        update["fields"] = {k: v for k, v in lead.fields.items() if k != form.honeypot}
    return lead.model_copy(update=update)


async def capture_lead(
    session: AsyncSession,
    lead: LeadIn,
    *,
    idempotency_key: str | None = None,
    client_address: str | None = None,
    traceparent: str | None = None,
    subject: str | None = None,
    privacy: PrivacyKey | None = None,
) -> Capture:
    """Store the lead and its ``lead.captured`` event; a repeated idempotency key returns the first.

    A lead of an erased person (``subject`` on the suppression list) is dropped, and answered
    as if stored, unless it carries a new marketing opt-in (``consent.marketing: true``):
    that lifts the suppression here and, through ``suppression.lifted``, in the other stores.
    A dropped lead leaves a ``dropped`` row without the address (``_drop``), so a retry with
    its Idempotency-Key gets the same answer."""
    received_at = datetime.now(timezone.utc)
    print_ = fingerprint(lead) if idempotency_key else None
    if idempotency_key:
        existing = await repository.lead_by_idempotency_key(session, idempotency_key)
        if existing is not None:
            stored = existing["request_fingerprint"]
            if stored != print_ and (privacy is None or stored != privacy.subject_of(print_)):
                raise ProblemError(
                    409,
                    "This Idempotency-Key was already used with a different request body.",
                    type_="https://leadstream.dev/problems/idempotency-key-reused",
                )
            return Capture(existing["event_id"], duplicate=True)
    contact_key = normalise_email(lead.email)
    if subject is not None and await repository.is_suppressed(session, subject):
        if not (lead.consent is not None and lead.consent.marketing is True):
            return _drop(session, lead, subject, idempotency_key, print_, received_at, privacy)
        repository.lift_suppression(session, subject)
        stage_lifted(session, CaptureOutbox, subject, STORE)
    occurred_at = lead.occurred_at or received_at
    event = make_event(
        LEAD_CAPTURED, event_data(lead, occurred_at), source=SOURCE, subject=contact_key, time=occurred_at,
        traceparent=traceparent,
    )
    repository.add_lead(
        session,
        **dict(
            event_id=event.id,
            email=lead.email,
            contact_key=contact_key,
            form_id=lead.form_id,
            form_type=lead.form_type,
            status="accepted",
            client_address=client_address,
            payload=event.data,
            idempotency_key=idempotency_key,
            request_fingerprint=print_,
            received_at=received_at,
        ),
    )
    stage_event(session, CaptureOutbox, event, key=contact_key)
    return Capture(event.id)


def _drop(session: AsyncSession, lead: LeadIn, subject: str, idempotency_key: str | None, print_: str | None,
          received_at: datetime, privacy: PrivacyKey | None) -> Capture:
    """An erased person's lead without a new opt-in: never published, kept as an erasure
    leaves a lead (filed under the subject, without address, personal fields or client
    address), with the idempotency record, so a retry gets the same answer and event id.
    The request's fingerprint is keyed (a plain hash of a body that is just an address could
    be matched against guessed addresses)."""
    event_id = new_event_id()
    repository.add_lead(
        session,
        **dict(
            event_id=event_id,
            email="",
            contact_key=subject,
            form_id=lead.form_id,
            form_type=lead.form_type,
            status="dropped",
            client_address=None,
            payload=scrub(event_data(lead, lead.occurred_at or received_at)),
            idempotency_key=idempotency_key,
            request_fingerprint=privacy.subject_of(print_) if print_ and privacy else print_,
            received_at=received_at,
        ),
    )
    return Capture(event_id, dropped=True)


def _spam_key(email: str) -> str:
    """The contact a spam submission names, for review; spam may name none."""
    try:
        return normalise_email(email)
    except ValueError:
        return email.strip().lower()


async def record_spam(
    session: AsyncSession, form: Form, payload: dict, reason: str, client_address: str | None,
    subject: str | None = None,
) -> Capture:
    """Keep the spam for review (``payload``: what was sent, bounded); it is never published.
    The answer looks like a success. Spam naming an erased person (``subject`` on the
    suppression list) is kept as a dropped lead is: filed under the subject, without the
    address, personal fields or client address."""
    email = str(payload.get("email") or "")[:320]
    row = dict(email=email, contact_key=_spam_key(email), payload=payload, client_address=client_address)
    if subject is not None and await repository.is_suppressed(session, subject):
        row = dict(email="", contact_key=subject, payload=scrub(payload), client_address=None)
    event_id = new_event_id()
    repository.add_lead(
        session,
        **row,
        **dict(
            event_id=event_id,
            form_id=form.id,
            form_type=form.form_type,
            status="spam",
            spam_reason=reason,
            received_at=datetime.now(timezone.utc),
            idempotency_key=None,
            request_fingerprint=None,
        ),
    )
    return Capture(event_id)


def spam_subject(privacy: PrivacyKey, payload: dict) -> str | None:
    """The subject of the address a spam submission names; ``None`` if it names none."""
    try:
        return privacy.subject_of_email(str(payload.get("email") or ""))
    except ValueError:
        return None


async def erase(privacy: PrivacyKey, session: AsyncSession, subject: str, _request: object) -> int:
    """An erasure: the leads (and their outbox rows) of the identities whose keyed hash is
    ``subject`` lose every personal field; how many leads were erased."""
    keys = list(privacy.matching(await repository.contact_keys(session), [subject]))
    return await repository.erase_leads(session, keys, subject)
