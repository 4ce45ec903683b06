"""API keys as stored: only a hash, with a name and one or more scopes (no web framework
here: the key tables' models and the ``leadstream api-keys`` command import this alone)."""

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
