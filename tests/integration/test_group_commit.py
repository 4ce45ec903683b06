"""The group commit (``shared.db.GroupCommit``) on SQLite and PostgreSQL: every unit of work
is answered only after its rows are stored, a failing one fails alone, a unique conflict is
SQLAlchemy's ``IntegrityError``; and SQLite's batch writer writes a transaction whole or not
at all."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from services.capture.models import CapturedLead, CaptureOutbox
from shared.db import (
    Database, DirectWrites, GroupCommit, SqliteBatchWriter, SqliteWrites, prefetch_rows, prefetched, stage_insert,
)
from shared.db.compiled import driver_form
from tests.support import migrated_store

LEADS = CapturedLead.__table__
OUTBOX = CaptureOutbox.__table__
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def lead(n: int, idempotency_key: str | None = None) -> dict:
    return dict(event_id=f"e-{n}", email=f"lead{n}@example.com", contact_key=f"lead{n}@example.com", form_id=None,
                form_type=None, status="accepted", spam_reason=None, client_address="127.0.0.1",
                payload={"n": n, "name": "Ünïcødé"}, idempotency_key=idempotency_key, request_fingerprint=None,
                received_at=T0)


def outbox_row(n: int) -> dict:
    return dict(event_id=f"e-{n}", topic="leads.captured", key=f"lead{n}@example.com", value=b'{"n": %d}' % n,
                created_at=T0, attempts=0)


def capture(n: int, idempotency_key: str | None = None):  # noqa: ANN201
    """A unit of work as capture's: a lead and its outbox row, staged."""

    async def work(session):  # noqa: ANN001, ANN202
        stage_insert(session, LEADS, lead(n, idempotency_key))
        stage_insert(session, OUTBOX, outbox_row(n))
        return n

    return work


async def counts(db: Database) -> tuple[int, int]:
    async with db.reader() as session:
        leads = (await session.execute(select(func.count()).select_from(LEADS))).scalar_one()
        rows = (await session.execute(select(func.count()).select_from(OUTBOX))).scalar_one()
    return leads, rows


@pytest.fixture
async def db(database_factory):
    async with migrated_store(database_factory, "capture") as database:
        yield database


async def test_every_unit_of_work_is_stored_before_its_answer(db):
    writer = GroupCommit(db)
    try:
        answers = await asyncio.gather(*(writer.submit(capture(n)) for n in range(200)))
        assert sorted(answers) == list(range(200))
        assert await counts(db) == (200, 200)
        async with db.reader() as session:
            payload, received = (await session.execute(
                select(LEADS.c.payload, LEADS.c.received_at).where(LEADS.c.event_id == "e-7"))).one()
            value = (await session.execute(select(OUTBOX.c.value).where(OUTBOX.c.event_id == "e-7"))).scalar_one()
        assert payload == {"n": 7, "name": "Ünïcødé"}
        assert received.replace(tzinfo=received.tzinfo or timezone.utc) == T0
        assert bytes(value) == b'{"n": 7}'
    finally:
        await writer.stop()
    if db.sqlite:
        assert isinstance(db.writes, SqliteWrites)  # the file-backed SQLite store writes in one hand-off


async def test_a_failing_unit_of_work_fails_alone(db):
    writer = GroupCommit(db)

    async def broken(session):  # noqa: ANN001, ANN202
        stage_insert(session, LEADS, lead(999))
        raise ValueError("bad request")

    try:
        results = await asyncio.gather(*(writer.submit(capture(n)) for n in range(20)), writer.submit(broken),
                                       *(writer.submit(capture(n)) for n in range(20, 40)), return_exceptions=True)
        assert [r for r in results if isinstance(r, Exception)] == [results[20]]
        assert isinstance(results[20], ValueError)
        assert await counts(db) == (40, 40)  # nothing of the broken unit of work
    finally:
        await writer.stop()


