"""The pipeline store: written by qualification (and pipeline transitions), read by pipeline."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    JSON, BigInteger, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, Numeric, String, Text,
    UniqueConstraint, false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.api_keys import ApiKeyMixin
from shared.consumer import InboxMixin
from shared.outbox import OutboxMixin
from shared.privacy import SuppressionMixin

BigId = BigInteger().with_variant(Integer, "sqlite")
BIG_ID_RANGE = range(-(2**63), 2**63)  # what a BigId holds on both backends (a signed 64-bit integer)


class StoreBase(DeclarativeBase):
    pass


class Account(StoreBase):
    """A company, by registrable domain (never a free-mail domain)."""

    __tablename__ = "accounts"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    company: Mapped[str | None] = mapped_column(String(200), nullable=True)
    industry: Mapped[str | None] = mapped_column(String(200), nullable=True)
    employees: Mapped[int | None] = mapped_column(Integer, nullable=True)
    country: Mapped[str | None] = mapped_column(String(100), nullable=True)
    website: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    firmographics: Mapped[dict] = mapped_column(JSON, default=dict)  # field -> {value, source, at}
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# the columns ``GET /v1/contacts`` and ``GET /v1/opportunities`` filter on by equality: each
# index ends with the list's time order, so a filtered page walks it in order and stops after
# one page instead of sorting every match (migration 0016)
LIST_FILTERS = ("stage", "motion", "owner", "account_domain", "first_touch_channel")


class Contact(StoreBase):
    """A person, by normalised email; stage, scores, attribution and milestone times."""

    __tablename__ = "contacts"
    # the analytics' cohort (first touch, else created) and what a range's reader needs of each
    # contact: answered from the index alone (migration 0015)
    __table_args__ = (Index("ix_contacts_cohort", "first_touch_at", "created_at", "motion", "id"),
                      *(Index(f"ix_contacts_{c}", c, "created_at") for c in LIST_FILTERS))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised
    email_as_typed: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(50), nullable=True)
    linkedin_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    account_domain: Mapped[str | None] = mapped_column(ForeignKey("accounts.domain"), nullable=True)
    firmographics: Mapped[dict] = mapped_column(JSON, default=dict)  # field -> {value, source, at}

    stage: Mapped[str] = mapped_column(String(20))
    motion: Mapped[str] = mapped_column(String(10))  # inbound | outbound | blended
    email_invalid: Mapped[bool] = mapped_column(Boolean, default=False)
    unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)

    first_touch_motion: Mapped[str | None] = mapped_column(String(10), nullable=True)
    first_touch_channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    first_touch_campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # indexed first in ix_contacts_cohort (below): the sources answer reads the contacts of a
    # partial first or last hour, the dashboard's weekly series a range's contacts
    first_touch_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_touch_motion: Mapped[str | None] = mapped_column(String(10), nullable=True)
    last_touch_channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_touch_campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_touch_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    fit_score: Mapped[float] = mapped_column(Float, default=0.0)
    fit_grade: Mapped[str | None] = mapped_column(String(2), nullable=True)
    fit_reasons: Mapped[list] = mapped_column(JSON, default=list)
    engagement_score: Mapped[float] = mapped_column(Float, default=0.0)
    engagement_reasons: Mapped[list] = mapped_column(JSON, default=list)
    policy_version: Mapped[str | None] = mapped_column(String(100), nullable=True)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # first fact's time
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_activity_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # milestones: when the contact first reached each stage (analytics count these)
    lead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    mql_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sql_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    opportunity_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    customer_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lost_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the fact that made the contact mql (w_shaped attribution credits it)
    mql_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Touch(StoreBase):
    """Every inbound and outbound fact about a contact: the timeline."""

    __tablename__ = "touches"
    __table_args__ = (Index("ix_touches_contact_time", "contact_id", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"))
    event_type: Mapped[str] = mapped_column(String(100))
    motion: Mapped[str] = mapped_column(String(10))
    channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # the version of deploy/config/channels.yaml that classified an inbound touch
    channel_rules_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    form_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lead_magnet: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(40), nullable=True)
    rep: Mapped[str | None] = mapped_column(String(200), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict] = mapped_column(JSON)


class ConsentEntry(StoreBase):
    """One entry of a contact's consent ledger: a purpose granted or withdrawn, by which fact
    (a form's consent or opt-out, an ``unsubscribed`` touch), in the fact's transaction.
    Append-only; the current state per purpose is the latest entry (``shared/consent.py``)."""

    __tablename__ = "consent_ledger"
    __table_args__ = (
        # one entry per fact and purpose: the same event applied twice records once
        UniqueConstraint("cause_event_id", "purpose", name="uq_consent_ledger_cause"),
        Index("ix_consent_ledger_contact", "contact_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"))
    purpose: Mapped[str] = mapped_column(String(40))  # marketing
    status: Mapped[str] = mapped_column(String(10))  # granted | withdrawn
    text: Mapped[str | None] = mapped_column(Text, nullable=True)  # the wording the person agreed to
    source: Mapped[str] = mapped_column(String(250))  # form:<form id>, form, outreach:<channel>
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cause_event_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Score(StoreBase):
    """Every score a contact was given, with reasons and the policy version that made it."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), index=True)
    fit_score: Mapped[float] = mapped_column(Float)
    fit_grade: Mapped[str | None] = mapped_column(String(2), nullable=True)
    fit_reasons: Mapped[list] = mapped_column(JSON)
    engagement_score: Mapped[float] = mapped_column(Float)
    engagement_reasons: Mapped[list] = mapped_column(JSON)
    policy_version: Mapped[str] = mapped_column(String(100))
    cause_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Opportunity(StoreBase):
    """A qualified opportunity (created when a contact reaches ``sql``)."""

    __tablename__ = "opportunities"
    __table_args__ = (Index("ix_opportunities_qualified", "qualified_at", "id"),
                      *(Index(f"ix_opportunities_{c}", c, "qualified_at") for c in LIST_FILTERS))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), index=True)
    account_domain: Mapped[str | None] = mapped_column(String(255), nullable=True)
    stage: Mapped[str] = mapped_column(String(20))
    motion: Mapped[str] = mapped_column(String(10))
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_motion: Mapped[str | None] = mapped_column(String(10), nullable=True)
    first_touch_channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    first_touch_campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    first_touch_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_touch_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_touch_motion: Mapped[str | None] = mapped_column(String(10), nullable=True)
    last_touch_channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_touch_campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_touch_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_touch_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    fit_score: Mapped[float] = mapped_column(Float)
    engagement_score: Mapped[float] = mapped_column(Float)
    grade: Mapped[str | None] = mapped_column(String(2), nullable=True)
    policy_version: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2), nullable=True)
    # the amount is scoring.yaml's expected amount of its motion, not one sales gave
    amount_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    qualified_event_id: Mapped[str] = mapped_column(String(64), unique=True)
    caused_by: Mapped[list] = mapped_column(JSON)
    qualified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    close_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StageChange(StoreBase):
    """Every stage change of a contact (and its opportunity), who or what made it, and why."""

    __tablename__ = "stage_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id"), index=True)
    opportunity_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    from_stage: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_stage: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2), nullable=True)
    changed_by: Mapped[str] = mapped_column(String(200))  # "qualification" or the API key's name
    policy_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    cause_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # the stage.changed event
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProcessedEvent(StoreBase):
    """The inbox: ids of events already applied (same transaction as their effect)."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigId)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TransitionRequest(StoreBase):
    """``Idempotency-Key`` of sales transitions: a retried transition is a no-op."""

    __tablename__ = "transition_requests"

    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    opportunity_id: Mapped[str] = mapped_column(String(36))
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PipelineApiKey(ApiKeyMixin, StoreBase):
    __tablename__ = "pipeline_api_keys"


class DashboardSession(StoreBase):
    """A browser signed in to the dashboard; signing out deletes its row (see services/pipeline/sessions.py)."""

    __tablename__ = "dashboard_sessions"

    # SHA-256 of the cookie's random token: a copy of the store cannot be replayed as a cookie
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(36), ForeignKey("pipeline_api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class PipelineOutbox(OutboxMixin, StoreBase):
    __tablename__ = "pipeline_outbox"


class WebhookSubscription(StoreBase):
    """A receiver of events over HTTP (``/v1/subscriptions``); its signing secret is stored
    encrypted (``shared.secrets``), so that it can sign and a copy of the store cannot."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    status: Mapped[str] = mapped_column(String(10))  # active | paused
    secret: Mapped[str] = mapped_column(Text)  # encrypted
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(StoreBase):
    """One event to one subscription: pending until a 2xx (delivered) or the retry window's
    end (dead). Sent in ``id`` order per subscription and key (services/webhooks)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_pending", "subscription_id", "status", "id"),
        Index("ix_webhook_deliveries_key", "subscription_id", "key", "status", "id"),
        Index("ix_webhook_deliveries_list", "subscription_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(320))
    partition: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(10))  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # retried until then
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # HTTP status of the last attempt
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the event's Kafka timestamp
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookProcessedEvent(StoreBase):
    """The webhooks consumer's inbox (its own group reads the events qualification wrote)."""

    __tablename__ = "webhook_processed_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigId)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# ---- motion balance rollups (pipeline_store/rollups.py keeps them; GET /v1/analytics/balance reads them)


