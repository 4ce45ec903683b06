"""Outreach use cases: prospects and touches stored with their events (outbox) in one
transaction; a touch's ``external_id`` makes a repeat from the same source a no-op (its
``external_key``, ``services.outreach.external_keys``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach import repository
from services.outreach.external_keys import api_key_of, webhook_key_of
from services.outreach.models import OutreachOutbox
from services.outreach.schemas import ProspectIn, TouchFields, TouchIn, WebhookEventIn
from shared.errors import ProblemError, field_errors
from shared.events import PROSPECT_ADDED, TOUCH_RECORDED, ProspectAdded, TouchRecorded, make_event
from shared.identity import normalise_email
from shared.outbox import stage_event
from shared.privacy import PrivacyKey

SOURCE = "/leadstream/outreach"
STORE = "outreach"  # its name in erasure reports
SUPPRESSED = "https://leadstream.dev/problems/suppressed"


def suppressed_problem() -> ProblemError:
    return ProblemError(409, "This address was erased at the person's request and is suppressed: its prospects "
                        "and touches are not accepted (a new marketing opt-in through capture lifts it).",
                        type_=SUPPRESSED)


def suppressed_errors() -> list[dict[str, Any]]:
    return [{"field": "email", "in": "body", "message": "the address was erased and is suppressed",
             "type": "suppressed"}]


def subject_of(privacy: PrivacyKey | None, email: str) -> str | None:
    """The keyed hash of a fact's email, or ``None`` (no key, or not an address: the schema says why)."""
    if privacy is None:
        return None
    try:
        return privacy.subject_of_email(email)
    except ValueError:
        return None


async def _refuse_suppressed(session: AsyncSession, privacy: PrivacyKey | None, email: str) -> None:
    subject = subject_of(privacy, email)
    if subject is not None and await repository.suppressed(session, [subject]):
        raise suppressed_problem()


async def erase(privacy: PrivacyKey, session: AsyncSession, subject: str, _request: object) -> int:
    """An erasure: the prospects and touches (and their outbox rows) of the identities whose
    keyed hash is ``subject`` lose every personal field; how many records were erased."""
    keys = list(privacy.matching(await repository.contact_keys(session), [subject]))
    return await repository.erase(session, keys, subject)


@dataclass(frozen=True)
class Recorded:
    """The answer for one fact: its event id (the first one's for a duplicate), or field errors."""

    status: str  # accepted | duplicate | rejected | ignored
    event_id: str | None = None
    errors: list[dict[str, Any]] | None = None

    @property
    def duplicate(self) -> bool:
        return self.status == "duplicate"


async def add_prospect(
    session: AsyncSession, prospect: ProspectIn, *, api_key_id: str | None = None, traceparent: str | None = None,
    privacy: PrivacyKey | None = None,
) -> Recorded:
    """Store the prospect and its ``prospect.added`` event (``409 suppressed`` for an erased person)."""
    await _refuse_suppressed(session, privacy, prospect.email)
    received_at = datetime.now(timezone.utc)
    contact_key = normalise_email(prospect.email)
    data = ProspectAdded(
        **prospect.model_dump(exclude={"occurred_at"}), occurred_at=prospect.occurred_at or received_at
    )
    event = make_event(
        PROSPECT_ADDED, data, source=SOURCE, subject=contact_key, time=data.occurred_at, traceparent=traceparent
    )
    repository.add_prospect(
        session, event_id=event.id, email=prospect.email, contact_key=contact_key, api_key_id=api_key_id,
        payload=event.data, received_at=received_at,
    )
    stage_event(session, OutreachOutbox, event, key=contact_key)
    return Recorded("accepted", event.id)


def _stage_touch(
    session: AsyncSession,
    touch: TouchFields,
    *,
    received_at: datetime,
    external_id: str | None,
    external_key: str | None,
    integration: str | None,
    api_key_id: str | None,
    traceparent: str | None,
) -> str:
    contact_key = normalise_email(touch.email)
    occurred_at = touch.occurred_at or received_at
    # TouchFields is stricter than TouchRecorded, so the validated touch is valid event data as it is.
    data = TouchRecorded.model_construct(**(
        {k: v for k, v in touch if k != "external_id"}
        | {"occurred_at": occurred_at, "external_id": external_id, "integration": integration}
    ))
    event = make_event(
        TOUCH_RECORDED, data, source=SOURCE, subject=contact_key, time=occurred_at, traceparent=traceparent
    )
    repository.add_touch(
        session, event_id=event.id, email=touch.email, contact_key=contact_key, channel=touch.channel,
        outcome=touch.outcome, external_id=external_id, external_key=external_key, integration=integration,
        api_key_id=api_key_id,
        # UTC in the column: SQLite keeps no offset, so a local time would sort wrongly
        payload=event.data, occurred_at=occurred_at.astimezone(timezone.utc), received_at=received_at,
    )
    stage_event(session, OutreachOutbox, event, key=contact_key)
    return event.id