async def test_a_unique_conflict_is_an_integrity_error_for_its_caller_only(db):
    writer = GroupCommit(db)
    try:
        await writer.submit(capture(1, idempotency_key="key-1"))
        results = await asyncio.gather(
            *(writer.submit(capture(n)) for n in range(10, 20)),
            writer.submit(capture(2, idempotency_key="key-1")),  # stored before: the unique index refuses it
            return_exceptions=True,
        )
        assert all(not isinstance(r, Exception) for r in results[:10])
        assert isinstance(results[10], IntegrityError)
        assert await counts(db) == (11, 11)
        # the writer goes on after a refused transaction
        assert await writer.submit(capture(3)) == 3
        assert await counts(db) == (12, 12)
    finally:
        await writer.stop()


async def test_a_unit_of_work_reads_what_earlier_batches_stored(db):
    """``prepare`` and the units of work read the rows committed before their batch (capture's
    idempotency keys): a later batch finds the earlier one's key."""

    async def prepare(session, keys):  # noqa: ANN001, ANN202
        await prefetch_rows(session, LEADS.c.idempotency_key, keys, LEADS.c.event_id)

    def keyed(n: int, key: str):  # noqa: ANN202
        async def work(session):  # noqa: ANN001, ANN202
            found = prefetched(session, LEADS.c.idempotency_key).get(key)
            if found:
                return f"duplicate of {found['event_id']}"
            stage_insert(session, LEADS, lead(n, key))
            return "stored"

        return work

    writer = GroupCommit(db, prepare=prepare)
    try:
        assert await writer.submit(keyed(1, "k"), hint="k") == "stored"
        assert await writer.submit(keyed(2, "k"), hint="k") == "duplicate of e-1"
    finally:
        await writer.stop()


async def test_units_of_work_with_orm_objects_are_written_by_a_unit_of_work(db):
    """Only staged inserts take the batch writer's path; an ORM object in the batch sends the
    whole batch through a unit of work, and nothing is written twice."""
    writer = GroupCommit(db)

    async def orm(session):  # noqa: ANN001, ANN202
        session.add(CapturedLead(**lead(500)))
        return "orm"

    try:
        results = await asyncio.gather(*(writer.submit(capture(n)) for n in range(5)), writer.submit(orm))
        assert results[-1] == "orm"
        assert await counts(db) == (6, 5)
    finally:
        await writer.stop()


async def test_the_batch_writer_writes_a_transaction_whole_or_not_at_all(tmp_path):
    from leadstream.registry import aupgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'capture.db'}"
    await aupgrade("capture", url)
    db = Database(url)
    try:
        dialect = db.engine.dialect
        compiled = insert(LEADS).compile(dialect=dialect, column_keys=list(lead(0)))
        order = compiled.positiontup
        processors = driver_form(compiled)[2]

        def params(row: dict) -> tuple:
            return tuple(processors[k](row[k]) if k in processors else row[k] for k in order)

        good = (compiled.string, [params(lead(1)), params(lead(2))])
        clash = (compiled.string, [params(lead(3)), params(lead(1))])  # e-1 again: primary key
        with pytest.raises(IntegrityError):
            await db.writes.batch_writer.write([good, clash])
        assert await counts(db) == (0, 0)  # the good statement was rolled back with the other
        await db.writes.batch_writer.write([good])
        assert await counts(db) == (2, 0)
    finally:
        await db.dispose()


async def test_a_disconnect_closes_the_connection_a_write_in_flight_was_opening(tmp_path, monkeypatch):
    """``disconnect`` then a new busy timeout (the outage tests shorten it): the connection a
    write in flight was still opening, with the old timeout, is closed after that write, and
    the next write opens one with the new timeout."""
    import threading

    from shared.db import sqlite_writes

    opening, go_on = threading.Event(), threading.Event()
    pragmas = sqlite_writes.sqlite_pragmas

    def slow_pragmas(connection, busy_timeout_ms: int) -> None:  # noqa: ANN001
        opening.set()
        go_on.wait(5)
        pragmas(connection, busy_timeout_ms)

    monkeypatch.setattr(sqlite_writes, "sqlite_pragmas", slow_pragmas)
    writer = SqliteBatchWriter(str(tmp_path / "w.db"))
    try:
        in_flight = asyncio.ensure_future(writer.write([]))
        assert await asyncio.to_thread(opening.wait, 5)
        writer.busy_timeout_ms = 100
        disconnecting = asyncio.ensure_future(writer.disconnect())
        await asyncio.sleep(0.05)
        go_on.set()
        await asyncio.gather(in_flight, disconnecting)
        await writer.write([])
        connection = writer._connection  # noqa: SLF001
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 100
    finally:
        go_on.set()
        await writer.close()


