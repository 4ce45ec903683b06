"""Rate limits (the ``limits`` library): ``100/minute`` strings from settings, ``off`` disables."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from shared.errors import ProblemError


class RateLimit:
    """One named limit applied per key (a client address, a form, an API key)."""

    def __init__(self, spec: str, name: str) -> None:
        self.name = name
        self.enabled = spec.strip().lower() != "off"
        if self.enabled:
            self.item = parse(spec)
            self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, key: str) -> None:
        """Count a hit; ``429`` with ``Retry-After`` when over the limit."""
        if not self.enabled:
            return
        if await self.limiter.hit(self.item, self.name, key):
            return
        stats = await self.limiter.get_window_stats(self.item, self.name, key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ProblemError(
            429,
            f"Rate limit of {self.item} per {self.name} exceeded; retry after {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
