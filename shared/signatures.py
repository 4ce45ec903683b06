"""Webhook signatures: ``Leadstream-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">``.

The scheme Stripe and Slack use: the timestamp is signed with the body, so a captured
request can be replayed only within the tolerance (and a replay is then deduplicated by
the event id). Several ``v1`` entries may be sent while a secret is rotated. One scheme
for both directions: what sales tools send to outreach, and what Leadstream sends to
webhook subscriptions. Pure functions: no I/O, the clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Iterable

SIGNATURE_HEADER = "Leadstream-Signature"
TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"
# what a sender may put in the header: ASCII digits for the time, 64 hex digits per HMAC
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class SignatureError(ValueError):
    """The request is not signed by a current secret (answered ``401``)."""


def new_webhook_secret() -> str:
    return SECRET_PREFIX + _secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed by the whole secret string."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value a sender puts in ``Leadstream-Signature``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """``(timestamp, [v1 signatures])``; ``SignatureError`` if absent or malformed.

    Every value is checked for its shape before anything is compared: a timestamp is ASCII
    digits (``int()`` would take other scripts' digits, a sign and spaces) and a ``v1`` is 64
    hex digits (``hmac.compare_digest`` refuses non-ASCII text with a ``TypeError``); a ``v1`` of
    another shape can match nothing and is dropped, so a header with no well-formed one is refused."""
    if not header or not header.strip():
        raise SignatureError(f"The {SIGNATURE_HEADER} header is missing.")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        value = value.strip()
        if name == "t":
            if not _TIMESTAMP.fullmatch(value):
                raise SignatureError(f"The {SIGNATURE_HEADER} timestamp is not a unix time.")
            timestamp = int(value)
        elif name == "v1":
            value = value.lower()
            if _HEX_SHA256.fullmatch(value):
                candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"The {SIGNATURE_HEADER} header must be 't=<unix time>,v1=<hex>'.")
    return timestamp, candidates


def verify(
    header: str | None, body: bytes, secrets: Iterable[str], *, now: float, tolerance: int = TOLERANCE_S
) -> int:
    """Check the header against the body and the integration's active secrets; the signed
    timestamp if one matches, else ``SignatureError`` saying why."""
    timestamp, candidates = parse_header(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"The signature timestamp is more than {tolerance} s from now; sign each delivery anew.")
    for secret in secrets:
        expected = signature(secret, timestamp, body)
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return timestamp
    raise SignatureError("No signature matches the body with a current secret of this integration.")


__all__ = ["SECRET_PREFIX", "SIGNATURE_HEADER", "TOLERANCE_S", "SignatureError", "new_webhook_secret",
           "parse_header", "sign", "signature", "verify"]
