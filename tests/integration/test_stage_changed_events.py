"""``stage.changed`` carries a stage change's amount as the REST API answers it: a JSON number
with the opportunity's currency (issue 26.14). In-process pipeline app, real broker, real
migrated pipeline store on both backends."""

from __future__ import annotations

import orjson
from sqlalchemy import select

from pipeline_store.models import PipelineOutbox
from shared.events import STAGE_CHANGED, StageChanged, parse_event
from tests.integration.test_pipeline_api import _opportunity_in, pipeline  # noqa: F401 - the fixture
from tests.support import read_until_ids


async def _published_data(client, event_id: str) -> dict:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        value = (await s.execute(select(PipelineOutbox.value).where(PipelineOutbox.event_id == event_id))).scalar_one()
    return orjson.loads(value)["data"]  # the bytes the relay publishes


async def test_a_won_opportunitys_amount_is_a_number_with_its_currency(pipeline, broker):  # noqa: F811
    _, opp = await _opportunity_in(pipeline, "sql", email="ada@example.org")
    url = f"/v1/opportunities/{opp.id}/transitions"
    accepted = (await pipeline.post(url, json={"to": "opportunity"})).json()
    won = (await pipeline.post(url, json={"to": "customer", "amount": "42000.50", "reason": "signed"})).json()

    data = await _published_data(pipeline, won["stage_change"]["event_id"])
    assert type(data["amount"]) is float and data["amount"] == 42000.5
    assert data["amount"] == won["opportunity"]["amount"] == won["stage_change"]["amount"]
    assert data["currency"] == won["opportunity"]["currency"] == "USD"
    without = await _published_data(pipeline, accepted["stage_change"]["event_id"])
    assert "amount" not in without and "currency" not in without  # no amount, no currency

    ids = {accepted["stage_change"]["event_id"], won["stage_change"]["event_id"]}
    events = {e.id: e for e in await read_until_ids(broker.bootstrap, "pipeline.changes", ids) if e.id in ids}
    win = events[won["stage_change"]["event_id"]]
    assert win.type == STAGE_CHANGED == "io.leadstream.stage.changed.v1"  # the same type: see docs
    assert (win.data["amount"], win.data["currency"]) == (42000.5, "USD")
    assert StageChanged.model_validate(win.data).amount == 42000.5


async def test_the_currency_is_the_opportunitys(pipeline):  # noqa: F811
    _, opp = await _opportunity_in(pipeline, "opportunity", email="eur@example.org")
    async with pipeline.runtime.db.unit_of_work() as s:
        (await s.get(type(opp), opp.id)).currency = "EUR"
    won = (await pipeline.post(f"/v1/opportunities/{opp.id}/transitions",
                               json={"to": "lost", "amount": 1200, "reason": "price"})).json()
    data = await _published_data(pipeline, won["stage_change"]["event_id"])
    assert (data["amount"], data["currency"]) == (1200.0, "EUR") == (won["opportunity"]["amount"], "EUR")
    assert parse_event(orjson.dumps({"specversion": "1.0", "id": "x", "source": "/t", "type": STAGE_CHANGED,
                                     "time": "2026-01-01T00:00:00Z", "data": data})).parsed_data().currency == "EUR"
