"""Request and response models of the outreach API (unknown fields are rejected)."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator

from shared.events import OutboundChannel, Outcome
from shared.identity import EMAIL_MAX_LENGTH, check_email
from shared.schemas import Employees, Short, Strict, Url, count, line, not_in_future, text

Email = Annotated[str, StringConstraints(max_length=EMAIL_MAX_LENGTH)]
Phone = line(50)
Country = line(100)
Tag = line(100, min_length=1)
ExternalId = line(255, min_length=1)
EventType = line(100, min_length=1)
Fields = Annotated[
    dict[line(100, strip=False), text(2000)],
    Field(max_length=50, description="Custom string fields (at most 50; values may span lines)."),
]

MAX_BATCH = 1000


def _email(value: str) -> str:
    return check_email(value)


_not_in_future = not_in_future


class ProspectIn(Strict):
    """A researched contact pushed by a sales tool or a rep's script."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "Grace.Hopper@Navy-Systems.example.com",
                    "first_name": "Grace",
                    "last_name": "Hopper",
                    "title": "Director of Engineering",
                    "company": "Navy Systems",
                    "website": "https://navy-systems.example.com",
                    "industry": "software",
                    "employees": 1200,
                    "country": "US",
                    "linkedin_url": "https://www.linkedin.com/in/grace-hopper",
                    "owner": "rep@ourcompany.example",
                    "list": "Q4 enterprise ICP",
                    "source": "sales-navigator",
                    "tags": ["enterprise", "east"],
                }
            ]
        },
    )

    email: Email = Field(description="Required; kept as typed, normalised for identity.")
    first_name: Short | None = None
    last_name: Short | None = None
    title: Short | None = None
    company: Short | None = None
    website: Url | None = None
    industry: Short | None = None
    employees: Employees | None = None
    country: Country | None = None
    phone: Phone | None = None
    linkedin_url: Url | None = None
    owner: Short | None = Field(None, description="The rep who owns the prospect.")
    list: Short | None = Field(None, description="The prospect list it was researched into.")
    source: Short | None = Field(None, description="Where it was researched (a database, an event, …).")
    tags: Annotated[
        builtins.list[Tag],
        Field(max_length=50),
    ] = Field(default_factory=builtins.list)
    fields: Fields = Field(default_factory=dict)
    occurred_at: datetime | None = Field(None, description="When it was added; defaults to when received.")

    _valid_email = field_validator("email")(_email)
    _past = field_validator("occurred_at")(_not_in_future)


class TouchFields(Strict):
    email: Email = Field(description="The contact touched; kept as typed, normalised for identity.")
    channel: OutboundChannel
    outcome: Outcome
    rep: Short | None = Field(None, description="The rep who made the touch.")
    sequence: Short | None = Field(None, description="The sequence (cadence) the touch belongs to.")
    step: count(1, 1000) | None = Field(None, description="The step within the sequence.")
    fields: Fields = Field(default_factory=dict)
    occurred_at: datetime | None = Field(None, description="When it happened; defaults to when received.")

    _valid_email = field_validator("email")(_email)
    _past = field_validator("occurred_at")(_not_in_future)


TOUCH_EXAMPLE = {
    "email": "grace.hopper@navy-systems.example.com",
    "channel": "cold_email",
    "outcome": "positive_reply",
    "rep": "rep@ourcompany.example",
    "sequence": "q4-enterprise",
    "step": 2,
    "occurred_at": "2026-11-24T15:04:05Z",
    "external_id": "outreach-mailing-88123",
}


class TouchIn(TouchFields):
    """One touch of a sequence: an email sent, opened or replied to, a call, a LinkedIn message…"""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [TOUCH_EXAMPLE]})

    external_id: ExternalId | None = Field(
        None, description="The sales tool's id of the touch: a repeat under the same API key name is a no-op "
        "answered `duplicate` (ids are unique per key name, not across tools)."
    )


class TouchBatchIn(Strict):
    """Up to 1,000 touches; each is validated on its own (see the per-item results)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"touches": [TOUCH_EXAMPLE]}]})

    # Items are validated one by one in the service so that one bad item rejects only itself.
    touches: Annotated[
        builtins.list[Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/TouchIn"})]],
        Field(min_length=1, max_length=MAX_BATCH),
    ]


class WebhookTouch(TouchFields):
    """A touch as a webhook carries it (its id is the event's ``id``)."""


WEBHOOK_EXAMPLE = {
    "id": "evt_01JD2V5T6Q8Z",
    "type": "touch",
    "touch": {k: v for k, v in TOUCH_EXAMPLE.items() if k != "external_id"},
}


class WebhookEventIn(Strict):
    """An event pushed by a sales tool. Only ``type: "touch"`` is recorded; other types are
    acknowledged and ignored, so the tool does not retry them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [WEBHOOK_EXAMPLE]})

    id: ExternalId = Field(
        description="The tool's id of this event: a redelivery with the same id is answered `duplicate`."
    )
    type: EventType = Field(
        description="`touch` (recorded); anything else is ignored."
    )
    touch: WebhookTouch | None = Field(None, description="Required when `type` is `touch`.")


class Accepted(BaseModel):
    event_id: str
    status: Literal["accepted"] = "accepted"


class TouchAnswer(BaseModel):
    event_id: str = Field(description="The touch's event id; for a duplicate, the first one's.")
    status: Literal["accepted", "duplicate"]


class FieldError(BaseModel):
    field: str
    message: str
    type: str
    # 'in' is a keyword: keep the wire name of shared.errors.field_errors
    in_: str = Field("body", alias="in", serialization_alias="in")

    model_config = ConfigDict(populate_by_name=True)


class ItemResult(BaseModel):
    status: Literal["accepted", "duplicate", "rejected"]
    event_id: str | None = None
    errors: builtins.list[FieldError] | None = None


class BatchAnswer(BaseModel):
    results: builtins.list[ItemResult] = Field(description="One result per item, in the order sent.")


class WebhookAnswer(BaseModel):
    id: str = Field(description="The tool's event id, echoed.")
    event_id: str | None = Field(None, description="Leadstream's event id (absent when ignored).")
    status: Literal["accepted", "duplicate", "ignored"]
