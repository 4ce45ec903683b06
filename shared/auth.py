"""API keys checked on requests (``ApiKeyAuth``); the stored form is ``shared.api_keys``."""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select

from shared.api_keys import hash_key
from shared.errors import ProblemError
from shared.ratelimit import RateLimit


@dataclass(frozen=True)
class Principal:
    """Who made a request: the API key's id, name and scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]


class ApiKeyAuth:
    """Checks ``Authorization: Bearer <key>`` against a key table; rate-limits per key.

    Keys found are cached for ``cache_seconds`` (a revoked key stops working within that).
    """

    def __init__(self, db, key_model, rate_limit: str, cache_seconds: float = 5.0) -> None:  # noqa: ANN001
        self.db, self.model, self.cache_seconds = db, key_model, cache_seconds
        self.limit = RateLimit(rate_limit, "API key")
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, request: Request, scope: str) -> Principal:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise ProblemError(401, "Send an API key as 'Authorization: Bearer <key>'.",
                               headers={"WWW-Authenticate": 'Bearer realm="leadstream"'})
        return await self.verify(token.strip(), scope)

    async def verify(self, token: str, scope: str) -> Principal:
        """The principal of a raw key with ``scope`` (401/403/429 as problems)."""
        principal = await self._lookup(hash_key(token))
        if principal is None:
            raise ProblemError(401, "The API key is not valid or was revoked.",
                               headers={"WWW-Authenticate": 'Bearer realm="leadstream", error="invalid_token"'})
        if scope not in principal.scopes:
            raise ProblemError(403, f"The API key {principal.name!r} lacks the {scope!r} scope.",
                               required_scope=scope)
        await self.limit.check(principal.key_id)
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        now = _time.monotonic()
        cached = self._cache.get(digest)
        if cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        async with self.db.reader() as session:
            row = (await session.execute(
                select(self.model).where(self.model.key_hash == digest, self.model.revoked_at.is_(None))
            )).scalar_one_or_none()
        principal = Principal(row.id, row.name, frozenset(row.scopes.split())) if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal
