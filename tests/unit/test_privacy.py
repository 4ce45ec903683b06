"""Erasure's pure parts: the keyed hash, what an erased payload keeps, when a fact lifts an erasure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.qualification.service import _lifts_erasure
from shared.events import LEAD_CAPTURED, TOUCH_RECORDED, Consent, event_id_time, new_event_id
from shared.privacy import MissingPrivacySecret, PrivacyKey, privacy_key, report_id, scrub
from shared.settings import Settings

KEY = PrivacyKey("a-secret")


@pytest.mark.parametrize("typed", ["Ada@Example.com", "  ada@example.com ", "ada@EXAMPLE.COM."])
def test_the_subject_is_the_normalised_identity_s(typed):
    assert KEY.subject_of_email(typed) == KEY.subject_of("ada@example.com")


def test_the_subject_is_keyed_and_hides_the_email():
    subject = KEY.subject_of("ada@example.com")
    assert len(subject) == 64 and "ada" not in subject
    assert PrivacyKey("another").subject_of("ada@example.com") != subject
    assert KEY.subject_of("ada@googlemail.com") != KEY.subject_of_email("ada@googlemail.com")  # normalised: gmail


def test_matching_finds_the_identities_of_the_subjects():
    wanted = KEY.subject_of("b@x.io")
    assert KEY.matching(["a@x.io", "b@x.io", "", "c@x.io"], [wanted]) == {"b@x.io": wanted}
    assert KEY.matching(["a@x.io"], []) == {}


@pytest.mark.parametrize("email", ["", "no-at-sign"])
def test_an_email_that_is_no_identity_has_no_subject(email):
    with pytest.raises(ValueError):
        KEY.subject_of_email(email)


def test_no_secret_no_start():
    with pytest.raises(MissingPrivacySecret, match="LEADSTREAM_PRIVACY_SECRET"):
        privacy_key(Settings.model_construct(privacy_secret=None))
    with pytest.raises(MissingPrivacySecret):
        PrivacyKey("")
    assert privacy_key(Settings.model_construct(privacy_secret="s")).subject_of("a@b.c") == \
        PrivacyKey("s").subject_of("a@b.c")


@pytest.mark.parametrize("service", ["capture", "outreach", "pipeline", "qualification"])
def test_services_that_store_personal_data_refuse_to_start_without_the_secret(service, monkeypatch, tmp_path):
    from importlib import import_module

    monkeypatch.delenv("LEADSTREAM_PRIVACY_SECRET", raising=False)
    create_app = import_module(f"services.{service}.app").create_app
    settings_class = getattr(import_module(f"services.{service}.settings"), f"{service.title()}Settings")
    with pytest.raises(MissingPrivacySecret):
        create_app(settings_class(data_dir=tmp_path))


@pytest.mark.parametrize(("data", "kept"), [
    ({"email": "a@b.c", "first_name": "Ada", "last_name": "L", "phone": "1", "title": "CEO", "company": "Acme",
      "page_url": "https://b.c/?q=ada", "referrer": "https://g.co/?q=ada", "fields": {"note": "call Ada"},
      "utm": {"source": "google", "campaign": "x"}, "form_type": "demo_request", "form_id": "demo",
      "consent": {"marketing": True, "text": "yes please, Ada"}, "occurred_at": "2026-01-01T00:00:00Z"},
     {"utm": {"source": "google", "campaign": "x"}, "form_type": "demo_request", "form_id": "demo",
      "consent": {"marketing": True}, "occurred_at": "2026-01-01T00:00:00Z"}),
    ({"email": "a@b.c", "linkedin_url": "https://linkedin.com/in/ada", "tags": ["vip"], "owner": "rep@us",
      "list": "q4", "occurred_at": "t"}, {"owner": "rep@us", "list": "q4", "occurred_at": "t"}),
    ({"email": "a@b.c", "channel": "cold_email", "outcome": "replied", "sequence": "s", "step": 2, "rep": "r",
      "external_id": "tool:1", "integration": "tool"},
     {"channel": "cold_email", "outcome": "replied", "sequence": "s", "step": 2, "rep": "r", "integration": "tool"}),
    (None, {}),
    ({"consent": {"text": "only text"}}, {}),
])
def test_scrub_keeps_how_and_when_never_who(data, kept):
    assert scrub(data) == kept


def test_a_uuid7_event_id_tells_when_it_was_made():
    before = datetime.now(timezone.utc) - timedelta(milliseconds=2)
    made = event_id_time(new_event_id())
    assert made is not None and before <= made <= datetime.now(timezone.utc) + timedelta(milliseconds=2)
    assert event_id_time(report_id("e", "capture")) is None  # a derived (uuid5) id
    assert event_id_time("not-an-id") is None


def _lead(marketing, accepted_at: datetime | None = None, type_=LEAD_CAPTURED):  # noqa: ANN001, ANN202
    event_id = new_event_id()
    if accepted_at is not None:  # an id made at that time
        millis = int(accepted_at.timestamp() * 1000)
        event_id = f"{millis:012x}"[:8] + "-" + f"{millis:012x}"[8:] + event_id[13:]
    consent = None if marketing is None else Consent(marketing=marketing)
    return SimpleNamespace(type=type_, id=event_id), SimpleNamespace(consent=consent)


NOW = datetime.now(timezone.utc)


@pytest.mark.parametrize(("marketing", "accepted", "type_", "lifts"), [
    (True, NOW, LEAD_CAPTURED, True),  # a new opt-in after the erasure was asked
    (True, NOW - timedelta(hours=1), LEAD_CAPTURED, False),  # in flight since before the erasure
    (False, NOW, LEAD_CAPTURED, False),
    (None, NOW, LEAD_CAPTURED, False),
    (True, NOW, TOUCH_RECORDED, False),  # only a lead carries an opt-in
])
def test_only_a_new_opt_in_lifts_an_erasure(marketing, accepted, type_, lifts):
    event, data = _lead(marketing, accepted, type_)
    assert event_id_time(event.id) is not None
    assert _lifts_erasure(event, data, NOW - timedelta(minutes=1)) is lifts


def test_report_ids_are_the_same_however_often_they_are_made():
    assert report_id("e-1", "capture") == report_id("e-1", "capture") != report_id("e-1", "outreach")


# ---- where personal data lives: the README and docs/privacy.md name every place --------------

ROOT = Path(__file__).resolve().parents[2]
# every table of the three databases, by whether it can hold a person's data (the first set
# must be in docs/privacy.md's table of places; a new table must be put in one of the two)
PERSONAL_TABLES = {
    "capture_leads", "capture_outbox", "outreach_prospects", "outreach_touches", "outreach_outbox", "contacts",
    "touches", "stage_changes", "opportunities", "scores", "consent_ledger", "transition_requests",
    "pipeline_outbox", "webhook_deliveries",
}
OTHER_TABLES = {
    # keyed hashes, ids, counters, keys and leases: nothing that names a person
    "capture_outbox_lease", "capture_processed_events", "capture_suppressions", "outreach_api_keys",
    "outreach_outbox_lease", "outreach_processed_events", "outreach_suppressions", "outreach_webhook_secrets",
    "accounts", "attribution_credits", "balance_days", "balance_days_to_sql", "balance_effort", "dashboard_sessions",
    "erased_subjects", "erasure_audit", "erasure_requests", "erasure_stores", "pipeline_api_keys",
    "pipeline_outbox_lease", "privacy_processed_events", "processed_events", "qualify_days_rollups",
    "source_rollups", "webhook_processed_events", "webhook_subscriptions",
}


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


def test_every_table_is_classified_and_docs_privacy_names_the_personal_ones():
    from pipeline_store.models import StoreBase
    from services.capture.models import Base as CaptureBase
    from services.outreach.models import Base as OutreachBase

    tables = set(StoreBase.metadata.tables) | set(CaptureBase.metadata.tables) | set(OutreachBase.metadata.tables)
    assert tables - PERSONAL_TABLES - OTHER_TABLES == set(), "a new table: does it hold personal data?"
    places = _section((ROOT / "docs" / "privacy.md").read_text(), "## Where personal data lives")
    assert {t for t in PERSONAL_TABLES if f"`{t}`" not in places} == set()


def test_the_readme_says_where_personal_data_lives_for_how_long_and_how_it_is_erased():
    from leadstream.registry import setting_names

    readme = (ROOT / "README.md").read_text()
    section = _section(readme, "## Personal data")
    for place in ("capture's database", "outreach's", "the pipeline store", "outbox", "Kafka topics",
                  "dead-letter topics", "webhook", "idempotency"):
        assert place in section, place
    known = {name.upper() for name in setting_names()}
    for retention in ("OUTBOX_RETENTION_HOURS", "KAFKA_TOPIC_RETENTION_MS", "KAFKA_DLQ_RETENTION_MS",
                      "WEBHOOKS_RETENTION_HOURS"):
        assert f"`LEADSTREAM_{retention}`" in section and retention in known, retention
    for way in ("POST /v1/privacy/erasures", "leadstream\nprivacy erase EMAIL", "GET /v1/privacy/erasures/{id}",
                "leadstream privacy status ID", "GET /v1/privacy/exports?email=", "leadstream privacy export"):
        assert way.replace("\n", " ") in section.replace("\n", " "), way
    assert "(docs/privacy.md)" in section
    # make run's secret is named unsafe, and no secret: no start
    security = " ".join(_section(readme, "## Security").split())
    assert "`LEADSTREAM_PRIVACY_SECRET`, plain-http cookie) are unsafe for production" in security
    assert "without `LEADSTREAM_PRIVACY_SECRET` the services that store personal data refuse to start" in security


def test_only_make_run_has_a_default_secret_and_it_is_the_one_named_unsafe():
    from shared.privacy import DEVELOPMENT_SECRET

    makefile = (ROOT / "Makefile").read_text()
    run = makefile[makefile.index("\nrun:"):]
    run = run[:run.index("\n\n")]
    assert f"LEADSTREAM_PRIVACY_SECRET=$${{LEADSTREAM_PRIVACY_SECRET:-{DEVELOPMENT_SECRET}}}" in run
    assert "unsafe" in DEVELOPMENT_SECRET
    assert Settings.model_fields["privacy_secret"].default is None  # elsewhere: none, so no start
