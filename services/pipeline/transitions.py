"""Sales transitions of an opportunity: which moves are legal and what each one needs.

Pure values in, values out. Qualification moves stages forward automatically up to
``sql``; from there only a salesperson moves an opportunity on (accept, win) or out
(lose, disqualify, nurture). Closed stages are final for the opportunity, but for one: a
nurtured contact whose engagement qualifies it again gets its one opportunity back, open at
``sql`` (qualification reopens it; its amount and first qualification are kept).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

OPEN_STAGES = ("sql", "opportunity")
WON = "customer"
EXITS = ("lost", "disqualified", "nurture")
TARGETS = ("opportunity", WON, *EXITS)

_ALLOWED: dict[str, tuple[str, ...]] = {
    "sql": ("opportunity", *EXITS),
    "opportunity": (WON, *EXITS),
}

# the contact's milestone column each target sets (first time reached)
MILESTONES: dict[str, str] = {"opportunity": "opportunity_at", WON: "customer_at", "lost": "lost_at"}


def allowed_transitions(stage: str) -> tuple[str, ...]:
    """Where an opportunity in ``stage`` may be moved by hand (nothing once closed)."""
    return _ALLOWED.get(stage, ())


def is_allowed(current: str, to: str) -> bool:
    return to in allowed_transitions(current)


def missing_fields(to: str, reason: str | None, amount: Decimal | None) -> list[dict[str, Any]]:
    """Field errors (problem+json shape) for what a move to ``to`` requires."""
    errors = []
    if to == WON and amount is None:
        errors.append({"field": "amount", "in": "body", "type": "missing",
                       "message": "a won opportunity needs its amount (greater than 0)"})
    if to in EXITS and not (reason or "").strip():
        errors.append({"field": "reason", "in": "body", "type": "missing",
                       "message": f"moving an opportunity to {to} needs a reason"})
    return errors
