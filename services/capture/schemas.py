"""Request and response models of the capture API (unknown fields are rejected)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from shared.events import FormType
from shared.identity import EMAIL_MAX_LENGTH, check_email
from shared.schemas import Employees, Short, Strict, Url, line, not_before_horizon, not_in_future, text

# the validation context's key for how far back ``occurred_at`` may go (from settings)
OCCURRED_AT_HORIZON = "occurred_at_horizon"
DEFAULT_OCCURRED_AT_HORIZON = timedelta(days=400)

Phone = line(50)
Country = line(100)
FreeText = text(2000)
FieldName = line(100, strip=False)



class UtmIn(Strict):
    source: Short | None = None
    medium: Short | None = None
    campaign: Short | None = None
    term: Short | None = None
    content: Short | None = None


class ConsentIn(Strict):
    marketing: bool
    text: FreeText | None = None


class LeadIn(Strict):
    """A lead from a website form or landing page."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada.lovelace@analytical-engines.co.uk",
                    "first_name": "Ada",
                    "last_name": "Lovelace",
                    "company": "Analytical Engines Ltd",
                    "title": "VP Engineering",
                    "website": "https://analytical-engines.co.uk",
                    "country": "GB",
                    "employees": 250,
                    "industry": "software",
                    "form_id": "demo-request",
                    "form_type": "demo_request",
                    "page_url": "https://www.example.com/demo",
                    "referrer": "https://www.google.com/",
                    "utm": {"source": "google", "medium": "cpc", "campaign": "brand-q4"},
                    "consent": {"marketing": True, "text": "I agree to receive product news."},
                    "fields": {"use_case": "pipeline analytics"},
                }
            ]
        },
    )

    email: Annotated[str, StringConstraints(max_length=EMAIL_MAX_LENGTH)] = Field(
        description="Required; kept as typed, normalised for identity."
    )
    first_name: Short | None = None
    last_name: Short | None = None
    company: Short | None = None
    title: Short | None = None
    phone: Phone | None = None
    website: Url | None = None
    country: Country | None = None
    employees: Employees | None = None
    industry: Short | None = None
    form_id: Short | None = None
    form_type: FormType | None = None
    lead_magnet: Short | None = None
    page_url: Url | None = None
    referrer: Url | None = None
    utm: UtmIn = Field(default_factory=UtmIn)
    consent: ConsentIn | None = None
    fields: Annotated[dict[FieldName, FreeText], Field(max_length=50)] = Field(
        default_factory=dict, description="Custom string fields (at most 50; values may span lines)."
    )
    occurred_at: datetime | None = Field(
        None, description="When the visitor submitted; defaults to when received. At most 5 minutes ahead and "
        "`LEADSTREAM_CAPTURE_OCCURRED_AT_HORIZON_DAYS` (400) days back."
    )

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return check_email(value)

    @field_validator("occurred_at")
    @classmethod
    def _recent(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        horizon = (info.context or {}).get(OCCURRED_AT_HORIZON, DEFAULT_OCCURRED_AT_HORIZON)
        return not_before_horizon(not_in_future(value), horizon)


class Accepted(BaseModel):
    event_id: str
    status: Literal["accepted"] = "accepted"

