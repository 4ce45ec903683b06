"""Tracing: one lead's path through the services is one trace (W3C trace context, OpenTelemetry).

A lead's event carries the ``traceparent`` of the request that captured it; the consumer applies
each event inside a span that continues that trace, and every event derived from it (the
opportunity qualified, the stage changed) carries the trace on. That propagation runs on the
OpenTelemetry API alone, so it works whether or not spans are recorded.

Spans are recorded and exported only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OTLP over
HTTP, configured by the SDK's standard ``OTEL_*`` variables): then FastAPI, SQLAlchemy and
aiokafka are instrumented too. Otherwise the API's no-op tracer costs next to nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer(__name__)
_recording = False


def recording() -> bool:
    """True once a tracer provider records spans in this process (``configure`` or ``install``)."""
    return _recording


def configure(service: str) -> bool:
    """At a process's start: export spans over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _recording:
        return _recording
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"leadstream-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def install(provider) -> None:  # noqa: ANN001
    """Record spans with ``provider`` (the process's one; tests pass one with an in-memory
    exporter) and instrument the libraries: SQLAlchemy's engines created from now on, aiokafka."""
    global _recording, _tracer
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer(__name__)
    # its declared range stops below SQLAlchemy 2.1, whose engine events it uses are unchanged
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
    AIOKafkaInstrumentor().instrument()
    _recording = True


def instrument_app(app) -> None:  # noqa: ANN001
    """Server spans for every request of a FastAPI app, when spans are recorded."""
    if _recording:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics",
                                           server_request_hook=redact_personal_query)


# query parameters that carry personal data (``GET /v1/contacts?email=``, the privacy export):
# a server span records the request's URL and target, which would keep them in the traces
PERSONAL_QUERY_PARAMETERS = frozenset({"email"})
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")


def redact_personal_query(span, scope: dict) -> None:  # noqa: ANN001
    """A server span's URL attributes with the values of personal query parameters replaced
    by ``REDACTED`` (the instrumentation's own redaction knows only credentials and signatures)."""
    raw = scope.get("query_string") or b""
    if not raw or not span.is_recording():
        return
    query = raw.decode("latin-1")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name in PERSONAL_QUERY_PARAMETERS for name, _ in pairs):
        return
    redacted = urlencode([(name, "REDACTED" if name in PERSONAL_QUERY_PARAMETERS else value) for name, value in pairs])
    recorded = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = recorded.get(name)
        if name == "url.query" and isinstance(value, str):
            span.set_attribute(name, redacted)
        elif isinstance(value, str) and "?" in value:
            span.set_attribute(name, value.split("?", 1)[0] + "?" + redacted)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span in effect (a request's, an applied event's), if any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextmanager
def continuing(name: str, traceparent: str | None) -> Iterator[None]:
    """Run a step (applying an event) in a span that continues the trace of ``traceparent``.

    Without a recording provider the span is the cause's own context, so what the step derives
    carries the cause's ``traceparent`` unchanged; with none and nothing recorded, nothing runs."""
    if traceparent is None and not _recording:
        yield
        return
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
        yield
