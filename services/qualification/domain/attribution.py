"""First and last touch, and the contact's motion.

A lead's inbound channel is configuration: the ordered rules of
``deploy/config/channels.yaml``, loaded and applied by ``channels.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Motion = Literal["inbound", "outbound"]
MotionOrBlended = Literal["inbound", "outbound", "blended"]


@dataclass(frozen=True, slots=True)
class Touch:
    """One touch of a contact: a form submission (inbound) or a sales touch (outbound).

    ``form_id``/``form_type`` are set for inbound touches, ``sequence``/``outcome`` for
    outbound ones; ``event_id`` is the fact's event id, so an opportunity can name the
    events that led to it.
    """

    motion: Motion
    channel: str
    occurred_at: datetime
    campaign: str | None = None
    form_id: str | None = None
    form_type: str | None = None
    sequence: str | None = None
    event_id: str | None = None
    outcome: str | None = None


def first_touch(existing: Touch | None, new: Touch) -> Touch:
    """The earliest of the two touches; on a tie the one already recorded stays."""
    if existing is None or new.occurred_at < existing.occurred_at:
        return new
    return existing


def last_touch_before_qualification(
    existing: Touch | None, new: Touch, qualified_at: datetime | None
) -> Touch | None:
    """The latest touch not after qualification.

    Once a contact is qualified (``qualified_at`` set) a touch after that moment never
    replaces it: the last touch is frozen. The qualifying touch itself (at
    ``qualified_at``) still counts. On a tie in time the newer fact wins.
    """
    if qualified_at is not None and new.occurred_at > qualified_at:
        return existing
    if existing is None or new.occurred_at >= existing.occurred_at:
        return new
    return existing


def motion_of(motions_seen_before_qualification: set[str]) -> MotionOrBlended:
    """The contact's motion: ``inbound`` or ``outbound`` if only one motion touched it
    before qualification, ``blended`` if both did.

    Raises ``ValueError`` for an empty set (a contact always entered somehow).
    """
    seen = set(motions_seen_before_qualification)
    if "blended" in seen:
        seen |= {"inbound", "outbound"}
    seen &= {"inbound", "outbound"}
    if not seen:
        raise ValueError("a contact has at least one motion")
    if len(seen) == 2:
        return "blended"
    return "inbound" if "inbound" in seen else "outbound"
