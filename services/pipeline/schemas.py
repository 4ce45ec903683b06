"""Query, request and response models of the pipeline API (unknown parameters and fields are rejected)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from pipeline_store.source_rollups import MODELS
from shared.amounts import Money
from shared.events import INBOUND_CHANNELS, OUTBOUND_CHANNELS, Motion, Stage
from shared.times import as_utc

Channel = Literal[tuple(sorted(set(INBOUND_CHANNELS) | set(OUTBOUND_CHANNELS)))]  # type: ignore[valid-type]
Attribution = Literal["first", "last"]
Model = Literal[MODELS]  # type: ignore[valid-type]
Order = Literal["desc", "asc"]
Target = Literal["opportunity", "customer", "lost", "disqualified", "nurture"]
GroupBy = Literal["motion", "channel", "campaign", "form", "sequence"]

Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


_LAST_DAY = date.max - timedelta(days=1)  # a date bound covers its whole day: the next one must exist


def _when(value: Any) -> Any:
    """A day (``2025-03-31``, the whole day) or an ISO 8601 date-time (naive means UTC), one
    that a bound can hold: days up to 9999-12-30 and instants that exist in UTC (``OverflowError``
    from ``9999-12-31T23:59:59-23:59`` or ``9999-12-31`` plus a day would be a 500)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if _DAY.match(text) else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("expected a date (2025-03-31) or an ISO 8601 date-time (2025-03-31T12:00:00Z)") from None
    if isinstance(value, datetime):
        try:
            return as_utc(value)
        except OverflowError:
            raise ValueError("the time is out of range once converted to UTC") from None
    if isinstance(value, date) and value > _LAST_DAY:
        raise ValueError(f"a date must be {_LAST_DAY.isoformat()} or earlier")
    return value


