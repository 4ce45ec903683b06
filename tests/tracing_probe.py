"""One lead through capture and qualification with the OpenTelemetry SDK recording in memory.

Run by tests/integration/test_tracing.py in a process of its own (a tracer provider is set once
per process): ``python -m tests.tracing_probe BOOTSTRAP CAPTURE_URL PIPELINE_URL DATA_DIR``.
Prints the spans and the events' ``traceparent``s as JSON.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import tracing

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def main(bootstrap: str, capture_url: str, pipeline_url: str, data_dir: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)  # before any engine or app exists, as `leadstream serve` does

    from services.capture.app import create_app as capture_app
    from services.qualification.app import create_app as qualification_app
    from shared.events import LEADS_CAPTURED, OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES
    from tests.support import eventually, make_settings, read_topic, serve_app

    capture_settings = make_settings(bootstrap, Path(data_dir), service="capture", capture_database_url=capture_url)
    settings = make_settings(bootstrap, Path(data_dir), service="qualification", pipeline_database_url=pipeline_url,
                             kafka_consumer_group=f"q-{uuid.uuid4().hex[:8]}")
    async with (serve_app(capture_app(capture_settings)) as capture,
                serve_app(qualification_app(settings)) as qualification):
        lead = {"email": "jane@acme-robotics.com", "form_type": "demo_request", "company": "Acme Robotics",
                "title": "VP of Sales", "employees": 250, "industry": "Software", "country": "US"}
        traceparent = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
        answer = await capture.post("/v1/leads", headers={"traceparent": traceparent}, json=lead)
        assert answer.status_code == 202, answer.text
        qualified = await read_topic(bootstrap, OPPORTUNITIES_QUALIFIED, expect=1, timeout=60)
        lead = await read_topic(bootstrap, LEADS_CAPTURED, expect=1, timeout=10)
        stages = await read_topic(bootstrap, PIPELINE_CHANGES, expect=1, timeout=10)
        await eventually(lambda: _has_apply_span(exporter), timeout=10)
        assert qualification
    spans = [dict(name=s.name, trace=f"{s.context.trace_id:032x}", span=f"{s.context.span_id:016x}",
                  parent=f"{s.parent.span_id:016x}" if s.parent else None) for s in exporter.get_finished_spans()]
    print(orjson.dumps(dict(spans=spans, lead=lead[0].traceparent, qualified=qualified[0].traceparent,
                            stages=[e.traceparent for e in stages])).decode())


async def _has_apply_span(exporter: InMemorySpanExporter) -> bool:
    return any(s.name.startswith("apply ") for s in exporter.get_finished_spans())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
