"""The store layer: async SQLAlchemy engines and units of work (SQLite with WAL, PostgreSQL via
asyncpg). ``from shared.db import X`` is the way in; the modules:

- ``engine``: engines, SQLite pragmas, JSON through orjson;
- ``errors``: SQLSTATE, duplicate keys, ``WriteConflict``, transient failures;
- ``staging``: ``Staging``, what a unit of work holds until it commits (staged inserts, checks,
  "now", repositories' state), typed and attached once to its session;
- ``bulk``: many rows at once (prefetch by key, executemany INSERT/UPDATE/adding upsert);
- ``compiled``: the compiled-statement cache (the one reader of SQLAlchemy's compiled form);
- ``unit_of_work``: ``Database``, its units of work, the ``WritePath`` interface and the plain path;
- ``sqlite_writes``: the SQLite group commit (``SqliteWrites``: batch writer, WAL checkpointer),
  the optional write path of a SQLite file;
- ``group_commit``: ``GroupCommit``, many requests' units of work in one transaction.
"""

from shared.db.bulk import add_many, in_chunks, insert_many, insert_missing, prefetch_rows, prefetched, update_many
from shared.db.engine import JSON_CODEC, is_sqlite, json_text
from shared.db.errors import WriteConflict, is_transient_db_error, is_unique_violation, sqlstate
from shared.db.group_commit import GATHER_YIELDS, GroupCommit
from shared.db.sqlite_writes import SqliteBatchWriter, SqliteWrites, WalCheckpointer, staged_statements
from shared.db.staging import (
    Staging, adopt, before_inserts, check_before_write, stage_insert, staged_rows, staging_of, transaction_time,
)
from shared.db.unit_of_work import Database, DirectWrites, InsertListener, WritePath, flush_inserts

__all__ = [
    "Database", "DirectWrites", "GATHER_YIELDS", "GroupCommit", "InsertListener", "JSON_CODEC",
    "SqliteBatchWriter", "SqliteWrites", "Staging", "WalCheckpointer", "WriteConflict", "WritePath", "adopt",
    "add_many", "before_inserts", "check_before_write", "flush_inserts", "in_chunks", "insert_many", "insert_missing",
    "is_sqlite", "is_transient_db_error", "json_text", "is_unique_violation", "prefetch_rows", "prefetched", "sqlstate",
    "stage_insert", "staged_rows", "staged_statements", "staging_of", "transaction_time", "update_many",
]
