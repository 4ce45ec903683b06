"""Instants in UTC."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload

_UTC = timezone.utc


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (``None`` stays ``None``): SQLite hands datetimes
    back naive (the stores write UTC), and clients may send other offsets. A value already in
    UTC is returned as it is (the common case, on hot paths)."""
    if value is None:
        return None
    zone = value.tzinfo
    if zone is _UTC:
        return value
    if zone is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)
