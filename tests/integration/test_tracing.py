"""One lead's path is one trace: its events carry the trace on, and with the SDK every span shares it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from shared.broker import EmbeddedBroker, free_port
from shared.events import OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES
from tests.integration.test_qualification import BUSINESS, lead, stack  # noqa: F401 - the fixture
from tests.support import ROOT

pytestmark = pytest.mark.timeout(180)

CAUSE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_derived_events_continue_the_trace_of_the_lead_that_caused_them(stack):  # noqa: F811
    traced = lead("jane@acme-robotics.com", **BUSINESS)
    traced.traceparent = CAUSE
    untraced = lead("john@acme-robotics.com", **BUSINESS)
    await stack.produce(traced, untraced)
    qualified = {e.subject: e for e in await stack.topic(OPPORTUNITIES_QUALIFIED, expect=2)}
    stages = await stack.topic(PIPELINE_CHANGES, expect=4)
    # no SDK in this process: the span in effect is the cause's own context, passed on unchanged
    assert qualified["jane@acme-robotics.com"].traceparent == CAUSE
    assert {e.traceparent for e in stages if e.subject == "jane@acme-robotics.com"} == {CAUSE}
    assert qualified["john@acme-robotics.com"].traceparent is None
    assert {e.traceparent for e in stages if e.subject == "john@acme-robotics.com"} == {None}


async def test_with_the_sdk_one_lead_is_one_trace_from_request_to_qualification(database_factory, tmp_path):
    capture_url, pipeline_url = await database_factory("capture"), await database_factory("pipeline")
    broker = EmbeddedBroker(port=free_port())  # of its own: the probe reads the topics from the start
    await broker.astart()
    try:
        probe = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tests.tracing_probe", broker.bootstrap, capture_url, pipeline_url,
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=150)
    finally:
        broker.stop()
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = orjson.loads(probe.stdout.strip().splitlines()[-1])
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"  # the client's, from its traceparent header
    spans = seen["spans"]
    names = {s["name"] for s in spans}
    assert "POST /v1/leads" in names, names  # FastAPI's server span
    # SQLAlchemy is instrumented (on SQLite the group commit writes many requests' rows at once, on a
    # thread of its own, so those statements belong to no one request's trace)
    assert any(s["name"].upper().startswith(("INSERT", "SELECT")) for s in spans), ", ".join(sorted(names))
    apply = [s for s in spans if s["name"] == "apply io.leadstream.lead.captured.v1"]
    assert apply and {s["trace"] for s in apply} == {trace}
    # every span of the request and of applying its lead is in the client's trace
    request = [s for s in spans if s["trace"] == trace]
    assert len(request) >= 3
    assert seen["lead"].split("-")[1] == trace
    assert seen["qualified"].split("-")[1] == trace
    # the qualified event continues the trace from qualification's own span, not from the request's
    assert seen["qualified"].split("-")[2] != seen["lead"].split("-")[2]
    assert {tp.split("-")[1] for tp in seen["stages"]} == {trace}
