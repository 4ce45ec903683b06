"""A touch's idempotency key: its external id (the sales tool's id) is unique per source, not
across sources. Two tools with their own API keys may both send ``"123"``, and a webhook
integration ``x``'s event ``y`` is not an API caller's ``"x:y"``.

The key is the SHA-256 (hex) of the JSON array ``[kind, scope, id]``: ``kind`` is ``"api"``
or ``"webhook"``; ``scope`` is the API key's *name* (a key rotated under the same name keeps
its scope, so the new key's repeats are still duplicates) or the integration's name; ``id``
is the id as the tool gave it. JSON, not a joined string, so no separator inside a name or
an id can make two sources meet. Migration 0005 fills stored touches with the same formula
(a copy of it: this format is stored, never change it without a migration).
"""

from __future__ import annotations

import hashlib
import json

API = "api"
WEBHOOK = "webhook"


def external_key(kind: str, scope: str, external_id: str) -> str:
    """The stored key of ``external_id`` sent by the source ``(kind, scope)``."""
    text = json.dumps([kind, scope, external_id], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def api_key_of(key_name: str, external_id: str | None) -> str | None:
    """The key of an API caller's ``external_id`` (``None`` without one: nothing to deduplicate)."""
    return None if external_id is None else external_key(API, key_name, external_id)


def webhook_key_of(integration: str, tool_event_id: str) -> str:
    """The key of a webhook event of ``integration``, by the tool's event id."""
    return external_key(WEBHOOK, integration, tool_event_id)
