"""CloudEvents 1.0 envelope (structured JSON mode) and the schemas of every Leadstream event.

The whole event is the Kafka value, with the header ``content-type:
application/cloudevents+json`` (CloudEvents Kafka protocol binding), keyed by the
contact's normalised email.
"""

from __future__ import annotations

import builtins
import os
import re
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError

from shared.tracing import current_traceparent

CONTENT_TYPE = "application/cloudevents+json"

# topics
LEADS_CAPTURED = "leads.captured"
OUTREACH_TOUCHES = "outreach.touches"
OPPORTUNITIES_QUALIFIED = "opportunities.qualified"
PIPELINE_CHANGES = "pipeline.changes"
# erasure requests and each store's report, keyed by the person's keyed hash (never the email)
PRIVACY_REQUESTS = "privacy.requests"
TOPICS = (LEADS_CAPTURED, OUTREACH_TOUCHES, OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES, PRIVACY_REQUESTS)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


ALL_TOPICS = TOPICS + tuple(dlq_topic(t) for t in TOPICS)

# event types
LEAD_CAPTURED = "io.leadstream.lead.captured.v1"
PROSPECT_ADDED = "io.leadstream.prospect.added.v1"
TOUCH_RECORDED = "io.leadstream.touch.recorded.v1"
OPPORTUNITY_QUALIFIED = "io.leadstream.opportunity.qualified.v1"
STAGE_CHANGED = "io.leadstream.stage.changed.v1"
CONTACT_ERASED = "io.leadstream.contact.erased.v1"
ERASURE_REQUESTED = "io.leadstream.erasure.requested.v1"
ERASURE_COMPLETED = "io.leadstream.erasure.completed.v1"
SUPPRESSION_LIFTED = "io.leadstream.suppression.lifted.v1"

FORM_TYPES = (
    "demo_request", "contact_sales", "pricing", "trial_signup", "webinar",
    "content_download", "newsletter", "event", "other",
)
FormType = Literal[
    "demo_request", "contact_sales", "pricing", "trial_signup", "webinar",
    "content_download", "newsletter", "event", "other",
]
INBOUND_CHANNELS = (
    "organic_search", "paid_search", "organic_social", "paid_social", "email", "referral",
    "direct", "event", "webinar", "content", "partner", "other",
)
OUTBOUND_CHANNELS = ("cold_email", "cold_call", "social", "video", "sms", "direct_mail", "event", "other")
OutboundChannel = Literal["cold_email", "cold_call", "social", "video", "sms", "direct_mail", "event", "other"]
OUTCOMES = (
    "sent", "delivered", "opened", "clicked", "replied", "positive_reply", "negative_reply",
    "bounced", "unsubscribed", "connected", "voicemail", "no_answer", "meeting_booked",
    "not_interested",
)
Outcome = Literal[
    "sent", "delivered", "opened", "clicked", "replied", "positive_reply", "negative_reply",
    "bounced", "unsubscribed", "connected", "voicemail", "no_answer", "meeting_booked",
    "not_interested",
]
STAGES = ("prospect", "lead", "mql", "sql", "opportunity", "customer", "lost", "disqualified", "nurture")
Stage = Literal["prospect", "lead", "mql", "sql", "opportunity", "customer", "lost", "disqualified", "nurture"]
Motion = Literal["inbound", "outbound", "blended"]