def test_an_in_memory_sqlite_database_has_no_batch_writer():
    """A second connection to ``:memory:`` would be another, empty database."""
    assert isinstance(Database("sqlite+aiosqlite:///:memory:").writes, DirectWrites)
    assert isinstance(Database("sqlite+aiosqlite:////tmp/x.db").writes.batch_writer, SqliteBatchWriter)
    assert isinstance(Database("sqlite+aiosqlite:////tmp/x.db", group_writes=False).writes, DirectWrites)


async def test_the_group_commit_and_the_plain_path_give_the_same_results(tmp_path):
    """One interface, two write paths (``WritePath``): a SQLite file's group commit (batch
    writer, deferred updates) and the plain path (units of work) store the same rows with the
    same ids, answer the same results and fail the same units of work."""
    from leadstream.registry import aupgrade

    async def broken(session):  # noqa: ANN001, ANN202
        stage_insert(session, LEADS, lead(999))
        raise ValueError("bad request")

    def orm(n: int):  # noqa: ANN202
        async def work(session):  # noqa: ANN001, ANN202
            session.add(CapturedLead(**lead(n)))
            return f"orm {n}"

        return work

    seen = {}
    for group_writes in (True, False):
        url = f"sqlite+aiosqlite:///{tmp_path / f'capture-{group_writes}.db'}"
        await aupgrade("capture", url)
        db = Database(url, group_writes=group_writes)
        assert isinstance(db.writes, SqliteWrites if group_writes else DirectWrites)
        writer = GroupCommit(db)
        try:
            await writer.submit(capture(0, idempotency_key="k"))
            outcomes = await asyncio.gather(
                *(writer.submit(capture(n)) for n in range(1, 40)), writer.submit(broken),
                writer.submit(capture(40, idempotency_key="k")), *(writer.submit(capture(n)) for n in range(41, 60)),
                writer.submit(orm(70)), return_exceptions=True)
            async with db.reader() as session:
                ids = (await session.execute(select(OUTBOX.c.id).order_by(OUTBOX.c.id))).scalars().all()
            await db.update_later(OUTBOX, "id", ids[:5], {"published_at": T0, "published_cluster": "c"})
            marked_before_flush = await unpublished(db)
            await db.flush()
            async with db.reader() as session:
                leads = (await session.execute(select(LEADS).order_by(LEADS.c.event_id))).all()
                outbox = (await session.execute(select(OUTBOX).order_by(OUTBOX.c.id))).all()
        finally:
            await writer.stop()
            await db.dispose()
        seen[group_writes] = ([type(o).__name__ if isinstance(o, Exception) else o for o in outcomes],
                              [tuple(r) for r in leads], [tuple(r) for r in outbox],
                              sum(1 for r in outbox if r.published_at is not None), marked_before_flush)
    group, plain = seen[True], seen[False]
    assert group[0] == plain[0]
    assert group[0][39:41] == ["ValueError", "IntegrityError"] and group[0][-1] == "orm 70"
    assert group[1] == plain[1] and len(group[1]) == 60  # 59 captured, 1 by the ORM
    assert group[2] == plain[2] and len(group[2]) == 59
    assert group[3] == plain[3] == 5  # the marks, written by either path
    # the plain path writes a mark at once, the group commit with its next transaction or flush
    assert (group[4], plain[4]) == (59, 54)


async def sqlite_db(tmp_path) -> Database:
    from leadstream.registry import aupgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'capture.db'}"
    await aupgrade("capture", url)
    return Database(url)


async def unpublished(db: Database) -> int:
    async with db.reader() as session:
        return (await session.execute(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.published_at.is_(None)))).scalar_one()


