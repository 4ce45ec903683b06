"""The edge's duplicate-key retry and relay wake (``shared.idempotency``)."""

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError

from shared.idempotency import write_and_wake


class Relay:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def duplicate_key() -> IntegrityError:
    return IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed: leads.idempotency_key"))


def other_violation() -> IntegrityError:
    return IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed: leads.email"))


def writes(*outcomes):
    """A write that raises or returns each of ``outcomes`` in turn, counting its calls."""
    calls = []

    async def write():
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return write, calls


async def test_a_write_wakes_the_relay_after_it_commits():
    relay, (write, calls) = Relay(), writes("stored")
    assert await write_and_wake(relay, write) == "stored"
    assert (len(calls), relay.woken) == (1, 1)


async def test_a_duplicate_key_runs_the_write_again_and_then_answers():
    relay, (write, calls) = Relay(), writes(duplicate_key(), "found the first one")
    assert await write_and_wake(relay, write, retries=1) == "found the first one"
    assert (len(calls), relay.woken) == (2, 1)


@pytest.mark.parametrize("retries", [0, 2])
async def test_retries_are_bounded_and_the_last_duplicate_key_is_raised(retries):
    relay, (write, calls) = Relay(), writes(*[duplicate_key()] * (retries + 1))
    with pytest.raises(IntegrityError):
        await write_and_wake(relay, write, retries=retries)
    assert (len(calls), relay.woken) == (retries + 1, 0)


async def test_another_violation_is_never_retried():
    relay, (write, calls) = Relay(), writes(other_violation(), "never reached")
    with pytest.raises(IntegrityError):
        await write_and_wake(relay, write, retries=3)
    assert (len(calls), relay.woken) == (1, 0)


async def test_an_answer_that_published_nothing_does_not_wake_the_relay():
    relay, (write, _) = Relay(), writes({"duplicate": True})
    await write_and_wake(relay, write, published=lambda result: not result["duplicate"])
    assert relay.woken == 0


async def test_a_service_without_a_relay():
    write, _ = writes("stored")
    assert await write_and_wake(None, write) == "stored"
