"""Request and response models of the subscriptions API (unknown fields are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator,
)

from services.pipeline.schemas import Page, Utc
from shared.webhooks import MAX_URL_LENGTH, SUBSCRIBABLE_TYPES

EventType = Literal[SUBSCRIBABLE_TYPES]  # type: ignore[valid-type]
Status = Literal["active", "paused"]
DeliveryStatus = Literal["pending", "delivered", "dead"]

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_LENGTH)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


def _distinct(types: list[str]) -> list[str]:
    return list(dict.fromkeys(types))


EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(SUBSCRIBABLE_TYPES) * 4),
                       AfterValidator(_distinct)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionIn(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "url": "https://crm.example.com/hooks/leadstream",
        "event_types": ["io.leadstream.opportunity.qualified.v1"],
        "description": "CRM: create a deal for each qualified opportunity",
    }]})

    url: Url = Field(description="`https` URL that receives one `POST` per event")
    event_types: EventTypes = Field(description="CloudEvents types to receive: " + ", ".join(SUBSCRIBABLE_TYPES))
    description: Description | None = None


class SubscriptionPatch(Strict):
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    status: Status | None = Field(None, description="`paused` stops deliveries (pending ones wait); `active` resumes")

    @field_validator("url", "event_types", "status")
    @classmethod
    def _not_null(cls, value: object, info: ValidationInfo) -> object:
        # None is only the default (field left out); sent as null, the field is named in the 422
        if value is None:
            raise ValueError(f"{info.field_name} cannot be null; leave it out to keep it")
        return value

    @model_validator(mode="after")
    def _something(self) -> SubscriptionPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one of url, event_types, description, status")
        return self


class SubscriptionOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    description: str | None
    status: Status
    created_at: Utc
    updated_at: Utc


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="The signing secret, shown this once (`whsec_…`): store it to verify "
                        "`Leadstream-Signature`")


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None


class DeliveryFilters(Page):
    status: DeliveryStatus | None = Field(None, description="only deliveries in this state")


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None = Field(description="HTTP status of the last attempt (none: no answer)")
    last_error: str | None
    next_attempt_at: Utc | None = Field(description="when the next attempt is due (pending only)")
    created_at: Utc
    delivered_at: Utc | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class Redriven(BaseModel):
    requeued: int = Field(description="dead deliveries queued again")


__all__ = ["DeliveryFilters", "DeliveryOut", "DeliveryPage", "Page", "Redriven", "SubscriptionCreated",
           "SubscriptionIn", "SubscriptionOut", "SubscriptionPage", "SubscriptionPatch", "datetime"]
