"""When to try a failed delivery again: pure rules, the clock and the randomness passed in.

Exponential backoff with equal jitter: after the n-th failed attempt the wait is
``d = min(maximum, initial * 2**(n-1))`` scaled to a random point of ``[d/2, d]`` (spread, yet
never much sooner than planned). A ``Retry-After`` the receiver sent is a floor. An attempt
that would fall after the delivery's retry window (24 h by default) is not made: the
delivery is dead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime


def backoff_s(attempts: int, *, initial: float, maximum: float, rand: float) -> float:
    """The wait after ``attempts`` failed attempts (``rand`` in [0, 1))."""
    planned = min(maximum, initial * 2 ** max(attempts - 1, 0))
    return planned / 2 + planned / 2 * rand


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date); ``None`` if
    absent or unreadable (then the backoff alone decides)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - now).total_seconds(), 0.0)


def next_attempt(attempts: int, now: datetime, expires_at: datetime, *, initial: float, maximum: float,
                 rand: float, retry_after: float | None = None) -> datetime | None:
    """When to try again after ``attempts`` failed attempts, or ``None``: the delivery is dead."""
    wait = backoff_s(attempts, initial=initial, maximum=maximum, rand=rand)
    if retry_after is not None:
        wait = max(wait, retry_after)
    due = now + timedelta(seconds=wait)
    return due if due <= expires_at else None
