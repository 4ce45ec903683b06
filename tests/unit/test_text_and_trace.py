"""What a client may put in a text field, and which ``traceparent`` is carried on (issue 26.10)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from shared.events import LEAD_CAPTURED, make_event, valid_traceparent
from shared.schemas import Short, line, text

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value,kept", [
    (VALID, VALID),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    (None, None),
    ("", None),
    (VALID.upper(), None),  # lowercase hex only
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # all-zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", None),  # all-zero parent id
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # only version 00 is understood
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    (VALID + "-00", None),
    (VALID[:-1], None),
    ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", None),
    ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", None),
    (" " + VALID[:-1], None),
    ("garbage\u00e9", None),
    ("00-" + "a" * 8000, None),
])
def test_valid_traceparent(value, kept):
    assert valid_traceparent(value) == kept


def test_an_event_carries_only_a_valid_traceparent():
    def event(traceparent):  # noqa: ANN001, ANN202
        return make_event(LEAD_CAPTURED, {"email": "a@b.co"}, source="/t", subject="a@b.co", traceparent=traceparent)

    assert event(VALID).traceparent == VALID
    assert event("garbage").traceparent is None and b"traceparent" not in event("garbage").to_bytes()


SHORT = TypeAdapter(Short)
TEXT = TypeAdapter(text(2000))
KEY = TypeAdapter(line(100, strip=False))


@pytest.mark.parametrize("value", ["Ada", "Zoë Ångström", "李雷", "O'Brien-Smith", "emoji \U0001f680", "\u00a0nbsp"])
def test_printable_text_is_kept(value):
    assert SHORT.validate_python(value) == value.strip()
    assert TEXT.validate_python(value) == value


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f"])
def test_control_characters_are_refused_everywhere(char):
    for adapter in (SHORT, TEXT, KEY):
        with pytest.raises(ValidationError) as caught:
            adapter.validate_python(f"a{char}b")
        assert caught.value.errors()[0]["type"] == "control_character"


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_tab_and_line_breaks_only_in_free_text(char):
    assert TEXT.validate_python(f"a{char}b") == f"a{char}b"
    for adapter in (SHORT, KEY):
        with pytest.raises(ValidationError):
            adapter.validate_python(f"a{char}b")


def test_a_one_line_value_is_stripped_before_it_is_checked():
    assert SHORT.validate_python("  Ada\n") == "Ada"  # surrounding whitespace is trimmed, as before


async def test_a_server_span_keeps_no_email_from_the_query_string():
    """The instrumentation records the request's URL and target; ``shared.tracing``'s hook
    replaces personal query values (``?email=``) before the span is exported."""
    import httpx
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.tracing import redact_personal_query

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/v1/contacts")
    async def contacts(email: str | None = None, limit: int = 10) -> dict:
        return {"limit": limit}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, server_request_hook=redact_personal_query)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await client.get("/v1/contacts", params={"email": "jo.doe@gmail.com", "limit": 3})).status_code == 200
        assert (await client.get("/v1/contacts", params={"limit": 4})).status_code == 200
    recorded = [dict(s.attributes) for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert len(recorded) == 2
    assert "jo.doe" not in repr(recorded) and "gmail" not in repr(recorded)
    urls = [a.get("http.url") or a.get("url.full") for a in recorded]
    assert any(u.endswith("?email=REDACTED&limit=3") for u in urls), urls
    assert any(u.endswith("?limit=4") for u in urls), urls  # other queries are kept as they were
