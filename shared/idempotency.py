"""Writes at the edge that a client may repeat: the duplicate-key retry and the relay's wake.

A client retrying with the same ``Idempotency-Key`` (or a tool sending the same external
id twice) may race its first attempt: both find nothing stored, and the one that commits
second fails on the unique key. Running its unit of work again then finds the first one's
row and answers as a duplicate. Only a duplicate key is retried; any other violation
would only repeat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.exc import IntegrityError

from shared.db import is_unique_violation

T = TypeVar("T")


class Wakeable(Protocol):
    def wake(self) -> None: ...


def _always(_: object) -> bool:
    return True


async def write_and_wake(relay: Wakeable | None, write: Callable[[], Awaitable[T]], *, retries: int = 0,
                         published: Callable[[T], bool] = _always) -> T:
    """Run ``write`` (a unit of work that commits) and return its result, then wake ``relay``
    if ``published(result)`` (the commit added outbox rows: the relay need not wait for its
    poll). A duplicate key runs ``write`` again, at most ``retries`` times (``0``: a write
    that a repeat cannot make succeed, such as one without an idempotency key)."""
    for attempt in range(retries + 1):
        try:
            result = await write()
            break
        except IntegrityError as exc:
            if attempt == retries or not is_unique_violation(exc):
                raise
    if relay is not None and published(result):
        relay.wake()
    return result
