"""API keys: only a hash is stored; each key has a name and one or more scopes."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

KEY_PREFIX = "ls_"


class ApiKeyMixin:
    """Columns of an API-key table; declared by each database that checks keys."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is safe (no dictionary to guess from).
    return hashlib.sha256(key.encode()).hexdigest()


# ---- checking keys on requests ---------------------------------------------------------

import time as _time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from fastapi import Request  # noqa: E402
from sqlalchemy import select  # noqa: E402

from shared.errors import ProblemError  # noqa: E402
from shared.ratelimit import RateLimit  # noqa: E402


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
