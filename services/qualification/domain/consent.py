"""What a fact says about the person's consent: the entries it adds to their ledger. Pure:
values in, values out.

The rules, in the spec's words ("consent given on a form, or withdrawn by an ``unsubscribed``
outcome or a form's opt-out"):

- a lead whose ``consent.marketing`` is ``true`` **grants** marketing, with the consent's
  ``text`` (the wording the person agreed to);
- a lead whose ``consent.marketing`` is ``false`` **withdraws** it: the form asked and the
  person said no (an opt-out field, a ``no`` in a select, or an unticked box, which capture
  reads as ``false`` when the form sent its consent text). The latest answer is the person's
  current one, so saying no on a later form takes back an earlier yes;
- a lead without ``consent`` (the form did not ask) says nothing;
- a touch whose outcome is ``unsubscribed`` **withdraws** marketing, whatever the channel.

An entry's source names where it came from: ``form:<form id>`` (``form`` when the lead names
no form) or ``outreach:<channel>``; its time is the fact's ``occurred_at`` and its cause the
fact's event id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.consent import GRANTED, MARKETING, WITHDRAWN

UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True, slots=True)
class ConsentFact:
    purpose: str
    status: str
    text: str | None
    source: str
    occurred_at: datetime
    cause_event_id: str


def of_lead(consent: object | None, form_id: str | None, event_id: str, at: datetime) -> list[ConsentFact]:
    """The entries of a lead with ``consent`` (its ``marketing`` and ``text``, or ``None``)."""
    marketing = getattr(consent, "marketing", None) if consent is not None else None
    if marketing is None:
        return []
    source = f"form:{form_id}" if form_id else "form"
    return [ConsentFact(MARKETING, GRANTED if marketing else WITHDRAWN, getattr(consent, "text", None), source, at,
                        event_id)]


def of_touch(outcome: str, channel: str, event_id: str, at: datetime) -> list[ConsentFact]:
    """The entries of a sales touch: a withdrawal of marketing if the person unsubscribed."""
    if outcome != UNSUBSCRIBED:
        return []
    return [ConsentFact(MARKETING, WITHDRAWN, None, f"outreach:{channel}", at, event_id)]
