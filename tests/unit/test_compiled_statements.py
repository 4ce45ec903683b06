"""The compiled-statement cache (``shared.db.compiled``) reads how SQLAlchemy compiled a
statement in one function, ``driver_form``, through public attributes only. These tests fail
with a message naming that function if a SQLAlchemy release changes what it relies on: the
attributes themselves, and the parameters they lead to, which must be exactly those
SQLAlchemy's own executemany sends (checked against a real SQLite database, migrated)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy
from sqlalchemy import create_engine, event, insert
from sqlalchemy.dialects import postgresql, sqlite

from pipeline_store import source_rollups
from pipeline_store.models import Account, PipelineOutbox, SourceRollup, Touch
from services.capture.models import CapturedLead
from shared.db.bulk import adding_upsert, update_statement
from shared.db.compiled import driver_form, driver_parameters
from leadstream.registry import upgrade

REVISE = (f"SQLAlchemy {sqlalchemy.__version__} changed what shared/db/compiled.py driver_form relies on: "
          "revise driver_form (and only it) before upgrading")
T0 = datetime(2026, 11, 30, 9, 30, 15, 123456, tzinfo=timezone.utc)
CET = timezone(timedelta(hours=1))
DIALECTS = {"sqlite": sqlite.pysqlite.dialect(), "postgresql+asyncpg": postgresql.asyncpg.dialect()}


def accounts() -> list[dict]:
    return [
        dict(domain="a.example", company="Acme", industry="software", employees=250, country="GB",
             website="https://acme.example/", firmographics={"company": {"value": "Acme", "at": "t"}},
             created_at=T0, updated_at=T0 + timedelta(seconds=1)),
        dict(domain="b.example", company=None, industry=None, employees=None, country=None, website=None,
             firmographics={}, created_at=T0.astimezone(CET), updated_at=T0.astimezone(CET)),
        dict(domain="c.example", company="Ünïcødé ✓", industry="", employees=0, country="DE", website=None,
             firmographics=None, created_at=T0, updated_at=T0),
    ]


def touches() -> list[dict]:
    return [dict(event_id=f"t-{n}", contact_id="c-1", event_type="lead.captured", motion="inbound",
                 channel=None if n else "web_form", campaign=None, form_id="f", form_type="demo_request",
                 lead_magnet=None, sequence=None, step=n, outcome=None, rep=None,
                 occurred_at=T0 + timedelta(minutes=n), recorded_at=T0, data={"n": n, "x": [1, 2]})
            for n in range(3)]


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_the_attributes_driver_form_reads_are_still_there(dialect):
    compiled = insert(Account.__table__).compile(dialect=DIALECTS[dialect], column_keys=list(accounts()[0]))
    for name in ("string", "dialect", "positional", "positiontup", "binds", "escaped_bind_names",
                 "insert_prefetch", "update_prefetch"):
        assert hasattr(compiled, name), f"{REVISE} (SQLCompiler.{name} is gone)"
    assert compiled.positional, f"{REVISE} ({dialect} is expected to bind by position)"
    assert set(compiled.positiontup) == set(accounts()[0]), f"{REVISE} (positiontup no longer names the keys)"
    form = driver_form(compiled)
    assert form is not None, f"{REVISE} (a plain INSERT is no longer written through the driver)"
    sql, order, processors = form
    assert sql == compiled.string and order == tuple(compiled.positiontup), REVISE
    # the types that convert: JSON and, on SQLite, datetimes (text formatted in Python)
    assert "firmographics" in processors, f"{REVISE} (JSON has no bind processor)"
    assert ("created_at" in processors) == (dialect == "sqlite"), f"{REVISE} (DateTime's bind processor)"


def test_python_side_defaults_are_left_to_sqlalchemy():
    row = dict(event_id="e-1", topic="t", key="k", value=b"{}", created_at=T0)  # no "attempts": a default
    compiled = insert(PipelineOutbox.__table__).compile(dialect=DIALECTS["sqlite"], column_keys=list(row))
    assert compiled.insert_prefetch, REVISE
    assert driver_form(compiled) is None, REVISE


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real pipeline store and a capture store on SQLite (migrated by Alembic), through a
    synchronous engine whose executemany statements are recorded."""
    engines = {}
    for database in ("pipeline", "capture"):
        path = tmp_path_factory.mktemp(database) / f"{database}.db"
        upgrade(database, f"sqlite+aiosqlite:///{path}")
        engines[database] = create_engine(f"sqlite:///{path}")
    yield engines
    for engine in engines.values():
        engine.dispose()


def sent_by_sqlalchemy(engine, statement, rows) -> tuple[str, list[tuple]]:  # noqa: ANN001
    """The SQL and parameters SQLAlchemy's own executemany sends for ``rows`` (rolled back)."""
    seen = []

    def record(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ARG001, PLR0913
        seen.append((sql, [tuple(p) for p in parameters] if executemany else [tuple(parameters)]))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", record)
        try:
            conn.execute(statement, rows)
        finally:
            event.remove(engine, "before_cursor_execute", record)
            conn.rollback()
    assert len(seen) == 1, seen
    return seen[0]


@pytest.mark.parametrize("case", ["accounts", "touches", "leads"])
def test_driver_parameters_are_what_sqlalchemys_executemany_sends(store, case):
    table, rows, engine = {
        "accounts": (Account.__table__, accounts(), store["pipeline"]),
        "touches": (Touch.__table__, touches(), store["pipeline"]),
        "leads": (CapturedLead.__table__, [dict(
            event_id=f"e-{n}", email="a@b.io", contact_key="a@b.io", form_id=None, form_type=None,
            status="accepted", spam_reason=None, client_address="127.0.0.1", payload={"n": n, "name": "Ünïcødé"},
            idempotency_key=None, request_fingerprint=None, received_at=T0 + timedelta(seconds=n)) for n in range(3)],
            store["capture"]),
    }[case]
    ours = driver_parameters(engine.dialect, "insert", table, rows, lambda: insert(table), {})
    assert ours is not None, REVISE
    assert ours == sent_by_sqlalchemy(engine, insert(table), rows), f"{REVISE} (other parameters than SQLAlchemy's)"


def test_update_parameters_are_what_sqlalchemys_executemany_sends(store):
    table = Account.__table__
    rows = [{"_key": "a.example", "firmographics": {"x": 1}, "updated_at": T0},
            {"_key": "b.example", "firmographics": None, "updated_at": T0.astimezone(CET)}]
    engine = store["pipeline"]
    ours = driver_parameters(engine.dialect, "update", table, rows, lambda: update_statement(table, "domain"), {})
    assert ours is not None, REVISE
    assert ours == sent_by_sqlalchemy(engine, update_statement(table, "domain"), rows), REVISE


def test_adding_upsert_parameters_are_what_sqlalchemys_executemany_sends(store):
    """``add_many``'s upsert (rollups): the VALUES are the only parameters, as SQLAlchemy sends them."""
    table = SourceRollup.__table__
    rows = [dict(zip((*source_rollups.KEY, *source_rollups.METRICS),
                     ("linear", "d", T0.date(), 0, "inbound", "web_form", "", "f", "", *([0.5 * n] * 13))))
            for n in range(1, 3)]
    engine = store["pipeline"]
    ours = driver_parameters(engine.dialect, "add", table, rows, lambda: adding_upsert("sqlite", table, rows[0]), {})
    assert ours is not None, REVISE
    assert ours == sent_by_sqlalchemy(engine, adding_upsert("sqlite", table, rows[0]), rows), REVISE
    assert "ON CONFLICT" in ours[0] and "contacts = (source_rollups.contacts + excluded.contacts)" in ours[0]