async def record_touch(
    session: AsyncSession,
    touch: TouchFields,
    *,
    external_id: str | None = None,
    external_key: str | None = None,
    integration: str | None = None,
    api_key_id: str | None = None,
    traceparent: str | None = None,
    privacy: PrivacyKey | None = None,
) -> Recorded:
    """Store the touch and its ``touch.recorded`` event, unless ``external_key`` (its
    ``external_id`` within its source: ``api_key_of``, ``webhook_key_of``) was seen: then
    answer the first one's event id and change nothing (the repeat may differ; the first
    fact stands, as a sales tool's redelivery is the same touch). An erased person's touch
    is ``409 suppressed``."""
    if external_key is not None:
        existing = await repository.touch_event_ids_by_external_key(session, [external_key])
        if external_key in existing:
            return Recorded("duplicate", existing[external_key])
    await _refuse_suppressed(session, privacy, touch.email)
    event_id = _stage_touch(
        session, touch, received_at=datetime.now(timezone.utc), external_id=external_id,
        external_key=external_key, integration=integration, api_key_id=api_key_id, traceparent=traceparent,
    )
    return Recorded("accepted", event_id)


async def record_touches(
    session: AsyncSession, items: Sequence[Any], *, key_name: str, api_key_id: str | None = None,
    traceparent: str | None = None, privacy: PrivacyKey | None = None,
) -> list[Recorded]:
    """A batch from the API key named ``key_name``: each item validated on its own; valid
    ones stored (repeats of an ``external_id`` this key's name stored, or an earlier item's,
    are duplicates), invalid ones rejected with field errors, an erased person's rejected as
    ``suppressed``."""
    parsed: list[TouchIn | list[dict[str, Any]]] = []
    for item in items:
        try:
            parsed.append(TouchIn.model_validate(item))
        except ValidationError as exc:
            parsed.append(field_errors(list(exc.errors())))
    keys = {id(p): api_key_of(key_name, p.external_id) for p in parsed if isinstance(p, TouchIn)}
    known = await repository.touch_event_ids_by_external_key(session, {k for k in keys.values() if k})
    subjects = {id(p): subject_of(privacy, p.email) for p in parsed if isinstance(p, TouchIn)}
    blocked = await repository.suppressed(session, {s for s in subjects.values() if s is not None})
    received_at = datetime.now(timezone.utc)
    results: list[Recorded] = []
    for item in parsed:
        if not isinstance(item, TouchIn):
            results.append(Recorded("rejected", errors=item))
        elif keys[id(item)] in known:
            results.append(Recorded("duplicate", known[keys[id(item)]]))
        elif subjects[id(item)] in blocked:
            results.append(Recorded("rejected", errors=suppressed_errors()))
        else:
            event_id = _stage_touch(
                session, item, received_at=received_at, external_id=item.external_id,
                external_key=keys[id(item)], integration=None, api_key_id=api_key_id, traceparent=traceparent,
            )
            if keys[id(item)]:
                known[keys[id(item)]] = event_id
            results.append(Recorded("accepted", event_id))
    return results


def webhook_external_id(integration: str, tool_event_id: str) -> str:
    """The external id a webhook's touch is stored and published with (its idempotency is
    ``webhook_key_of(integration, tool_event_id)``, apart from API callers' ids)."""
    return f"{integration}:{tool_event_id}"


async def record_webhook_event(
    session: AsyncSession, integration: str, event: WebhookEventIn, *, traceparent: str | None = None,
    privacy: PrivacyKey | None = None,
) -> Recorded:
    """A signed webhook event: a ``touch`` is recorded once per tool event id; other types ignored."""
    if event.type != "touch":
        return Recorded("ignored")
    if event.touch is None:
        raise ProblemError(
            422, "The request has invalid fields.", type_="https://leadstream.dev/problems/validation",
            errors=[{"field": "touch", "in": "body", "message": "required when type is 'touch'", "type": "missing"}],
        )
    return await record_touch(
        session, event.touch, external_id=webhook_external_id(integration, event.id),
        external_key=webhook_key_of(integration, event.id), integration=integration, traceparent=traceparent,
        privacy=privacy,
    )