class BalanceDay(StoreBase):
    """Per first-touch day (UTC), entry motion, motion and first-touch channel: what the
    contacts of that cohort add up to. Kept in the transaction that changes a contact
    (qualification) or its opportunity (pipeline transitions), as the change's delta."""

    __tablename__ = "balance_days"
    # the answer sums a range by (entry motion, motion, channel): read in that order from an
    # index that holds every counter, without a sort or a visit to the table
    __table_args__ = (Index("ix_balance_days_grouped", "entry_motion", "motion", "channel", "day", "entrants",
                            "fit_ab", "sql", "won", "pipeline_amount", "won_amount"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    entry_motion: Mapped[str] = mapped_column(String(10), primary_key=True)  # the first touch's motion
    motion: Mapped[str] = mapped_column(String(10), primary_key=True)  # inbound | outbound | blended
    channel: Mapped[str] = mapped_column(String(40), primary_key=True)  # first-touch channel, '' for none
    entrants: Mapped[int] = mapped_column(BigId, default=0)
    fit_ab: Mapped[int] = mapped_column(BigId, default=0)  # entrants with fit grade A or B
    sql: Mapped[int] = mapped_column(BigId, default=0)  # reached sql (one qualified opportunity each)
    won: Mapped[int] = mapped_column(BigId, default=0)
    pipeline_amount: Mapped[Decimal] = mapped_column(Numeric(18, 2), default=0)  # open and won
    won_amount: Mapped[Decimal] = mapped_column(Numeric(18, 2), default=0)


class BalanceDaysToSql(StoreBase):
    """Per first-touch day, entry motion and motion: how many contacts reached sql after
    ``days`` whole days from their first touch (a histogram, so medians are exact)."""

    __tablename__ = "balance_days_to_sql"
    __table_args__ = (Index("ix_balance_days_to_sql_grouped", "entry_motion", "motion", "days", "day", "contacts"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    entry_motion: Mapped[str] = mapped_column(String(10), primary_key=True)
    motion: Mapped[str] = mapped_column(String(10), primary_key=True)
    days: Mapped[int] = mapped_column(Integer, primary_key=True)
    contacts: Mapped[int] = mapped_column(BigId, default=0)


class BalanceEffort(StoreBase):
    """Per day the fact occurred (UTC) and motion: form submissions (inbound) and sales
    touches (outbound) — the effort behind each motion's opportunities."""

    __tablename__ = "balance_effort"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    motion: Mapped[str] = mapped_column(String(10), primary_key=True)
    forms: Mapped[int] = mapped_column(BigId, default=0)
    touches: Mapped[int] = mapped_column(BigId, default=0)


class ErasedSubject(SuppressionMixin, StoreBase):
    """People erased from the store, by keyed hash only: a fact about one that is still in
    flight (or a sales tool's late touch) creates nothing, until a new marketing opt-in
    (a lead with ``consent.marketing: true`` made after the erasure was asked) lifts it."""

    __tablename__ = "erased_subjects"


class ErasureRequest(StoreBase):
    """One erasure (``POST /v1/privacy/erasures``, ``leadstream privacy erase``): the person
    as a keyed hash, never the email; who asked, when, and when every store was done."""

    __tablename__ = "erasure_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20))  # pending | completed
    requested_by: Mapped[str] = mapped_column(String(300))  # "key <id> (<name>)" or "cli <user>"
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ErasureStore(StoreBase):
    """Each store's progress on an erasure, from its ``erasure.completed`` report."""

    __tablename__ = "erasure_stores"

    erasure_id: Mapped[str] = mapped_column(ForeignKey("erasure_requests.id"), primary_key=True)
    store: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # pending | completed
    records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ErasureAudit(StoreBase):
    """Every privacy request, as it was answered, never with the email (the table kept its
    first name, from when only erasures were audited). ``kind`` ``erasure``: each erasure call
    — who (API key id and name, or the CLI's user), when, which erasure, the stores asked and
    the outcome (``requested``, or ``repeated`` when one was under way or done for the same
    person) — and its end: ``completed`` when the last store reported, with the stores that did
    (who: the requester). ``kind`` ``export``: each access request answered, with the store
    read (``pipeline``) and the outcome (``exported``, or ``not_found`` for a ``404``); no
    erasure id."""

    __tablename__ = "erasure_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20), default="erasure", server_default="erasure")
    erasure_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    actor: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stores: Mapped[str | None] = mapped_column(String(200), nullable=True)  # "capture,outreach,pipeline"


class PrivacyProcessedEvent(InboxMixin, StoreBase):
    """The inbox of the pipeline service's ``privacy.requests`` consumer (the stores' reports)."""

    __tablename__ = "privacy_processed_events"


# ---- sources rollups and attribution credits (pipeline_store/source_rollups.py keeps them)


class AttributionCredit(StoreBase):
    """One counting touch of an opportunity, with its credit under each attribution model
    (``services/qualification/domain/attribution_models.py``; ``credit_<model>``, NULL where
    the model does not credit the touch); an opportunity's credits sum to 1 per model. One
    row per touch, not per (model, touch): the touch is stored once. Written by
    qualification in the transaction of the facts, replaced when a late touch changes the
    opportunity's counting touches. No personal data."""

    __tablename__ = "attribution_credits"

    opportunity_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the touch
    contact_id: Mapped[str] = mapped_column(String(36), index=True)
    position: Mapped[int] = mapped_column(Integer)  # in the counting order (occurred_at, event id)
    motion: Mapped[str] = mapped_column(String(10))  # the touch's
    channel: Mapped[str | None] = mapped_column(String(40), nullable=True)
    campaign: Mapped[str | None] = mapped_column(String(200), nullable=True)
    form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sequence: Mapped[str | None] = mapped_column(String(200), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    credit_first: Mapped[float | None] = mapped_column(Float, nullable=True)
    credit_last: Mapped[float | None] = mapped_column(Float, nullable=True)
    credit_linear: Mapped[float | None] = mapped_column(Float, nullable=True)
    credit_position: Mapped[float | None] = mapped_column(Float, nullable=True)
    credit_time_decay: Mapped[float | None] = mapped_column(Float, nullable=True)
    credit_w_shaped: Mapped[float | None] = mapped_column(Float, nullable=True)


class _RollupKey:
    """A rollup row's key: the attribution model, the grain (``h``: the row sums one cohort
    hour, ``day`` the UTC day of the contacts' first touch and ``hour`` its hour; ``d``: one
    day; ``m``: one month; ``y``: one year; ``day`` the period's first day and ``hour`` 0), the
    contact's motion and the credited touch's channel, campaign, form and sequence ("" for
    none: NULLs are never equal in a unique key)."""

    model: Mapped[str] = mapped_column(String(20), primary_key=True)
    grain: Mapped[str] = mapped_column(String(1), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    motion: Mapped[str] = mapped_column(String(10), primary_key=True)
    channel: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(200), primary_key=True)
    form_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    sequence: Mapped[str] = mapped_column(String(200), primary_key=True)


class SourceRollup(_RollupKey, StoreBase):
    """The sources question per day and key, as credited sums (``pipeline_store/source_rollups.py``):
    qualification keeps it in the transaction of the facts, the pipeline service in that of
    sales' moves, so analytics read it instead of contacts. No personal data."""

    __tablename__ = "source_rollups"

    contacts: Mapped[float] = mapped_column(Float, default=0.0)
    leads: Mapped[float] = mapped_column(Float, default=0.0)
    mql: Mapped[float] = mapped_column(Float, default=0.0)
    sql: Mapped[float] = mapped_column(Float, default=0.0)
    opportunities: Mapped[float] = mapped_column(Float, default=0.0)
    won: Mapped[float] = mapped_column(Float, default=0.0)
    qualified_opportunities: Mapped[float] = mapped_column(Float, default=0.0)
    pipeline_amount: Mapped[float] = mapped_column(Float, default=0.0)
    pipeline_amounts: Mapped[float] = mapped_column(Float, default=0.0)  # credited count of amounts set
    won_amount: Mapped[float] = mapped_column(Float, default=0.0)
    won_amounts: Mapped[float] = mapped_column(Float, default=0.0)
    estimated_pipeline_amount: Mapped[float] = mapped_column(Float, default=0.0)  # of pipeline_amount
    estimated_pipeline_amounts: Mapped[float] = mapped_column(Float, default=0.0)


class QualifyDaysRollup(_RollupKey, StoreBase):
    """Days from first touch to ``sql`` per period, key and bucket (``pipeline_store.source_rollups.
    bucket_of``): credited weight and credited sum of days, for the median."""

    __tablename__ = "qualify_days_rollups"

    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    days: Mapped[float] = mapped_column(Float, default=0.0)
