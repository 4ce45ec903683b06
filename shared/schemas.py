"""Pieces of request schemas that the ingest APIs share (strict models, bounded strings, times)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

# C0 controls, DEL and C1 controls: a terminal escape, a NUL or a CR/LF in a name reaches logs,
# CSV exports, e-mail headers and the dashboard. Free text (a consent text, a custom field's
# value, which may come from a <textarea>) keeps tab, line feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def single_line(value: str) -> str:
    """A name, an id, a URL: no control character at all (not even a tab)."""
    if _CONTROL.search(value):
        raise PydanticCustomError(
            "control_character", "Control characters (U+0000-U+001F, U+007F-U+009F) are not allowed"
        )
    return value


def free_text(value: str) -> str:
    """Free text: tab, line feed and carriage return allowed, other control characters not."""
    if _CONTROL_IN_TEXT.search(value):
        raise PydanticCustomError(
            "control_character", "Control characters other than tab, line feed and carriage return are not allowed"
        )
    return value


def line(max_length: int, *, min_length: int = 0, strip: bool = True) -> type[str]:
    """A bounded single-line string (stripped), refused with ``control_character`` if it holds one."""
    return Annotated[  # type: ignore[return-value]
        str, StringConstraints(strip_whitespace=strip, min_length=min_length, max_length=max_length),
        AfterValidator(single_line),
    ]


def text(max_length: int) -> type[str]:
    """A bounded free-text string (kept as sent), refused if it holds a control character other
    than tab, line feed and carriage return."""
    return Annotated[  # type: ignore[return-value]
        str, StringConstraints(max_length=max_length), AfterValidator(free_text)
    ]


Short = line(200)
Url = line(2048)


def _not_a_boolean(value: object) -> object:
    # JSON true is no count: lax validation would read it as 1 (an employee count of 1)
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


def count(ge: int, le: int) -> type[int]:
    """A bounded whole number; a JSON boolean is refused (``int_type``), a numeric string read."""
    return Annotated[int, BeforeValidator(_not_a_boolean), Field(ge=ge, le=le)]  # type: ignore[return-value]


Employees = count(0, 10_000_000)

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


def not_before_horizon(value: datetime | None, horizon: timedelta) -> datetime | None:
    """A fact's time no older than ``horizon`` (naive is UTC): an anonymous client must not
    backdate facts into old cohorts."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if value < datetime.now(timezone.utc) - horizon:
        raise ValueError(f"occurred_at is more than {horizon.days} days in the past")
    return value
