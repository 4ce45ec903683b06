"""Query, request and response models of the privacy API (unknown parameters and fields are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.pipeline.schemas import (
    CONSENT_STATE, CONSENTS, ConsentEntryView, ConsentState, ContactProfile, OpportunityView, ScoreRecord,
    StageChangeView, Strict, TimelineEntry, Utc,
)
from shared.identity import EMAIL_MAX_LENGTH, check_email

Email = Annotated[str, StringConstraints(max_length=EMAIL_MAX_LENGTH)]


class PersonQuery(Strict):
    """A person, by email address (any form of it: matched after normalisation)."""

    email: Email = Field(description="The person's email address; matched after normalisation (trimmed, "
                         "lower-cased, googlemail.com = gmail.com, an internationalised domain written either way)")

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return check_email(value)


class DisclosedEvent(BaseModel):
    """An event about the person that a webhook subscription was sent (or is being sent)."""

    delivery_id: int
    subscription_id: str
    url: str = Field(description="The subscriber's URL: the recipient")
    event_id: str
    event_type: str
    status: str = Field(description="pending, delivered or dead")
    created_at: Utc
    delivered_at: Utc | None


class PrivacyExport(BaseModel):
    """Everything the pipeline store holds about one person."""

    email: str = Field(description="The normalised address the export is of")
    exported_at: Utc
    contact: ContactProfile = Field(description="The contact: names, title, phone, LinkedIn URL, owner, stage, "
                                    "current scores with reasons, firmographics with their sources, first and "
                                    "last touch, milestones, and the account it belongs to")
    timeline: list[TimelineEntry] = Field(description="Every inbound and outbound fact, oldest first, with its "
                                          "payload as received")
    scores: list[ScoreRecord] = Field(description="Every score given, with reasons and the policy that made it")
    stage_changes: list[StageChangeView] = Field(description="Every stage change, who or what made it, and why")
    opportunities: list[OpportunityView]
    consents: list[ConsentEntryView] = Field(description=CONSENTS)
    consent_state: dict[str, ConsentState] = Field(description=CONSENT_STATE)
    webhook_deliveries: list[DisclosedEvent] = Field(
        description="Events about the person sent to webhook subscriptions: who received their data")


# ---- erasure

Status = Literal["pending", "completed"]


class ErasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "ada@example.com"}]})

    email: Annotated[str, StringConstraints(max_length=EMAIL_MAX_LENGTH)] = Field(
        description="The person's email, as they gave it (normalised to find them; never stored)")

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return check_email(value)


class ErasureAccepted(BaseModel):
    erasure_id: str
    status: Status


class StoreProgress(BaseModel):
    store: str = Field(description="`capture`, `outreach` or `pipeline` (the pipeline store)")
    status: Status
    records: int | None = Field(None, description="How many records the store erased (0: it held nothing)")
    completed_at: datetime | None = None


class ErasureOut(BaseModel):
    erasure_id: str
    status: Status = Field(description="`completed` once every store has reported")
    requested_at: datetime
    completed_at: datetime | None = None
    stores: list[StoreProgress]
