"""Instants in UTC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, overload

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


def same_values(names: Sequence[str]) -> Callable[[Sequence[Any], Sequence[Any]], bool]:
    """A test of whether two tuples of a row's values (``names`` order; a name ending in
    ``_at`` is a time) hold the same facts: equal, or equal once their times are read as UTC
    (a time loaded naive from SQLite is written back aware)."""
    plain = itemgetter(*(i for i, name in enumerate(names) if not name.endswith("_at")))
    times = tuple(i for i, name in enumerate(names) if name.endswith("_at"))

    def same(before: Sequence[Any], after: Sequence[Any]) -> bool:
        if before == after:
            return True
        if plain(before) != plain(after):
            return False
        for i in times:
            was, now = before[i], after[i]
            if was is not now and as_utc(was) != as_utc(now):
                return False
        return True

    return same
