"""What the outbox relay trusts its memory of fresh rows with (``shared.outbox.FreshRows``)."""

from __future__ import annotations

from shared.outbox import FreshRows


def rows(n: int) -> list[dict]:
    return [{"topic": "t", "key": f"k{i}", "value": b"v"} for i in range(n)]


def test_memory_is_trusted_only_after_a_drained_read_of_the_table():
    fresh = FreshRows(limit=100)
    fresh.inserted(rows(3), first_id=1)
    epoch = fresh.epoch
    fresh.read_through(3, drained=False, epoch=epoch)  # the table had more than one batch
    assert not fresh.trusted and not fresh.rows
    fresh.inserted(rows(2), first_id=4)
    fresh.read_through(5, drained=True, epoch=epoch)
    assert fresh.trusted and not fresh.rows


def test_a_read_drops_what_it_published_and_keeps_what_came_after():
    fresh = FreshRows(limit=100)
    fresh.inserted(rows(5), first_id=10)
    fresh.read_through(12, drained=True, epoch=fresh.epoch)
    assert [r[0] for r in fresh.rows] == [13, 14]
    assert fresh.take(1) == [(13, "t", "k3", b"v")]
    assert [r[0] for r in fresh.rows] == [14]


def test_memory_broken_during_a_read_is_not_trusted_after_it():
    fresh = FreshRows(limit=100)
    epoch = fresh.epoch
    fresh.inserted_unseen()  # rows committed another way while the table was read
    fresh.read_through(None, drained=True, epoch=epoch)
    assert not fresh.trusted
    fresh.read_through(None, drained=True, epoch=fresh.epoch)
    assert fresh.trusted


def test_too_many_waiting_rows_are_forgotten_and_read_from_the_table():
    fresh = FreshRows(limit=4)
    fresh.read_through(None, drained=True, epoch=fresh.epoch)
    fresh.inserted(rows(3), first_id=1)
    assert fresh.trusted
    fresh.inserted(rows(2), first_id=4)
    assert not fresh.trusted and not fresh.rows


def test_rows_another_process_committed_in_between_leave_a_gap_and_memory_is_not_trusted():
    """Every process that writes an outbox commits rows into it; one relay publishes. SQLite
    numbers rows in commit order, so a batch that does not follow the last known id means
    another process's rows sit in between: published from memory, this process's rows would
    go out before them."""
    fresh = FreshRows(limit=100)
    fresh.read_through(None, drained=True, epoch=fresh.epoch, table_max=20)
    assert fresh.trusted and fresh.next_id == 21
    fresh.inserted(rows(3), first_id=21)
    assert fresh.trusted and [r[0] for r in fresh.rows] == [21, 22, 23]
    fresh.inserted(rows(2), first_id=26)  # 24 and 25 are another process's
    assert not fresh.trusted
    assert [r[0] for r in fresh.rows] == [26, 27]  # kept, for when a read trusts memory again


def test_a_drained_read_trusts_memory_only_if_it_continues_right_after_the_read():
    fresh = FreshRows(limit=100)
    epoch = fresh.epoch
    fresh.inserted(rows(2), first_id=31)  # committed while the table was read
    fresh.read_through(28, drained=True, epoch=epoch, table_max=29)  # 30: another process's, after the read
    assert not fresh.trusted and [r[0] for r in fresh.rows] == [31, 32]
    fresh.read_through(30, drained=True, epoch=fresh.epoch, table_max=30)
    assert fresh.trusted and [r[0] for r in fresh.rows] == [31, 32]


def test_an_empty_table_continues_at_id_one():
    fresh = FreshRows(limit=100)
    fresh.read_through(None, drained=True, epoch=fresh.epoch, table_max=None)
    fresh.inserted(rows(1), first_id=2)  # another process wrote row 1
    assert not fresh.trusted