async def test_a_deferred_update_is_written_with_the_next_transaction_or_a_flush(tmp_path):
    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        await asyncio.gather(*(writer.submit(capture(n)) for n in range(4)))
        async with db.reader() as session:
            ids = (await session.execute(select(OUTBOX.c.id).order_by(OUTBOX.c.id))).scalars().all()
        await db.update_later(OUTBOX, "id", ids[:2], {"published_at": T0})
        assert await unpublished(db) == 4  # not yet
        await writer.submit(capture(10))  # the group commit's transaction carries it
        assert await unpublished(db) == 3
        await db.update_later(OUTBOX, "id", ids[2:], {"published_at": T0})
        await db.flush()
        assert await unpublished(db) == 1
    finally:
        await writer.stop()
        await db.dispose()


async def test_deferred_writes_come_before_any_later_unit_of_work(tmp_path):
    """The relay defers its marks; a unit of work that then resets rows (a new broker
    cluster) must find them marked, or the reset would be overwritten and the rows lost."""
    from sqlalchemy import update

    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        await writer.submit(capture(1))
        async with db.reader() as session:
            (row_id,) = (await session.execute(select(OUTBOX.c.id))).scalars().all()
        await db.update_later(OUTBOX, "id", [row_id], {"published_at": T0, "published_cluster": "old"})
        async with db.unit_of_work() as session:
            await session.execute(update(OUTBOX).where(OUTBOX.c.published_cluster != "new")
                                  .values(published_at=None, published_cluster=None))
        assert await unpublished(db) == 1  # reset after the mark, not overwritten by it
    finally:
        await writer.stop()
        await db.dispose()


async def test_a_failed_transaction_keeps_the_deferred_writes_for_the_next(tmp_path):
    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        await writer.submit(capture(1, idempotency_key="k"))
        async with db.reader() as session:
            (row_id,) = (await session.execute(select(OUTBOX.c.id))).scalars().all()
        await db.update_later(OUTBOX, "id", [row_id], {"published_at": T0})
        with pytest.raises(IntegrityError):
            await writer.submit(capture(2, idempotency_key="k"))  # refused: rolled back with the mark
        assert await unpublished(db) == 1
        await writer.submit(capture(3))
        assert await unpublished(db) == 1  # the mark went with this one; row 3 is new
        async with db.reader() as session:
            marked = (await session.execute(select(OUTBOX.c.published_at).where(OUTBOX.c.id == row_id))).scalar_one()
        assert marked is not None
    finally:
        await writer.stop()
        await db.dispose()


async def test_a_flush_waits_for_the_transaction_in_flight_that_carries_the_deferred_writes(tmp_path):
    """The relay flushes its marks, then reads which rows are pending. A group commit that
    began before the flush took the marks with it: the flush must not return before that
    transaction commits, or the rows read as pending and are published again (the fault
    suite saw one event twice, at adjacent offsets, without any fault)."""
    import threading

    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    gate = threading.Event()
    try:
        await writer.submit(capture(1))
        async with db.reader() as session:
            (row_id,) = (await session.execute(select(OUTBOX.c.id))).scalars().all()
        await db.update_later(OUTBOX, "id", [row_id], {"published_at": T0})
        batch_writer = db.writes.batch_writer
        batch_writer._executor.submit(gate.wait)  # noqa: SLF001 - holds the writer's thread
        in_flight = asyncio.create_task(writer.submit(capture(2)))
        await eventually_true(lambda: not batch_writer.pending)  # the transaction took the mark

        async def flush_then_read():  # noqa: ANN202
            await db.flush()
            async with db.reader() as session:
                return (await session.execute(
                    select(OUTBOX.c.published_at).where(OUTBOX.c.id == row_id))).scalar_one()

        read = asyncio.create_task(flush_then_read())
        await asyncio.sleep(0.2)
        gate.set()
        assert await read is not None  # the mark was written when the flush returned
        assert await in_flight == 2
    finally:
        gate.set()
        await writer.stop()
        await db.dispose()


