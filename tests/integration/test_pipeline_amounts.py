"""Amounts that make "pipeline" mean pipeline (issue 24 item 6): an accept may carry the
expected amount, a win's replaces it, and scoring.yaml's expected amount of the motion
stands in (marked estimated) for an opportunity accepted without one. In-process pipeline
app, real broker, real migrated store on both backends."""

from __future__ import annotations

import shutil
from decimal import Decimal

import pytest
from sqlalchemy import select

from pipeline_store.models import Opportunity, PipelineOutbox, StageChange
from services.pipeline.app import create_app
from shared.amounts import ExpectedAmountsError, read_expected_amounts
from tests.integration.test_pipeline_api import (  # noqa: F401 - the fixtures
    Store, _opportunity_in, add_key, pipeline, shared_pipeline,
)
from tests.support import ROOT, make_settings, serve_app

pytestmark = pytest.mark.timeout(120)

ROOT_CONFIG = ROOT / "deploy" / "config"

EXPECTED = "\nexpected_amounts:\n  inbound: 12000\n  outbound: \"30000.50\"\n"


def config_with(tmp_path, extra: str):  # noqa: ANN001, ANN201
    """A config dir: the shipped files, scoring.yaml with ``extra`` appended."""
    config = tmp_path / "config"
    shutil.copytree(ROOT_CONFIG, config)
    scoring = config / "scoring.yaml"
    scoring.write_text(scoring.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return config


@pytest.fixture
async def with_defaults(broker, database_factory, tmp_path):
    url = await database_factory("pipeline")
    settings = make_settings(broker.bootstrap, tmp_path, service="pipeline", pipeline_database_url=url,
                             config_dir=config_with(tmp_path, EXPECTED))
    app = create_app(settings)
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        client.store = Store(app.state.runtime.db)
        client.headers["Authorization"] = "Bearer " + await add_key(client.runtime.db, "alice@sales", "pipeline")
        yield client


async def _move(client, opp_id: str, body: dict) -> dict:  # noqa: ANN001
    response = await client.post(f"/v1/opportunities/{opp_id}/transitions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def _stored(client, opp_id: str) -> Opportunity:  # noqa: ANN001
    async with client.runtime.db.reader() as session:
        return await session.get(Opportunity, opp_id)


async def test_an_accept_carries_the_expected_amount_and_a_win_replaces_it(pipeline):  # noqa: F811
    _, opp = await _opportunity_in(pipeline, "sql")
    accepted = await _move(pipeline, opp.id, {"to": "opportunity", "amount": "18000.25"})
    assert (accepted["opportunity"]["amount"], accepted["opportunity"]["amount_estimated"]) == (18000.25, False)
    assert accepted["stage_change"]["amount"] == 18000.25
    won = await _move(pipeline, opp.id, {"to": "customer", "amount": 21000})
    assert (won["opportunity"]["amount"], won["opportunity"]["amount_estimated"]) == (21000.0, False)
    stored = await _stored(pipeline, opp.id)
    assert (stored.amount, stored.amount_estimated) == (Decimal("21000.00"), False)


async def test_without_a_default_an_accept_without_amount_has_none(pipeline):  # noqa: F811
    _, opp = await _opportunity_in(pipeline, "sql")
    accepted = await _move(pipeline, opp.id, {"to": "opportunity"})
    assert (accepted["opportunity"]["amount"], accepted["opportunity"]["amount_estimated"]) == (None, False)


async def test_the_motions_expected_amount_stands_in_marked_estimated(with_defaults):
    _, inbound = await _opportunity_in(with_defaults, "sql")
    _, outbound = await _opportunity_in(with_defaults, "sql", motion="outbound", channel="cold_email")
    _, blended = await _opportunity_in(with_defaults, "sql", motion="blended", channel="webinar")
    _, named = await _opportunity_in(with_defaults, "sql")

    answer = await _move(with_defaults, inbound.id, {"to": "opportunity", "reason": "discovery call"})
    assert (answer["opportunity"]["amount"], answer["opportunity"]["amount_estimated"]) == (12000.0, True)
    # the stage change and its event carry what sales sent: no amount
    assert answer["stage_change"]["amount"] is None
    async with with_defaults.runtime.db.reader() as session:
        change = (await session.execute(select(StageChange).where(StageChange.opportunity_id == inbound.id))
                  ).scalar_one()
        outbox = (await session.execute(select(PipelineOutbox).where(PipelineOutbox.event_id == change.event_id))
                  ).scalar_one()
    assert change.amount is None and b'"amount"' not in outbox.value
    answer = await _move(with_defaults, outbound.id, {"to": "opportunity"})
    assert (answer["opportunity"]["amount"], answer["opportunity"]["amount_estimated"]) == (30000.5, True)
    answer = await _move(with_defaults, blended.id, {"to": "opportunity"})  # no default for blended
    assert (answer["opportunity"]["amount"], answer["opportunity"]["amount_estimated"]) == (None, False)
    answer = await _move(with_defaults, named.id, {"to": "opportunity", "amount": 5000})
    assert (answer["opportunity"]["amount"], answer["opportunity"]["amount_estimated"]) == (5000.0, False)

    # every answer that shows the opportunity says so
    shown = (await with_defaults.get(f"/v1/opportunities/{inbound.id}")).json()
    assert (shown["amount"], shown["amount_estimated"]) == (12000.0, True)
    listed = {o["id"]: o for o in (await with_defaults.get("/v1/opportunities")).json()["items"]}
    assert listed[inbound.id]["amount_estimated"] and not listed[named.id]["amount_estimated"]

    # analytics: the estimated part of pipeline amount apart
    report = (await with_defaults.get("/v1/analytics/sources", params={"group_by": "motion"})).json()
    rows = {r["motion"]: r for r in report["rows"]}
    assert (rows["inbound"]["pipeline_amount"], rows["inbound"]["estimated_pipeline_amount"]) == (17000.0, 12000.0)
    assert (rows["outbound"]["pipeline_amount"], rows["outbound"]["estimated_pipeline_amount"]) == (30000.5, 30000.5)
    assert (rows["blended"]["pipeline_amount"], rows["blended"]["estimated_pipeline_amount"]) == (None, None)
    totals = report["totals"]
    assert (totals["pipeline_amount"], totals["estimated_pipeline_amount"], totals["won_amount"]) == (
        47000.5, 42000.5, None)
    csv = (await with_defaults.get("/v1/analytics/sources", params={"group_by": "motion"},
                                   headers={"Accept": "text/csv"})).text
    assert "estimated_pipeline_amount" in csv.splitlines()[0]

    # a win replaces the estimate; a loss keeps it out of pipeline
    won = await _move(with_defaults, inbound.id, {"to": "customer", "amount": 9000})
    assert (won["opportunity"]["amount"], won["opportunity"]["amount_estimated"]) == (9000.0, False)
    lost = await _move(with_defaults, outbound.id, {"to": "lost", "reason": "no budget"})
    assert (lost["opportunity"]["amount"], lost["opportunity"]["amount_estimated"]) == (30000.5, True)
    totals = (await with_defaults.get("/v1/analytics/sources")).json()["totals"]
    assert (totals["pipeline_amount"], totals["estimated_pipeline_amount"], totals["won_amount"]) == (
        14000.0, 0.0, 9000.0)


BAD_AMOUNTS = [
    (-5, "greater_than"),
    (0, "greater_than"),
    ("abc", "decimal_parsing"),
    ("1,000", "decimal_parsing"),
    (True, "decimal_type"),
    ([1000], "decimal_type"),
    ("NaN", "finite_number"),
    ("Infinity", "finite_number"),
    ("12345678901234567", "decimal_max_digits"),
    ("12345678901234.5", "decimal_whole_digits"),  # 14 digits: a JSON number would not keep the cents
    (1e20, "decimal_max_digits"),
    ("0.001", "decimal_max_places"),
]


@pytest.mark.parametrize("amount", ["9999999999999.99", "1234567890123.45", 0.01, 42000.5])
async def test_an_accepted_amount_is_the_amount_answered(shared_pipeline, amount):  # noqa: F811
    """The largest amounts accepted keep every cent through the store (a double on SQLite)
    and the answer's JSON number."""
    _, opp = await _opportunity_in(shared_pipeline, "sql")
    response = await shared_pipeline.post(f"/v1/opportunities/{opp.id}/transitions",
                                          json={"to": "opportunity", "amount": amount})
    assert response.status_code == 200, response.text
    assert response.json()["opportunity"]["amount"] == float(amount)
    shown = (await shared_pipeline.get(f"/v1/opportunities/{opp.id}")).json()
    assert repr(shown["amount"]) == repr(float(amount)) and str(Decimal(str(shown["amount"]))) == str(amount)


@pytest.mark.parametrize("amount,kind", BAD_AMOUNTS)
async def test_a_bad_expected_amount_is_422_naming_the_field(shared_pipeline, amount, kind):  # noqa: F811
    _, opp = await _opportunity_in(shared_pipeline, "sql")
    response = await shared_pipeline.post(f"/v1/opportunities/{opp.id}/transitions",
                                          json={"to": "opportunity", "amount": amount})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [(e["field"], e["in"], e["type"]) for e in response.json()["errors"]] == [("amount", "body", kind)]
    stored = await _stored(shared_pipeline, opp.id)
    assert (stored.stage, stored.amount) == ("sql", None)


@pytest.mark.parametrize("section,problem", [
    ("expected_amounts:\n  inbound: -1\n", "expected_amounts.inbound: Input should be greater than 0"),
    ("expected_amounts:\n  inbound: lots\n", "expected_amounts.inbound: Input should be a valid decimal"),
    ("expected_amounts:\n  partners: 100\n", "expected_amounts.partners: Extra inputs are not permitted"),
    ("expected_amounts:\n  outbound: 1.005\n", "expected_amounts.outbound: Decimal input should have no more"),
])
async def test_a_bad_expected_amount_in_scoring_yaml_stops_the_pipeline_at_start(broker, tmp_path, section, problem):
    config = config_with(tmp_path, "\n" + section)
    with pytest.raises(ExpectedAmountsError, match="scoring.yaml: " + problem.replace(".", r"\.")):
        read_expected_amounts(config / "scoring.yaml")
    settings = make_settings(broker.bootstrap, tmp_path, service="pipeline", config_dir=config)
    with pytest.raises(SystemExit, match="pipeline: .*" + problem.replace(".", r"\.")):
        create_app(settings)


def test_the_shipped_file_sets_no_expected_amount():
    assert read_expected_amounts(ROOT_CONFIG / "scoring.yaml").model_dump() == {
        "inbound": None, "outbound": None, "blended": None}