def _split(value: Any) -> Any:
    """``stage=sql,opportunity`` and ``stage=sql&stage=opportunity`` mean the same."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()] or None


When = Annotated[date | datetime, BeforeValidator(_when)]
Utc = Annotated[datetime, AfterValidator(as_utc)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Stages = Annotated[list[Stage] | None, BeforeValidator(_split)]
Motions = Annotated[list[Motion] | None, BeforeValidator(_split)]
Channels = Annotated[list[Channel] | None, BeforeValidator(_split)]


class Page(Strict):
    limit: int = Field(50, ge=1, le=200, description="Rows per page, 1–200")
    cursor: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="`next_cursor` of the previous page (same query otherwise)"
    )


class ContactFilters(Page):
    """Filters of ``GET /v1/contacts``; repeat a list filter or separate values by commas."""

    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)] | None = Field(
        None, description="Matched after normalisation (trimmed, lower-cased, googlemail.com = gmail.com, an "
        "internationalised domain written either way)"
    )
    stage: Stages = None
    motion: Motions = None
    channel: Channels = Field(None, description="First-touch channel (last with attribution=last)")
    campaign: Short | None = None
    account: Short | None = Field(None, description="Account domain")
    owner: Short | None = None
    attribution: Attribution = "first"
    created_from: When | None = Field(None, description="First fact at or after (date or date-time)")
    created_to: When | None = Field(None, description="First fact at or before (a date includes the whole day)")
    qualified_from: When | None = Field(None, description="Reached sql at or after")
    qualified_to: When | None = Field(None, description="Reached sql at or before")


class OpportunityFilters(Page):
    """Filters of ``GET /v1/opportunities``; repeat a list filter or separate values by commas."""

    stage: Stages = None
    motion: Motions = None
    channel: Channels = Field(None, description="First-touch channel (last with attribution=last)")
    campaign: Short | None = Field(None, description="First-touch campaign (last with attribution=last)")
    form: Short | None = Field(None, description="First-touch form id")
    sequence: Short | None = Field(None, description="First-touch sequence")
    owner: Short | None = None
    account: Short | None = Field(None, description="Account domain")
    grade: Annotated[str, StringConstraints(pattern=r"^[A-Fa-f]$")] | None = None
    attribution: Attribution = "first"
    order: Order = Field("desc", description="By qualification time: newest first (desc) or oldest first")
    qualified_from: When | None = None
    qualified_to: When | None = None
    closed_from: When | None = None
    closed_to: When | None = None


class SourcesQuery(Strict):
    """``GET /v1/analytics/sources``: a cohort of contacts by the time of their first touch."""

    from_: When | None = Field(None, alias="from", description="First touch at or after (date or date-time)")
    to: When | None = Field(None, description="First touch at or before (a date includes the whole day)")
    group_by: GroupBy = "channel"
    motion: Motions = None
    attribution: Model = Field(
        "first", description="The attribution model: `first` (first touch), `last` (last touch before "
        "qualification), `linear`, `position`, `time_decay` or `w_shaped`; each opportunity's credit is "
        "spread over its counting touches, so counts and amounts become credited sums")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BalanceQuery(Strict):
    """``GET /v1/analytics/balance``: the range's bounds as the sources answer reads them; the
    answer is kept per day, so a date-time bound counts its whole (UTC) day."""

    from_: When | None = Field(None, alias="from", description="First touch on or after this day (date or date-time)")
    to: When | None = Field(None, description="First touch on or before this day; the trend's windows end here "
                            "(default: today, UTC)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- answers ---------------------------------------------------------------------------


class Touchpoint(BaseModel):
    motion: str | None = None
    channel: str | None = None
    campaign: str | None = None
    form_id: str | None = None
    sequence: str | None = None
    event_id: str | None = None
    at: Utc | None = None


class ScoreView(BaseModel):
    score: float
    grade: str | None = None
    reasons: list[Any]


class ContactSummary(BaseModel):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    title: str | None
    company: str | None
    account_domain: str | None
    owner: str | None
    stage: str
    motion: str
    fit_score: float
    fit_grade: str | None
    engagement_score: float
    first_touch: Touchpoint | None
    last_touch: Touchpoint | None
    created_at: Utc
    qualified_at: Utc | None
    updated_at: Utc


class OpportunityView(BaseModel):
    id: str
    contact_id: str
    email: str
    account_domain: str | None
    stage: str
    motion: str
    owner: str | None
    first_touch: Touchpoint | None
    last_touch: Touchpoint | None
    fit_score: float
    engagement_score: float
    grade: str | None
    policy_version: str
    amount: float | None
    amount_estimated: bool = Field(
        description="`amount` is scoring.yaml's expected amount of the motion, not one sales gave"
    )
    currency: str
    qualified_event_id: str
    caused_by: list[str]
    qualified_at: Utc
    accepted_at: Utc | None
    closed_at: Utc | None
    close_reason: str | None
    updated_at: Utc


class StageChangeView(BaseModel):
    id: int
    opportunity_id: str | None
    from_stage: str | None
    to_stage: str
    reason: str | None
    amount: float | None
    changed_by: str
    policy_version: str | None
    cause_event_id: str | None
    event_id: str
    changed_at: Utc


class TimelineEntry(BaseModel):
    event_id: str
    event_type: str
    motion: str
    channel: str | None
    channel_rules_version: str | None = Field(
        None, description="The version of the channel rules (channels.yaml) that classified an inbound touch"
    )
    campaign: str | None
    form_id: str | None
    form_type: str | None
    lead_magnet: str | None
    sequence: str | None
    step: int | None
    outcome: str | None
    rep: str | None
    occurred_at: Utc
    recorded_at: Utc
    data: dict[str, Any]


class ScoreRecord(BaseModel):
    fit: ScoreView
    engagement: ScoreView
    policy_version: str
    cause_event_id: str | None
    scored_at: Utc


class Milestones(BaseModel):
    lead_at: Utc | None
    mql_at: Utc | None
    sql_at: Utc | None
    opportunity_at: Utc | None
    customer_at: Utc | None
    lost_at: Utc | None


class AccountBrief(BaseModel):
    domain: str
    company: str | None
    industry: str | None
    employees: int | None
    country: str | None
    website: str | None


class ContactProfile(ContactSummary):
    """A contact without its histories: who, where they stand, their scores and account."""

    email_as_typed: str
    phone: str | None
    linkedin_url: str | None
    email_invalid: bool
    unsubscribed: bool
    fit: ScoreView
    engagement: ScoreView
    policy_version: str | None
    firmographics: dict[str, Any] = Field(description="field → {value, source, at}")
    account: AccountBrief | None
    milestones: Milestones
    last_activity_at: Utc | None


ConsentStatus = Literal["granted", "withdrawn"]


class ConsentEntryView(BaseModel):
    purpose: str = Field(description="What the consent is for: `marketing`")
    status: ConsentStatus
    text: str | None = Field(description="The wording the person agreed to, as the form sent it")
    source: str = Field(description="`form:<form id>` (`form` without one), or `outreach:<channel>` for an "
                        "`unsubscribed` touch")
    occurred_at: Utc = Field(description="When the person said so (the fact's time)")
    cause_event_id: str = Field(description="The event of the fact")
    recorded_at: Utc


class ConsentState(BaseModel):
    status: ConsentStatus
    since: Utc
    source: str


CONSENTS = "The consent ledger: every purpose granted or withdrawn, and by which fact, in order of time"
CONSENT_STATE = ("Per purpose, the person's latest word (a withdrawal wins over a grant at the same instant); a "
                 "purpose never mentioned is absent")


class ContactDetail(ContactProfile):
    stage_history: list[StageChangeView]
    score_history: list[ScoreRecord]
    timeline: list[TimelineEntry] = Field(description="Every inbound and outbound fact, oldest first")
    opportunities: list[OpportunityView]
    consents: list[ConsentEntryView] = Field(description=CONSENTS)
    consent_state: dict[str, ConsentState] = Field(description=CONSENT_STATE)


class MotionMix(BaseModel):
    contacts: dict[str, int]
    opportunities: dict[str, int]


class AccountView(AccountBrief):
    firmographics: dict[str, Any] = Field(description="field → {value, source, at}")
    created_at: Utc
    updated_at: Utc
    motion_mix: MotionMix
    contacts: list[ContactSummary]
    opportunities: list[OpportunityView]


class ContactPage(BaseModel):
    items: list[ContactSummary]
    next_cursor: str | None


class OpportunityPage(BaseModel):
    items: list[OpportunityView]
    next_cursor: str | None


class TransitionIn(Strict):
    """Move an opportunity: accept (`opportunity`), win (`customer`), or lose, disqualify, nurture."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "customer", "amount": 24000, "reason": "signed annual plan"}]},
    )

    to: Target
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    amount: Money | None = Field(
        None, description="In the opportunity's currency: the expected amount when accepting, the won amount "
        "when winning (required then)"
    )


class TransitionOut(BaseModel):
    opportunity: OpportunityView
    stage_change: StageChangeView


class CreditedTouch(BaseModel):
    """One touch and its share of the opportunity under a model (credits sum to 1)."""

    event_id: str | None
    motion: str | None
    channel: str | None
    campaign: str | None
    form_id: str | None
    sequence: str | None
    occurred_at: Utc | None
    credit: float


class ModelCredits(BaseModel):
    model: str
    basis: Literal["counting_touches", "first_touch", "last_touch"] = Field(
        description="`counting_touches`: the model's split of the opportunity's counting touches; without "
        "any, the whole credit goes to the contact's first touch (`last`: its last touch before qualification), "
        "as the sources answer counts it")
    touches: list[CreditedTouch]


class OpportunityAttribution(BaseModel):
    opportunity_id: str
    contact_id: str
    qualified_at: Utc
    credits_as_of: Utc = Field(
        description="the qualification the credits count back from (the lookback ends there): the opportunity's, "
        "or the contact's later one when it qualified again after sales nurtured it (then `last` credits the "
        "last touch before that one, while the opportunity's `last_touch_*` stay those of its first)")
    models: list[ModelCredits]
