"""Bulk writes through the driver (``shared.db.insert_many``/``update_many``) store exactly what
SQLAlchemy's own executemany stores, on SQLite and PostgreSQL; qualification's records write
back what changed and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select

from pipeline_store.models import Account, PipelineOutbox
from services.qualification.records import AccountRecord, ContactRecord
from shared.db import Database, insert_many, insert_missing, update_many

T0 = datetime(2026, 11, 30, 9, 30, 15, 123456, tzinfo=timezone.utc)
CET = timezone(timedelta(hours=1))


def accounts(prefix: str) -> list[dict]:
    """Rows exercising the types' converters: JSON (a dict, an empty one, None), aware
    datetimes in and out of UTC, NULLs, integers, long strings."""
    return [
        dict(domain=f"{prefix}-a.example", company="Acme", industry="software", employees=250, country="GB",
             website="https://acme.example/" + "x" * 1500, firmographics={"company": {"value": "Acme", "at": "t"}},
             created_at=T0, updated_at=T0 + timedelta(seconds=1)),
        dict(domain=f"{prefix}-b.example", company=None, industry=None, employees=None, country=None, website=None,
             firmographics={}, created_at=T0.astimezone(CET), updated_at=T0.astimezone(CET)),
        dict(domain=f"{prefix}-c.example", company="Ünïcødé ✓", industry="", employees=0, country="DE",
             website=None, firmographics=None, created_at=T0, updated_at=T0),
    ]


async def stored(db: Database, prefix: str) -> list[dict]:
    async with db.reader() as session:
        rows = (await session.execute(
            select(Account.__table__).where(Account.domain.like(f"{prefix}-%")).order_by(Account.domain))).all()
    out = []
    for row in rows:
        values = dict(row._mapping)
        values["domain"] = values["domain"].split("-", 1)[1]
        for name in ("created_at", "updated_at"):  # SQLite gives naive UTC back, PostgreSQL aware
            at = values[name]
            values[name] = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
        out.append(values)
    return out


@pytest.fixture
def store(pipeline_store):
    return pipeline_store


async def test_insert_many_stores_what_sqlalchemys_executemany_stores(store):
    async with store.unit_of_work() as session:
        await insert_many(session, Account.__table__, accounts("fast"))
        await session.execute(insert(Account.__table__), accounts("orm"))
    fast, reference = await stored(store, "fast"), await stored(store, "orm")
    assert fast == reference
    assert len(fast) == 3
    assert fast[0]["firmographics"] == {"company": {"value": "Acme", "at": "t"}}
    # (SQLite's DATETIME keeps the wall-clock digits of a non-UTC time on both paths alike:
    # the services write UTC)


async def test_insert_many_leaves_python_side_defaults_to_sqlalchemy(store):
    row = dict(event_id="e-1", topic="pipeline.changes", key="ada@example.com", value=b"\x00\x01{}",
               created_at=T0, published_at=None, published_cluster=None, last_error=None)  # no "attempts"
    async with store.unit_of_work() as session:
        await insert_many(session, PipelineOutbox.__table__, [row])
    async with store.reader() as session:
        attempts, value = (await session.execute(select(PipelineOutbox.attempts, PipelineOutbox.value))).one()
    assert attempts == 0  # the column's default, applied by SQLAlchemy's own path
    assert bytes(value) == b"\x00\x01{}"


async def test_insert_many_of_nothing_writes_nothing(store):
    async with store.unit_of_work() as session:
        await insert_many(session, Account.__table__, [])
    assert await stored(store, "fast") == []


async def test_insert_missing_skips_the_rows_already_stored(store):
    first, second, third = accounts("fast")
    async with store.unit_of_work() as session:
        await insert_many(session, Account.__table__, [first])
    async with store.unit_of_work() as session:  # the first is stored: kept as it is
        await insert_missing(session, Account.__table__, [{**first, "company": "Other"}, second, third], key="domain")
        await insert_missing(session, Account.__table__, [], key="domain")
    after = await stored(store, "fast")
    assert [r["domain"] for r in after] == ["a.example", "b.example", "c.example"]
    assert after[0]["company"] == "Acme" and after[2]["company"] == "Ünïcødé ✓"


async def test_update_many_sets_each_rows_values_by_key(store):
    async with store.unit_of_work() as session:
        await insert_many(session, Account.__table__, accounts("fast"))
    async with store.unit_of_work() as session:
        await update_many(session, Account.__table__, "domain", [
            {"_key": "fast-a.example", "company": "Acme Robotics", "firmographics": {"k": 1}},
            {"_key": "fast-c.example", "company": None, "firmographics": None},
        ])
    after = {r["domain"]: r for r in await stored(store, "fast")}
    assert (after["a.example"]["company"], after["a.example"]["firmographics"]) == ("Acme Robotics", {"k": 1})
    assert (after["c.example"]["company"], after["c.example"]["firmographics"]) == (None, None)
    assert after["b.example"]["company"] is None and after["b.example"]["firmographics"] == {}  # untouched
    assert after["a.example"]["employees"] == 250  # columns not set are left alone


# ---------------------------------------------------------------- records (pure)

UPDATABLE = frozenset(ContactRecord.columns) - {"id", "email"}
JSON = frozenset(("firmographics", "fit_reasons", "engagement_reasons"))


def loaded_contact(**values) -> ContactRecord:
    row = tuple(values.get(name) for name in ContactRecord.columns)
    return ContactRecord.from_row(row)


def test_a_record_read_and_left_alone_has_no_changes():
    reasons = [{"rule": "fit.title", "points": 10.0}]
    contact = loaded_contact(id="c1", email="ada@example.com", stage="lead", fit_reasons=reasons, fit_score=10.0)
    contact.stage, contact.fit_score = "lead", 10.0  # the same values again
    assert contact.changed(UPDATABLE, JSON) == []


def test_a_record_names_the_columns_whose_value_changed():
    contact = loaded_contact(id="c1", email="ada@example.com", stage="lead", sql_at=None, fit_score=10.0)
    contact.stage, contact.sql_at, contact.fit_score = "sql", T0, 10.0
    contact.email = "other@example.com"  # not updatable: never written back
    assert contact.changed(UPDATABLE, JSON) == ["stage", "sql_at"]


def test_json_values_count_as_changed_when_another_object_is_assigned():
    reasons = [{"rule": "fit.title", "points": 10.0}]
    contact = loaded_contact(id="c1", email="ada@example.com", fit_reasons=reasons, firmographics={})
    contact.fit_reasons = list(reasons)  # equal, but assigned anew: written (cheaper than comparing)
    assert contact.changed(UPDATABLE, JSON) == ["fit_reasons"]


def test_a_new_record_has_every_column_and_no_loaded_values():
    account = AccountRecord(new=True, domain="acme.example", company="Acme")
    assert account.new and account.loaded is None
    assert account.values()["company"] == "Acme" and account.values()["industry"] is None
    # not read from the database: every updatable column counts as changed
    assert account.changed(frozenset({"company", "industry"}), JSON) == ["company", "industry"]
