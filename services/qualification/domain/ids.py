"""The ids qualification derives from what caused them (RFC 4122 version 5, name-based):
the same cause always derives the same id, so a replay into an empty store rebuilds the
same rows and the same event ids, and a redelivered fact publishes nothing new."""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("0b6a3f5e-2f7d-4f0e-9d8e-5c1a7e2b9c44")
_NAMESPACE_BYTES = NAMESPACE.bytes
# the cause of what a re-score under a policy version does (no event caused it)
_RESCORE = "rescore:"


def derived_id(*parts: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, "|".join(parts)))``, without building the UUID object:
    one or more per event on the worker's hot path."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(parts).encode()).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def contact_id(email: str) -> str:
    """A contact's id, from its identity (the normalised email)."""
    return derived_id("contact", email)


def stage_changed_id(contact_id: str, cause: str, from_stage: str | None, to_stage: str) -> str:
    """The ``stage.changed`` event (and its stored row) of one move a cause made."""
    return derived_id("stage.changed", contact_id, cause, from_stage or "", to_stage)


def opportunity_id(contact_id: str) -> str:
    """A contact's one qualified opportunity."""
    return derived_id("opportunity", contact_id)


def opportunity_qualified_id(contact_id: str, tipping_fact: str) -> str:
    """The ``opportunity.qualified`` event of one qualification: the contact and the fact that
    tipped it into qualification. A person erased, back through a new opt-in and qualified
    again is qualified by another fact, so downstream deduplication does not drop it; a replay
    or redelivery of the same fact derives the same id."""
    return derived_id("opportunity.qualified", contact_id, tipping_fact)


def contact_erased_id(contact_id: str, erasure_id: str) -> str:
    """The ``contact.erased`` event of one erasure of a contact: the same contact id erased
    again (the person opted in again) is a new event; a redelivered request derives the same."""
    return derived_id("contact.erased", contact_id, erasure_id)


def rescore_cause(policy_version: str) -> str:
    """The cause of the moves a re-score under ``policy_version`` makes."""
    return f"{_RESCORE}{policy_version}"


def event_cause(cause: str) -> str | None:
    """The event id a cause names; ``None`` for a re-score, which no event caused."""
    return None if cause.startswith(_RESCORE) else cause