async def test_a_deferred_write_that_fails_alone_is_dropped(tmp_path):
    """Deferred writes may be lost without harm; one that cannot be written must not block
    every later transaction."""
    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        db.writes.batch_writer.defer(("UPDATE no_such_table SET x = ?", [(1,)]))
        with pytest.raises(Exception):  # noqa: B017 - the group commit's batch fails with it …
            await writer.submit(capture(1))
        with pytest.raises(Exception):  # noqa: B017 - … and a flush of it alone
            await db.flush()
        assert not db.writes.batch_writer.pending
        assert await writer.submit(capture(2)) == 2  # … after which writes go on
    finally:
        await writer.stop()
        await db.dispose()


def rows_in_the_main_file(path, tmp_path) -> int:
    """Leads stored in the database file itself, without its write-ahead log: a copy of the
    file alone holds only what a checkpoint has copied back."""
    import shutil
    import sqlite3

    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    with sqlite3.connect(alone) as conn:
        return conn.execute("SELECT count(*) FROM capture_leads").fetchone()[0]


@pytest.mark.parametrize("through", ["group commit", "unit of work"])
async def test_commits_only_append_and_a_thread_copies_the_log_back(tmp_path, through):
    """SQLite's own checkpoint is pushed out to ~40 MB of log, so a commit never stalls copying
    the log back: the checkpointer's thread does it, after group commits and units of work."""
    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        path = db.writes.batch_writer.path
        async with db.engine.connect() as conn:  # the safety net, on every connection of ours
            assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 10000
        assert rows_in_the_main_file(path, tmp_path) == 0
        if through == "group commit":
            await asyncio.gather(*(writer.submit(capture(n)) for n in range(20)))
        else:
            async with db.unit_of_work() as session:
                for n in range(20):
                    stage_insert(session, LEADS, lead(n))
        await eventually_true(lambda: rows_in_the_main_file(path, tmp_path) == 20)
        # the thread counts a checkpoint once SQLite returns from it: the pages may be in the
        # main file a moment before (seen once in CI under load)
        await eventually_true(lambda: db.writes.batch_writer.checkpointer.checkpoints >= 1)
    finally:
        await writer.stop()
        await db.dispose()
    thread = db.writes.batch_writer.checkpointer._thread  # noqa: SLF001
    assert thread is not None and not thread.is_alive()  # stopped with the database


async def eventually_true(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)


async def test_a_checkpoint_waits_for_no_reader(tmp_path):
    """A reader holding an old snapshot keeps its pages; commits go on and nothing fails."""
    db = await sqlite_db(tmp_path)
    writer = GroupCommit(db)
    try:
        async with db.reader() as session:
            assert (await session.execute(select(func.count()).select_from(LEADS))).scalar_one() == 0
            await asyncio.gather(*(writer.submit(capture(n)) for n in range(10)))
            await asyncio.sleep(3 * db.writes.batch_writer.checkpointer.INTERVAL_S)
            # still the reader's snapshot
            assert (await session.execute(select(func.count()).select_from(LEADS))).scalar_one() == 0
        await asyncio.gather(*(writer.submit(capture(n)) for n in range(10, 20)))
        assert await counts(db) == (20, 20)
    finally:
        await writer.stop()
        await db.dispose()


def test_the_checkpointer_stops_at_once_even_while_it_waits_to_checkpoint(tmp_path):
    from shared.db import WalCheckpointer

    for _ in range(5):
        checkpointer = WalCheckpointer(str(tmp_path / "x.db"))
        checkpointer.written()  # its thread now waits INTERVAL_S before checkpointing
        checkpointer.stop()
        assert not checkpointer._thread.is_alive()  # noqa: SLF001 - not left behind
    idle = WalCheckpointer(str(tmp_path / "y.db"))
    idle.stop()  # never started: nothing to stop
    idle.written()
    assert idle._thread is None  # noqa: SLF001 - a stopped one starts no thread


async def test_a_closed_writer_closes_and_disconnects_again_quietly(tmp_path):
    """A database disposed twice (a test's stack and the test itself) closes its writer twice:
    the second close and a disconnect after it do nothing (the writer's thread is gone)."""
    writer = SqliteBatchWriter(str(tmp_path / "w.db"))
    await writer.write([])
    await writer.close()
    await writer.close()
    await writer.disconnect()
    assert writer._connection is None  # noqa: SLF001
