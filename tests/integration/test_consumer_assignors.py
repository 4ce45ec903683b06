"""Partition assignors on the real broker: a rolling upgrade from a release whose members offer
only round robin keeps one group when the new members offer range and round robin."""

from __future__ import annotations

import asyncio
import uuid

from shared.events import LEADS_CAPTURED
from shared.kafka import create_consumer
from shared.settings import Settings


async def test_old_and_new_members_form_one_group_while_rolling(broker):
    settings = Settings(kafka_bootstrap_servers=broker.bootstrap)
    group = f"rolling-{uuid.uuid4().hex[:8]}"
    old = create_consumer(settings.model_copy(update={"kafka_partition_assignors": "roundrobin"}),
                          [LEADS_CAPTURED], group_id=group, client_id="old")
    new = create_consumer(settings.model_copy(update={"kafka_partition_assignors": "range,roundrobin"}),
                          [LEADS_CAPTURED], group_id=group, client_id="new")
    try:
        await old.start()
        await new.start()

        async def both_assigned() -> None:
            while not (old.assignment() and new.assignment()
                       and len(old.assignment() | new.assignment()) == settings.kafka_partitions):
                await asyncio.gather(old.getmany(timeout_ms=100), new.getmany(timeout_ms=100))

        await asyncio.wait_for(both_assigned(), 60)
        assert not old.assignment() & new.assignment()  # one group, each partition to one member
    finally:
        await asyncio.gather(old.stop(), new.stop())
