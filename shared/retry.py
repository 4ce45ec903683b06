"""Running a unit of work again when it failed for a reason that goes away by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from shared.consumer import is_transient
from shared.db import Database

T = TypeVar("T")


async def transaction_with_retries(db: Database, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5,
                                   backoff: float = 0.1) -> T:
    """``await work(session)`` in a unit of work of ``db``, committed; a transient failure
    (``shared.consumer.is_transient``: a deadlock, a busy or restarting database, a snapshot
    gone stale) rolls it back and runs it again in a new one, after ``backoff`` × 2, 4, 8 …
    seconds, at most ``attempts`` times in all. ``work`` must build its result afresh on each
    run (a retried run is counted once). Any other failure, or the last, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            async with db.unit_of_work() as session:
                return await work(session)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            await asyncio.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")
