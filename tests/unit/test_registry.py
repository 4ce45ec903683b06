"""The composition root's registry agrees with the services it names, and the spine's
per-name settings (``LEADSTREAM_<NAME>_DATABASE_URL``, ``LEADSTREAM_<NAME>_PORT``) read
any name the registry uses."""

from __future__ import annotations

import importlib

import pytest
from pydantic import ValidationError

from leadstream.registry import DATABASES, SERVICES, database_url, port_of, setting_names, settings_of
from shared.outbox import OutboxMixin
from shared.settings import Settings
from tests.support import ROOT


def test_services_have_distinct_ports_and_known_databases():
    assert len({s.port for s in SERVICES.values()}) == len(SERVICES)
    assert {s.database for s in SERVICES.values()} == set(DATABASES), "every database is used by a service"
    assert all(name == s.name for name, s in SERVICES.items())


@pytest.mark.parametrize("name", DATABASES)
def test_each_database_has_its_migrations_and_an_outbox(name):
    database = DATABASES[name]
    env = (database.migrations / "env.py").read_text()
    assert f'"{name}")' in env, "env.py names the database (its Alembic version table)"
    assert list((database.migrations / "versions").glob("0001_*.py"))
    models = importlib.import_module(database.models)
    assert any(isinstance(o, type) and issubclass(o, OutboxMixin) and o is not OutboxMixin
               for o in vars(models).values())


@pytest.mark.parametrize("name", SERVICES)
async def test_each_service_runs_on_the_database_the_registry_names(name, tmp_path):
    module, _, factory = SERVICES[name].app.partition(":")
    create_app = getattr(importlib.import_module(module), factory)
    settings = settings_of(name, data_dir=tmp_path, config_dir=ROOT / "deploy" / "config", gc_freeze=False)
    runtime = create_app(settings).state.runtime
    try:
        assert type(runtime.settings) is SERVICES[name].settings_class
        assert runtime.database_name == SERVICES[name].database
        assert str(runtime.db.url) == database_url(settings, name) == settings.database_url(SERVICES[name].database)
    finally:
        await runtime.db.dispose()


def test_ports_default_to_the_registry_and_are_read_per_service(monkeypatch):
    assert {n: port_of(Settings(), n) for n in SERVICES} == {n: s.port for n, s in SERVICES.items()}
    monkeypatch.setenv("LEADSTREAM_QUALIFICATION_PORT", "9303")
    assert port_of(Settings(), "qualification") == 9303
    assert port_of(Settings(qualification_port=9400), "qualification") == 9400, "arguments beat the environment"
    assert port_of(Settings(), "pipeline") == SERVICES["pipeline"].port


def test_database_urls_are_read_per_database(monkeypatch, tmp_path):
    monkeypatch.setenv("LEADSTREAM_PIPELINE_DATABASE_URL", "postgresql://u@db/store")
    settings = Settings(data_dir=tmp_path, capture_database_url="sqlite:///elsewhere/capture.db")
    assert settings.database_url("pipeline") == "postgresql+asyncpg://u@db/store"
    assert database_url(settings, "qualification") == database_url(settings, "pipeline")
    assert settings.database_url("capture") == "sqlite+aiosqlite:///elsewhere/capture.db"
    assert settings.database_url("outreach") == f"sqlite+aiosqlite:///{(tmp_path / 'outreach.db').as_posix()}"


@pytest.mark.parametrize("value", ["eighty", "", "80.5"])
def test_a_port_that_is_not_a_number_is_refused_when_settings_load(value, monkeypatch):
    monkeypatch.setenv("LEADSTREAM_CAPTURE_PORT", value)
    with pytest.raises(ValidationError, match="LEADSTREAM_CAPTURE_PORT is not a port number"):
        Settings()


def test_unknown_settings_are_still_ignored(monkeypatch):
    monkeypatch.setenv("LEADSTREAM_NO_SUCH_THING", "1")
    settings = Settings(another_unknown=2)
    assert not settings.model_extra
    assert not hasattr(settings, "no_such_thing") and not hasattr(settings, "another_unknown")


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_a_settings_class_that_adds_to_the_spine(name):
    cls = SERVICES[name].settings_class
    assert issubclass(cls, Settings)
    assert cls.__module__ == f"services.{name}.settings", "a service's settings live in its own settings.py"
    assert set(Settings.model_fields) <= set(cls.model_fields)


def test_a_setting_is_declared_once_and_read_by_its_service_only(monkeypatch):
    """Variables keep their names whichever class declares them; a service reads its own
    variables and ignores those of other services (one environment may hold them all)."""
    monkeypatch.setenv("LEADSTREAM_CAPTURE_RATE_LIMIT", "7/minute")
    monkeypatch.setenv("LEADSTREAM_KAFKA_CONSUMER_GROUP", "workers")
    monkeypatch.setenv("LEADSTREAM_DASHBOARD_SESSION_HOURS", "2")
    monkeypatch.setenv("LEADSTREAM_WEBHOOKS_RETRY_HOURS", "3")
    monkeypatch.setenv("LEADSTREAM_WEBHOOKS_TIMEOUT_S", "4")
    assert settings_of("capture").capture_rate_limit == "7/minute"
    assert settings_of("qualification").kafka_consumer_group == "workers"
    assert settings_of("pipeline").dashboard_session_hours == 2
    assert settings_of("pipeline").webhooks_retry_hours == settings_of("webhooks").webhooks_retry_hours == 3
    assert settings_of("webhooks").webhooks_timeout_s == 4
    assert not hasattr(settings_of("outreach"), "capture_rate_limit")
    assert not hasattr(Settings(), "kafka_consumer_group") and not Settings().model_extra
    with pytest.raises(ValidationError, match="dashboard_session_hours"):
        settings_of("pipeline", dashboard_session_hours=0)
    assert {"capture_rate_limit", "kafka_consumer_group", "webhooks_timeout_s"} <= setting_names()
