"""Pure pieces of the shared spine: envelope, errors, settings, forms, identity."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from services.capture.forms import FormsError, load_forms
from shared.errors import field_errors
from shared.events import (
    LEAD_CAPTURED, LEADS_CAPTURED, STAGE_CHANGED, CloudEvent, InvalidEvent, LeadCaptured, make_event, new_event_id,
    parse_event, utcnow,
)
from shared.identity import check_email, normalise_email
from shared.settings import Settings, async_url

ROOT = Path(__file__).resolve().parents[2]


def test_event_round_trip_is_cloudevents_structured_json():
    event = make_event(LEAD_CAPTURED, LeadCaptured(email="A@B.co", occurred_at=utcnow()), source="/capture",
                       subject="a@b.co", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    raw = orjson.loads(event.to_bytes())
    assert raw["specversion"] == "1.0" and raw["datacontenttype"] == "application/json"
    assert {"id", "source", "type", "time", "subject", "traceparent", "data"} <= set(raw)
    again = parse_event(event.to_bytes())
    assert again.id == event.id and again.topic == LEADS_CAPTURED
    assert again.parsed_data().email == "A@B.co"


@pytest.mark.parametrize("data", [
    {"email": "a@b.co", "note": "tab\there\nnewline \u0001 \u2028 ünï ☃ \"quoted\" /slash", "n": 1.0,
     "big": 2 ** 62, "small": 1e-300, "inf": float("inf"), "nested": {"a": [1, None, {"b": None}], "c": True}},
    {"email": "a@b.co", "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
     "local": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))},
])
def test_event_bytes_are_the_json_mode_dump_without_nones(data):
    """``to_bytes`` (pydantic-core in one pass) writes what orjson writes of the JSON-mode dump."""
    event = CloudEvent.model_validate({"source": "/t", "type": LEAD_CAPTURED, "time": "2026-01-02T03:04:05+01:00",
                                       "subject": "a@b.co", "data": data, "partitionkey": "x", "ext": None})
    assert event.to_bytes() == orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def test_event_ids_are_unique_uuid7_that_grow_with_time():
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(str(u) == i for u, i in zip(parsed, ids))  # canonical text
    assert {u.version for u in parsed} == {7} and {u.variant for u in parsed} == {uuid.RFC_4122}
    millis = [u.int >> 80 for u in parsed]
    assert before <= millis[0] and millis == sorted(millis) and millis[-1] <= after
    # ids of later milliseconds sort after earlier ones as text too (what an index orders by)
    later = [i for i, m in zip(ids, millis) if m > millis[0]]
    assert not later or min(later) > max(i for i, m in zip(ids, millis) if m == millis[0])
    event = make_event(LEAD_CAPTURED, LeadCaptured(email="a@b.co", occurred_at=utcnow()), source="/c", subject="a@b.co")
    assert uuid.UUID(event.id).version == 7


@pytest.mark.parametrize(
    "value,reason",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"specversion": "1.0"}', "not a CloudEvents"),
        (b'{"specversion":"0.3","id":"1","source":"s","type":"x","time":"2026-01-01T00:00:00Z","data":{}}',
         "not a CloudEvents"),
        (b'{"specversion":"1.0","id":"1","source":"s","type":"io.other.v1","time":"2026-01-01T00:00:00Z","data":{}}',
         "unknown event type"),
    ],
)
def test_parse_event_rejects_what_is_not_a_known_event(value, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(value)


def test_invalid_data_of_a_known_type_is_invalid_event():
    raw = (
        b'{"specversion":"1.0","id":"1","source":"s","type":"%s","time":"2026-01-01T00:00:00Z","data":{"email":5}}'
        % LEAD_CAPTURED.encode()
    )
    with pytest.raises(InvalidEvent, match="email"):
        parse_event(raw).parsed_data()


def test_unknown_type_cannot_be_made():
    with pytest.raises(ValueError):
        make_event("io.nope.v1", LeadCaptured(email="a@b.co", occurred_at=utcnow()), source="s", subject="a")
    assert STAGE_CHANGED.endswith(".v1")


@pytest.mark.parametrize(
    "error,expected",
    [
        ({"loc": ("body", "email"), "msg": "Field required", "type": "missing"}, ("email", "body", "missing")),
        ({"loc": ("body", "utm", "source"), "msg": "x", "type": "string_type"}, ("utm.source", "body", "string_type")),
        ({"loc": ("query", "limit"), "msg": "x", "type": "less_than_equal"}, ("limit", "query", "less_than_equal")),
        ({"loc": ("body", 12), "msg": "JSON decode error", "type": "json_invalid", "ctx": {"error": "Expecting value"}},
         ("body", "body", "json_invalid")),
        ({"loc": ("body", "colour"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"},
         ("colour", "body", "extra_forbidden")),
    ],
)
def test_field_errors_name_each_field(error, expected):
    (out,) = field_errors([error])
    assert (out["field"], out["in"], out["type"]) == expected
    assert out["message"]


@pytest.mark.parametrize(
    "url,expected",
    [
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_pick_the_async_driver(url, expected):
    assert async_url(url) == expected


def test_settings_defaults_and_shared_pipeline_store(monkeypatch):
    from leadstream.registry import database_url, port_of

    monkeypatch.setenv("LEADSTREAM_DATA_DIR", "/data")
    settings = Settings()
    assert settings.embedded_broker
    assert settings.database_url("capture") == "sqlite+aiosqlite:////data/capture.db"
    assert database_url(settings, "qualification") == settings.database_url("pipeline")
    assert port_of(settings, "outreach") == 8002
    monkeypatch.setenv("LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    assert not Settings().embedded_broker


def test_shipped_forms_load_and_bad_files_are_named(tmp_path):
    forms = load_forms(ROOT / "deploy" / "config" / "forms.yaml")
    assert {"demo-request", "whitepaper-pipeline-2026", "newsletter"} <= set(forms)
    assert forms["demo-request"].allows(None) and not forms["demo-request"].allows("https://evil.example")
    bad = tmp_path / "forms.yaml"
    bad.write_text("forms:\n  - id: x\n    form_type: coffee\n    thank_you_url: /\n")
    with pytest.raises(FormsError, match="form_type"):
        load_forms(bad)
    bad.write_text("forms: [\n")
    with pytest.raises(FormsError):
        load_forms(bad)


@pytest.mark.parametrize(
    "raw,normalised",
    [
        (" Ada@Example.COM ", "ada@example.com"),
        ("a+tag@googlemail.com", "a+tag@gmail.com"),
        ("X@Gmail.com", "x@gmail.com"),
    ],
)
def test_normalise_email(raw, normalised):
    assert normalise_email(raw) == normalised


@pytest.mark.parametrize("bad", ["", "plain", "a@", "@b.co", "a b@c.co", "a@b..co"])
def test_check_email_rejects_invalid(bad):
    with pytest.raises(ValueError):
        check_email(bad)


def test_check_email_keeps_as_typed():
    assert check_email("  Ada.Lovelace@Example.com ") == "Ada.Lovelace@Example.com"


LEADS = [
    {"email": "ada@example.com"},
    {"email": " Ada.Lovelace@Analytical-Engines.co.uk ", "first_name": " Ada ", "employees": 0, "country": "GB",
     "form_type": "demo_request", "page_url": "https://www.example.com/demo?x=1", "utm": {"source": "google"},
     "consent": {"marketing": False}, "fields": {"use_case": "pipeline", "é": "ü"}, "lead_magnet": "ebook"},
    {"email": "bob@example.org", "occurred_at": "2026-01-02T03:04:05+02:00",
     "consent": {"marketing": True, "text": "ok"}},
    {"email": "eve@example.net", "occurred_at": "2026-01-02T03:04:05"},
]


@pytest.mark.parametrize("body", LEADS)
def test_capture_event_data_is_what_the_lead_captured_model_would_dump(body):
    """capture builds the event's data from the validated lead's own dump: the same JSON as
    building LeadCaptured from the lead (as capture did before), and a valid LeadCaptured."""
    from services.capture.schemas import LeadIn
    from services.capture.service import event_data

    assert set(LeadIn.model_fields) == set(LeadCaptured.model_fields)
    lead = LeadIn.model_validate(body)
    occurred_at = lead.occurred_at or utcnow()
    built = LeadCaptured.model_construct(**(dict(lead) | {"occurred_at": occurred_at}))
    data = event_data(lead, occurred_at)
    assert orjson.dumps(data) == orjson.dumps(built.model_dump(mode="json", exclude_none=True))
    validated = LeadCaptured.model_validate(lead.model_dump() | {"occurred_at": occurred_at})
    assert LeadCaptured.model_validate(data) == validated


def test_check_email_gives_the_same_verdict_when_it_remembers_the_address():
    for _ in range(3):
        assert check_email(" Grace@Navy.example.com") == "Grace@Navy.example.com"
        with pytest.raises(ValueError, match="not a valid email address: .*@"):
            check_email("grace@@navy.example.com")
    long_local = "a" * 400 + "@example.com"  # longer than any schema accepts: checked, not remembered
    with pytest.raises(ValueError, match="not a valid email address"):
        check_email(long_local)


_EMAIL_EDGES = [
    "ada@example.com", "a@b..co", "a@-x.com", "a@x-.com", "a@x", "a@1.2.3.4", "a@localhost", "a@example.com.",
    "a@.example.com", "a@exa_mple.com", "a@" + "x" * 64 + ".com", "a@" + ".".join(["x" * 63] * 4) + ".com",
    "a" * 65 + "@x.com", "a@xn--e1afmkfd.xn--p1ai", "a@xn--zz.com", "a@example.test", "a@x.local", "a@x.123",
    "b" * 64 + "@" + ("c" * 63 + ".") * 3 + "c" * 57, "b" * 60 + "@" + ("c" * 63 + ".") * 3 + "c" * 57,
    "Postmaster@Example.COM", "o'brien+tag@example.ie", "a.b.c@example.co.uk", ".a@x.com", "a.@x.com",
    '"quoted"@example.com', "Ada <ada@example.com>", "ada@[127.0.0.1]", "ädä@example.com", "ada@exämple.com",
]


@pytest.mark.parametrize("address", _EMAIL_EDGES)
def test_email_verdict_by_domain_is_the_verdict_of_the_whole_check(address):
    """Plain addresses are judged by their domain's remembered verdict: always the verdict
    (and the message) that email-validator gives for the whole address."""
    from shared.identity import _address_problem, _email_problem

    assert _email_problem.__wrapped__(address) == _address_problem(address)


@hypothesis_settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aZ09._-+'!#@[]\"<> ä", min_size=1, max_size=80),
       st.sampled_from(["", "example.com", "x.co", "-", ".", "a..b", "exa_mple.com", "x" * 64 + ".io"]))
def test_email_verdict_by_domain_matches_the_whole_check_on_any_text(text, suffix):
    from shared.identity import _address_problem, _email_problem

    address = text + suffix
    assert _email_problem.__wrapped__(address) == _address_problem(address)


def test_operations_configuration_names_every_setting():
    """Every setting (the spine's ``Settings`` and each service's class, from the registry) is a
    row of docs/operations.md's Configuration table, by its full name."""
    from leadstream.registry import setting_names

    operations = (ROOT / "docs" / "operations.md").read_text()
    start = operations.index("## Configuration")
    section = operations[start:operations.index("\n## ", start)]
    missing = sorted(name for name in setting_names() if f"`LEADSTREAM_{name.upper()}`" not in section)
    assert not missing, f"docs/operations.md's Configuration table lacks {missing}"
