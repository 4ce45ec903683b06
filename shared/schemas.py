"""Pieces of request schemas that the ingest APIs share (strict models, bounded strings, times)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

Short = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2048)]

# a client clock a little ahead is tolerated; a fact from the future is not
FUTURE_SKEW = timedelta(minutes=5)


class Strict(BaseModel):
    """Unknown fields are errors (custom data goes in ``fields``)."""

    model_config = ConfigDict(extra="forbid")


def not_in_future(value: datetime | None) -> datetime | None:
    """A fact's time: naive is UTC; more than ``FUTURE_SKEW`` ahead is invalid."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if value > datetime.now(timezone.utc) + FUTURE_SKEW:
        raise ValueError("occurred_at is in the future")
    return value
