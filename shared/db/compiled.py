"""The compiled-statement cache: an INSERT or UPDATE compiled once per table and set of keys,
and rows turned into the driver's parameter tuples by the column types' own bind processors
(the values SQLAlchemy would send, without its per-row parameter dictionaries: the largest
cost of bulk writes on hot paths).

``driver_form`` is the one place that reads how SQLAlchemy compiled a statement; a unit test
(tests/unit/test_compiled_statements.py) checks it against SQLAlchemy's own executemany and
fails with a message naming it if a SQLAlchemy release changes what it relies on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, Table
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TupleType

BindProcessor = Callable[[Any], Any]


def driver_form(compiled: SQLCompiler) -> tuple[str, tuple[str, ...], dict[str, BindProcessor]] | None:
    """How the driver receives ``compiled``: its SQL, the names of its parameters in order, and
    the bind processor of each parameter whose type converts values (none: sent as they are).

    ``None`` when SQLAlchemy must build the parameters itself: Python-side column defaults
    (``insert_prefetch``/``update_prefetch``), a named paramstyle, escaped parameter names,
    tuple-typed parameters. Only SQLAlchemy's public API is read: a parameter's processor is
    its type's ``dialect_impl(dialect).bind_processor(dialect)``, as SQLAlchemy's own
    ``_bind_processors`` computes it (cached there)."""
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.escaped_bind_names \
            or not compiled.positional:
        return None
    dialect = compiled.dialect
    order = tuple(compiled.positiontup)
    processors: dict[str, BindProcessor] = {}
    for name in order:
        param = compiled.binds[name]
        if isinstance(param.type, TupleType):
            return None
        process = param.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    return compiled.string, order, processors


_PLANS: dict[tuple, tuple | None] = {}


def _plan(dialect, kind: str, table: Table, keys: tuple[str, ...], statement):  # noqa: ANN001, ANN202
    """``statement`` (an INSERT or UPDATE of ``table`` with parameters ``keys``) compiled once
    for ``dialect``: the driver's SQL, a getter of the parameters in order, and the types' bind
    processors by position. ``None`` when SQLAlchemy must build the parameters itself."""
    slot = (dialect.name, dialect.driver, kind, table, keys)
    if slot not in _PLANS:
        form = driver_form(statement().compile(dialect=dialect, column_keys=list(keys)))
        if form is None or set(form[1]) != set(keys):
            _PLANS[slot] = None
        else:
            sql, order, processors = form
            converters = tuple((i, processors[k], _memoizable(dialect, table, k)) for i, k in enumerate(order)
                               if k in processors)
            get = itemgetter(*order) if len(order) > 1 else (lambda row, k=order[0]: (row[k],))
            _PLANS[slot] = (sql, get, converters)
    return _PLANS[slot]


def _memoizable(dialect, table: Table, key: str) -> bool:  # noqa: ANN001
    """SQLite keeps datetimes as text formatted in Python (~3 µs each); a batch writes the
    same instants many times (a fact's time in its touch, score, stage change and contact)."""
    column = table.c.get(key)
    return dialect.name == "sqlite" and column is not None and isinstance(column.type, DateTime)


def _memoized(convert, memo: dict):  # noqa: ANN001, ANN202
    def run(value):  # noqa: ANN001, ANN202
        if type(value) is not datetime:
            return convert(value)
        key = (value, value.utcoffset())  # equal instants in other offsets are other texts
        text = memo.get(key)
        if text is None:
            text = memo[key] = convert(value)
        return text

    return run


def driver_parameters(dialect, kind: str, table: Table, rows: list[dict], statement,
                      memo: dict) -> tuple[str, list[tuple]] | None:  # noqa: ANN001
    """The driver's SQL and parameter tuples for an executemany of ``rows`` (dicts with the
    same keys), or ``None`` when SQLAlchemy must build the parameters itself (see
    ``driver_form``). ``statement()`` builds the statement; ``kind`` names it in the cache
    with ``table``. ``memo`` lives for one transaction (formatted datetimes)."""
    plan = _plan(dialect, kind, table, tuple(rows[0]), statement)
    if plan is None:
        return None
    sql, get, converters = plan
    if not converters:
        return sql, [get(row) for row in rows]
    steps = [(i, _memoized(convert, memo) if memoizable else convert) for i, convert, memoizable in converters]
    values = []
    for row in rows:
        value = list(get(row))
        for i, convert in steps:
            value[i] = convert(value[i])
        values.append(tuple(value))
    return sql, values
