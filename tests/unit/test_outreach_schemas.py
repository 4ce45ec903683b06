"""Outreach request schemas (pure): the spec's vocabularies, per-item validation of batches."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from services.outreach.schemas import ProspectIn, TouchBatchIn, TouchIn, WebhookEventIn
from shared.events import OUTBOUND_CHANNELS, OUTCOMES


def test_vocabularies_are_the_specs():
    assert typing.get_args(TouchIn.model_fields["channel"].annotation) == OUTBOUND_CHANNELS
    assert typing.get_args(TouchIn.model_fields["outcome"].annotation) == OUTCOMES


def test_email_kept_as_typed_but_trimmed():
    assert TouchIn(email="  Ada@Example.COM ", channel="cold_call", outcome="connected").email == "Ada@Example.COM"


@pytest.mark.parametrize("model,body,field", [
    (TouchIn, {"email": "a@b.co", "channel": "fax", "outcome": "sent"}, "channel"),
    (TouchIn, {"email": "a@b.co", "channel": "sms", "outcome": "liked"}, "outcome"),
    (TouchIn, {"email": "a@b.co", "channel": "sms", "outcome": "sent", "step": 0}, "step"),
    (TouchIn, {"email": "a@b.co", "channel": "sms", "outcome": "sent", "external_id": ""}, "external_id"),
    (ProspectIn, {"email": "a@b.co", "tags": ["x"] * 51}, "tags"),
    (ProspectIn, {"email": "a@b.co", "linkedin": "x"}, "linkedin"),
    (WebhookEventIn, {"id": "1", "type": "touch", "touch": {"email": "a@b.co", "channel": "sms",
                                                          "outcome": "sent", "external_id": "x"}}, "touch"),
])
def test_rejected_fields(model, body, field):
    with pytest.raises(ValidationError) as exc:
        model.model_validate(body)
    assert exc.value.errors()[0]["loc"][0] == field


def test_batch_items_are_not_validated_by_the_envelope():
    # one bad item must not reject the whole batch: items are checked one by one later
    assert len(TouchBatchIn.model_validate({"touches": [{"nonsense": 1}, 5]}).touches) == 2
    with pytest.raises(ValidationError):
        TouchBatchIn.model_validate({"touches": [{}] * 1001})
    with pytest.raises(ValidationError):
        TouchBatchIn.model_validate({"touches": []})