# W3C Trace Context, version 00: lowercase hex, trace id and parent id not all zeros.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid W3C ``traceparent`` (version 00), else ``None``: the
    recommendation's rule is to drop an invalid one (start a new trace), not to fail the request."""
    if value is not None and len(value) == 55 and _TRACEPARENT.fullmatch(value):
        return value
    return None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Event ids are the primary keys of the rows that record facts (captured leads, the
    pipeline's inbox). Ids that grow with time land at the end of those indexes, so a batch of
    inserts rewrites one page of the index instead of one page per row (uuid4): capture wrote
    ~16 KB to disk per lead with uuid4 ids and ~8 KB with these. Ids stay unique and opaque;
    nothing reads the time back out of them."""
    value = (time.time_ns() // 1_000_000 << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76 | 0x3 << 62)) | 0x7 << 76 | 0x2 << 62  # version 7, RFC variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_id_time(event_id: str) -> datetime | None:
    """When a UUIDv7 event id (``new_event_id``) was made, to the millisecond; ``None`` for
    an id of another kind (a derived, name-based one)."""
    h = event_id.replace("-", "")
    if len(h) != 32 or h[12] != "7":
        return None
    try:
        return datetime.fromtimestamp(int(h[:12], 16) / 1000, timezone.utc)
    except ValueError:
        return None


class _Data(BaseModel):
    # Consumers accept what newer producers add (forward compatible); producers' own
    # request schemas are the strict ones.
    model_config = ConfigDict(extra="allow")


class Utm(_Data):
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None


class Consent(_Data):
    marketing: bool | None = None
    text: str | None = None


class LeadCaptured(_Data):
    email: str
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    title: str | None = None
    phone: str | None = None
    website: str | None = None
    country: str | None = None
    employees: int | None = None
    industry: str | None = None
    form_id: str | None = None
    form_type: FormType | None = None
    lead_magnet: str | None = None
    page_url: str | None = None
    referrer: str | None = None
    utm: Utm = Field(default_factory=Utm)
    consent: Consent | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    occurred_at: datetime


class ProspectAdded(_Data):
    email: str
    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    company: str | None = None
    website: str | None = None
    industry: str | None = None
    employees: int | None = None
    country: str | None = None
    phone: str | None = None
    linkedin_url: str | None = None
    owner: str | None = None
    list: str | None = None
    source: str | None = None
    tags: builtins.list[str] = Field(default_factory=builtins.list)
    occurred_at: datetime


class TouchRecorded(_Data):
    email: str
    channel: OutboundChannel
    outcome: Outcome
    rep: str | None = None
    sequence: str | None = None
    step: int | None = None
    occurred_at: datetime
    external_id: str | None = None
    integration: str | None = None


class ScoreReason(_Data):
    rule: str
    points: float


class ScoreOut(_Data):
    score: float
    reasons: list[ScoreReason] = Field(default_factory=list)
    grade: str | None = None


class TouchOut(_Data):
    motion: Literal["inbound", "outbound"]
    channel: str
    campaign: str | None = None
    form_id: str | None = None
    form_type: str | None = None
    sequence: str | None = None
    event_id: str | None = None
    occurred_at: datetime


class ContactOut(_Data):
    id: str
    email: str
    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    phone: str | None = None
    linkedin_url: str | None = None
    owner: str | None = None


class AccountOut(_Data):
    domain: str | None = None
    company: str | None = None
    industry: str | None = None
    employees: int | None = None
    country: str | None = None
    website: str | None = None


class ConsentEntryOut(_Data):
    """An entry of the contact's consent ledger: a purpose granted or withdrawn by a fact."""

    purpose: str
    status: Literal["granted", "withdrawn"]
    text: str | None = None
    source: str
    occurred_at: datetime
    cause_event_id: str


class ConsentStateOut(_Data):
    """A purpose's current consent: its latest entry's status, since when, and from where."""

    status: Literal["granted", "withdrawn"]
    since: datetime
    source: str


class OpportunityQualified(_Data):
    opportunity_id: str
    contact: ContactOut
    account: AccountOut
    motion: Motion
    first_touch: TouchOut | None = None
    last_touch: TouchOut | None = None
    fit: ScoreOut
    engagement: ScoreOut
    grade: str | None = None
    policy_version: str
    stage: Stage = "sql"
    qualified_at: datetime
    caused_by: list[str] = Field(default_factory=list)
    # the consent ledger as it stood when the contact qualified (ledger order) and its state per purpose
    consents: list[ConsentEntryOut] = Field(default_factory=list)
    consent_state: dict[str, ConsentStateOut] = Field(default_factory=dict)


# A money amount read as a decimal (a JSON number or, as v1 events before 2026-12 carried it, a
# string) and written as a JSON number, as the REST API answers it.
Amount = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class StageChanged(_Data):
    contact_id: str
    email: str
    opportunity_id: str | None = None
    from_stage: Stage | None = None
    to_stage: Stage
    reason: str | None = None
    # with its ISO 4217 currency (the opportunity's), present together
    amount: Amount | None = None
    currency: str | None = None
    changed_by: str
    policy_version: str | None = None
    cause_event_id: str | None = None
    changed_at: datetime


class ContactErased(_Data):
    """A contact's personal data was erased: erase your copies of this contact too.

    Keyed and identified by the contact id alone (the id earlier events carried); no
    personal data. What the store keeps of the contact (stages, scores, amounts, dates) lives
    on under a new pseudonymous id that no event names."""

    contact_id: str
    erased_at: datetime


class ErasureRequested(_Data):
    """Erase everything stored about one person: every store that holds personal data
    erases and answers ``erasure.completed``. ``subject`` is the keyed hash (HMAC-SHA256 with
    ``LEADSTREAM_PRIVACY_SECRET``) of the normalised email, never the email itself."""

    erasure_id: str
    subject: str
    requested_at: datetime


class ErasureCompleted(_Data):
    """One store erased what it held about the subject of an erasure (``records``: how many
    records it erased; 0 when it held nothing)."""

    erasure_id: str
    subject: str
    store: str
    records: int = 0
    completed_at: datetime


class SuppressionLifted(_Data):
    """A new marketing opt-in (a lead with ``consent.marketing: true``) lifted the
    suppression of an erased address: its facts are accepted again."""

    subject: str
    lifted_at: datetime


# type -> (topic, data schema): the one table producers and consumers agree on
EVENT_TYPES: dict[str, tuple[str, type[BaseModel]]] = {
    LEAD_CAPTURED: (LEADS_CAPTURED, LeadCaptured),
    PROSPECT_ADDED: (OUTREACH_TOUCHES, ProspectAdded),
    TOUCH_RECORDED: (OUTREACH_TOUCHES, TouchRecorded),
    OPPORTUNITY_QUALIFIED: (OPPORTUNITIES_QUALIFIED, OpportunityQualified),
    STAGE_CHANGED: (PIPELINE_CHANGES, StageChanged),
    CONTACT_ERASED: (PIPELINE_CHANGES, ContactErased),
    ERASURE_REQUESTED: (PRIVACY_REQUESTS, ErasureRequested),
    ERASURE_COMPLETED: (PRIVACY_REQUESTS, ErasureCompleted),
    SUPPRESSION_LIFTED: (PRIVACY_REQUESTS, SuppressionLifted),
}


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event; ``traceparent`` is the W3C distributed-tracing extension."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_event_id, min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str | None = None
    datacontenttype: str = "application/json"
    traceparent: str | None = None
    data: dict[str, Any]

    @property
    def topic(self) -> str:
        return EVENT_TYPES[self.type][0]

    def to_bytes(self) -> bytes:
        """The event as its Kafka value: JSON without ``None``s, written by pydantic-core in
        one pass (the same bytes as ``orjson.dumps(self.model_dump(mode="json",
        exclude_none=True))`` at half the cost: no intermediate dictionaries)."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

    def parsed_data(self) -> BaseModel:
        """The data validated against the schema of its type (``InvalidEvent`` if unknown or bad)."""
        entry = EVENT_TYPES.get(self.type)
        if entry is None:
            raise InvalidEvent(f"unknown event type {self.type!r}")
        try:
            return entry[1].model_validate(self.data)
        except ValidationError as exc:
            raise InvalidEvent(f"invalid data for {self.type}: {_brief(exc)}") from exc


class InvalidEvent(ValueError):
    """A message that is not a valid event of a known type: it belongs in the dead-letter topic."""


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
    )


def make_event(
    type_: str,
    data: BaseModel | dict[str, Any],
    *,
    source: str,
    subject: str,
    time: datetime | None = None,
    event_id: str | None = None,
    traceparent: str | None = None,
) -> CloudEvent:
    """Build the envelope of a fact; ``subject`` is the contact's normalised email.

    ``data`` is the fact's data model, or that model's JSON-mode dump (without ``None``s)
    when the caller already holds it in that form. An invalid ``traceparent`` (as a client
    sent it) is dropped: only a valid W3C one is published."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    # Every field is built here from validated values: construct without re-validating.
    return CloudEvent.model_construct(
        specversion="1.0",
        id=event_id or new_event_id(),
        source=source,
        type=type_,
        time=time or utcnow(),
        subject=subject,
        datacontenttype="application/json",
        traceparent=current_traceparent() or valid_traceparent(traceparent),
        data=data if isinstance(data, dict) else data.model_dump(mode="json", exclude_none=True),
    )


def parse_event(value: bytes | None) -> CloudEvent:
    """Parse a Kafka value into a CloudEvent of a known type; ``InvalidEvent`` otherwise."""
    if not value:
        raise InvalidEvent("empty message value")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"value is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidEvent("value is not a JSON object")
    try:
        event = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(f"not a CloudEvents 1.0 event: {_brief(exc)}") from exc
    if event.type not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event type {event.type!r}")
    return event
