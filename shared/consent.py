"""The consent ledger's one rule, which qualification (the ``opportunity.qualified`` event) and
the pipeline API (a contact's detail, the access export) both read: a person's current consent
to a purpose is their latest word on it.

A ledger is a list of entries, each a purpose ``granted`` or ``withdrawn`` at a time by a fact
(its event id). Entries are ordered by the time of their fact; at the same instant a withdrawal
comes after a grant (when the two cannot be told apart, the person is not contacted), then by
event id, so the order, and the current state, do not depend on the order facts arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Literal

MARKETING = "marketing"
GRANTED, WITHDRAWN = "granted", "withdrawn"
ConsentStatus = Literal["granted", "withdrawn"]


def ledger_order(occurred_at: datetime, status: str, cause_event_id: str) -> tuple[datetime, int, str]:
    """The sort key of an entry (see above); a naive time (as SQLite returns it) is UTC."""
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=timezone.utc)
    return occurred_at, status == WITHDRAWN, cause_event_id


def _value(entry: Any, name: str) -> Any:
    return entry[name] if isinstance(entry, dict) else getattr(entry, name)


def in_ledger_order(entries: Iterable[Any]) -> list[Any]:
    """Entries (mappings or objects with ``occurred_at``, ``status``, ``cause_event_id``) in ledger order."""
    return sorted(entries, key=lambda e: ledger_order(
        _value(e, "occurred_at"), _value(e, "status"), _value(e, "cause_event_id")))


def current_state(entries: Iterable[Any]) -> dict[str, Any]:
    """Each purpose's latest entry (purpose → entry); a purpose never mentioned is absent."""
    state: dict[str, Any] = {}
    for entry in in_ledger_order(entries):
        state[_value(entry, "purpose")] = entry
    return state
