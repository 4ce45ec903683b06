"""Opaque keyset cursors: base64url of (list, order, sort time, id).

A keyset cursor names the last row a client saw, not an offset, so rows inserted while
a client walks the pages never shift the window: no row is skipped or repeated.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

import orjson

from shared.times import as_utc


class BadCursor(ValueError):
    """The cursor was not made by this list (tampered, truncated, or from another list or order)."""


@dataclass(frozen=True)
class Position:
    """Where the previous page ended: the sort time and id of its last row."""

    at: datetime
    id: str


def encode_cursor(kind: str, order: str, at: datetime, row_id: str) -> str:
    raw = orjson.dumps([kind, order, as_utc(at).isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, kind: str, order: str) -> Position:
    """The position a cursor names; ``BadCursor`` unless it was made for this list and order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, made_order, at, row_id = orjson.loads(raw)
        when = as_utc(datetime.fromisoformat(at))
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise BadCursor("not a cursor this API issued") from None
    if made_for != kind or not isinstance(row_id, str) or not row_id:
        raise BadCursor(f"not a cursor of the {kind} list")
    if made_order != order:
        raise BadCursor(f"the cursor was issued for order={made_order}; send the same order")
    return Position(when, row_id)
