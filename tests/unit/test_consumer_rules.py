"""Which failures the inbox consumer retries, dead-letters, or retries then dead-letters;
and which stage moves a re-score may make."""

from __future__ import annotations

import types

import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc

from services.qualification.domain.evaluation import forward_steps
from services.qualification.domain.ids import derived_id
from shared.consumer import PermanentError, is_permanent, is_transient
from shared.db.engine import broken_connection
from shared.events import InvalidEvent


class _Orig(Exception):
    def __init__(self, sqlstate: str | None = None) -> None:
        super().__init__("boom")
        self.sqlstate = sqlstate


def _validation_error() -> ValidationError:
    class M(BaseModel):
        x: int

    try:
        M(x="nope")
    except ValidationError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize(
    "error, transient, permanent",
    [
        (sa_exc.OperationalError("BEGIN", {}, _Orig()), True, False),  # sqlite: database is locked
        (sa_exc.InterfaceError("x", {}, _Orig()), True, False),  # connection closed
        (sa_exc.DBAPIError("x", {}, _Orig("57P01")), True, False),  # terminated by the administrator
        (sa_exc.DBAPIError("x", {}, _Orig("40P01")), True, False),  # deadlock
        (sa_exc.DBAPIError("x", {}, _Orig("40001")), True, False),  # serialization failure
        (sa_exc.DBAPIError("x", {}, _Orig("08006")), True, False),  # connection failure
        (sa_exc.InternalError("x", {}, _Orig(), connection_invalidated=True), True, False),  # asyncpg, broken
        (sa_exc.IntegrityError("x", {}, _Orig("23505")), False, False),  # retried a few times, then DLQ
        (sa_exc.DataError("x", {}, _Orig("22001")), False, False),
        (ConnectionRefusedError(), True, False),
        (TimeoutError(), True, False),
        (KafkaConnectionError(), True, False),
        (NodeNotReadyError(), True, False),
        (PermanentError("never"), False, True),
        (InvalidEvent("bad"), False, True),
        (_validation_error(), False, True),
        (KeyError("bug"), False, False),
    ],
)
def test_failure_kinds(error, transient, permanent):
    assert is_transient(error) is transient
    assert is_permanent(error) is permanent


def test_a_connection_asyncpg_finds_broken_mid_operation_is_a_disconnect():
    class InternalClientError(Exception):  # asyncpg's, as SQLAlchemy's adapter names it
        pass

    broken = types.SimpleNamespace(original_exception=InternalClientError("cannot switch to state 11; another "
                                                                          "operation is in progress"),
                                   is_disconnect=False)
    broken_connection(broken)
    assert broken.is_disconnect
    other = types.SimpleNamespace(original_exception=ValueError("bad data"), is_disconnect=False)
    broken_connection(other)
    assert not other.is_disconnect


@pytest.mark.parametrize(
    "current, target, steps",
    [
        ("prospect", "sql", ("lead", "mql", "sql")),
        ("lead", "mql", ("mql",)),
        ("mql", "mql", ()),
        ("mql", "lead", ()),  # never back
        ("sql", "sql", ()),
        ("lead", "customer", ("mql", "sql")),  # qualification stops at sql
        ("opportunity", "sql", ()),  # sales' stages are not qualification's
        ("nurture", "sql", ()),
        ("disqualified", "sql", ()),
        ("lead", "nurture", ()),  # a re-score never moves a contact out
    ],
)
def test_rescore_moves_only_forward(current, target, steps):
    assert forward_steps(current, target) == steps


@pytest.mark.parametrize("parts", [("contact", "ada@example.com"), ("stage.changed", "c1", "e1", "", "lead"),
                                   ("opportunity", "ü✓ ünïcødé"), ("",), ("x" * 500, "y")])
def test_derived_ids_are_rfc_4122_name_based_uuids(parts):
    import uuid

    from services.qualification.domain.ids import NAMESPACE

    assert derived_id(*parts) == str(uuid.uuid5(NAMESPACE, "|".join(parts)))
    assert uuid.UUID(derived_id(*parts)).version == 5


def test_derived_ids_are_stable_per_cause():
    first = derived_id("stage.changed", "c1", "e1", "lead", "mql")
    assert first == derived_id("stage.changed", "c1", "e1", "lead", "mql")
    assert first != derived_id("stage.changed", "c1", "e2", "lead", "mql")
