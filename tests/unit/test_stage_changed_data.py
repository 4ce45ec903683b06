"""``stage.changed`` data: the amount is written as a JSON number and read from either form."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest

from shared.events import STAGE_CHANGED, StageChanged, make_event

BASE = {"contact_id": "c1", "email": "a@b.co", "to_stage": "customer", "changed_by": "alice",
        "changed_at": "2026-12-01T00:00:00Z"}


@pytest.mark.parametrize("amount,written", [
    (Decimal("42000.50"), 42000.5), (Decimal("24000"), 24000.0), (Decimal("0.01"), 0.01),
    # the largest amount accepted (13 digits before the point): a double keeps it exactly
    (Decimal("9999999999999.99"), 9999999999999.99), (Decimal("1234567890123.45"), 1234567890123.45),
])
def test_amount_is_written_as_a_json_number(amount, written):
    data = StageChanged.model_validate(BASE | {"amount": amount, "currency": "USD"})
    event = make_event(STAGE_CHANGED, data, source="/t", subject="a@b.co", time=datetime.now(timezone.utc))
    published = orjson.loads(event.to_bytes())["data"]
    assert published["amount"] == written and isinstance(published["amount"], float)
    assert published["currency"] == "USD"


@pytest.mark.parametrize("sent", ["42000.50", 42000.5, "42000.5", 42000.50])
def test_amount_is_read_from_a_number_or_a_v1_string(sent):
    assert StageChanged.model_validate(BASE | {"amount": sent}).amount == Decimal("42000.5")


def test_without_an_amount_neither_is_written():
    data = StageChanged.model_validate(BASE).model_dump(mode="json", exclude_none=True)
    assert "amount" not in data and "currency" not in data


def test_the_published_schema_says_number():
    schema = StageChanged.model_json_schema(mode="serialization")
    assert {"type": "number"} in schema["properties"]["amount"]["anyOf"]
