"""Dashboard sessions, kept in the pipeline store so that signing out ends them.

The cookie holds a random 256-bit token and nothing else; the store keeps its SHA-256 with
the API key it signed in with and an expiry. A page is served when the token's row exists,
has not expired and its key is not revoked: signing out deletes the row, so a copied cookie
stops working at once, on every pipeline process. A token of any other shape (non-ASCII,
truncated, forged) is refused before the store is asked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.pipeline import repository
from shared.auth import Principal

_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32), ASCII only


def session_id(token: str | None) -> str | None:
    """The stored id of a well-formed token (its SHA-256); ``None`` for anything else."""
    if token is None or not _TOKEN.fullmatch(token):
        return None
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(session: AsyncSession, key_id: str, now: datetime, lifetime: timedelta) -> str:
    """A new session of ``key_id``: the cookie's token. Expired sessions are swept away here."""
    await repository.delete_expired_dashboard_sessions(session, now)
    token = secrets.token_urlsafe(32)
    repository.add_dashboard_session(session, session_id(token), key_id, now, now + lifetime)
    return token


async def principal_of(session: AsyncSession, token: str | None, now: datetime) -> Principal | None:
    """Who a cookie's token signs in, if its session is live and its key not revoked."""
    sid = session_id(token)
    if sid is None:
        return None
    key = await repository.dashboard_session_key(session, sid, now)
    return Principal(key.id, key.name, frozenset(key.scopes.split())) if key else None


async def close_session(session: AsyncSession, token: str | None) -> None:
    """End a session (nothing to do for a token that names none)."""
    sid = session_id(token)
    if sid is not None:
        await repository.delete_dashboard_session(session, sid)
