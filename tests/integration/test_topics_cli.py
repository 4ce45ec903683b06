"""`leadstream topics create` (the compose `topics` service, the k8s topics Job) on a real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.broker import EmbeddedBroker, free_port
from shared.events import ALL_TOPICS, LEADS_CAPTURED, dlq_topic
from tests.support import ROOT, leadstream_app


def topics_create(bootstrap: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEADSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "leadstream.cli", "topics", "create", *args],
        env={**clean, "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env},
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


@pytest.fixture
async def empty_broker():
    """A broker of this test's own, with no topics (the session broker has them all)."""
    broker = EmbeddedBroker(port=free_port())
    try:
        await asyncio.to_thread(broker.start, None, create_topics=False)
        yield broker
    finally:
        broker.stop()


async def test_creates_every_topic_with_partitions_and_retention(empty_broker):
    done = await asyncio.to_thread(
        topics_create, empty_broker.bootstrap,
        LEADSTREAM_KAFKA_PARTITIONS="4", LEADSTREAM_KAFKA_TOPIC_RETENTION_MS="3600000",
        LEADSTREAM_KAFKA_DLQ_RETENTION_MS="86400000",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(ALL_TOPICS)
    for topic in ALL_TOPICS:
        assert any(line.startswith(f"{topic}: partitions=4 replicas=1") for line in lines), done.stdout
    config = await topic_config(empty_broker.bootstrap, LEADS_CAPTURED)
    assert config["retention.ms"] == "3600000" and config["cleanup.policy"] == "delete"
    assert (await topic_config(empty_broker.bootstrap, dlq_topic(LEADS_CAPTURED)))["retention.ms"] == "86400000"

    # idempotent: a second run (every upgrade runs the Job again) changes nothing and succeeds
    again = await asyncio.to_thread(topics_create, empty_broker.bootstrap, LEADSTREAM_KAFKA_PARTITIONS="4")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].split(" retention")[0] == lines[0].split(" retention")[0]


async def test_warns_when_existing_topics_have_fewer_partitions(broker):
    done = await asyncio.to_thread(topics_create, broker.bootstrap, LEADSTREAM_KAFKA_PARTITIONS="64")
    assert done.returncode == 0, done.stderr
    assert "fewer than LEADSTREAM_KAFKA_PARTITIONS=64" in done.stderr
    assert "existing topics are not changed" in done.stderr


async def test_unreachable_kafka_fails_after_the_wait():
    done = await asyncio.to_thread(topics_create, f"127.0.0.1:{free_port()}", "--wait", "0")
    assert done.returncode == 1
    assert "could not create topics" in done.stderr


async def test_bad_settings_fail_before_connecting():
    done = await asyncio.to_thread(
        topics_create, "127.0.0.1:1", "--wait", "0", LEADSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL"
    )
    assert done.returncode != 0
    assert "LEADSTREAM_KAFKA_SASL_USERNAME" in done.stderr


# ---- topics read: where a newcomer sees the first lead's event -------------------------------


def topics_read(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    """``leadstream topics read`` (the command's app in this process: ``topics create`` above
    runs the real command)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LEADSTREAM_")}
    code, out, err = leadstream_app(env | {"LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap}, "topics", "read", *args)
    return subprocess.CompletedProcess(["leadstream", "topics", "read", *args], code, out, err)


async def test_read_prints_the_last_messages_oldest_first_and_moves_no_group(empty_broker):
    from aiokafka import AIOKafkaProducer

    from shared.kafka import ensure_topics
    from shared.settings import Settings

    await ensure_topics(Settings(kafka_bootstrap_servers=empty_broker.bootstrap))
    producer = AIOKafkaProducer(bootstrap_servers=empty_broker.bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(3):  # one key: one partition, so the order is the offsets'
            await producer.send_and_wait(LEADS_CAPTURED, key=b"ada@example.com", value=b'{"n": %d}' % n)
    finally:
        await producer.stop()

    last_two = await asyncio.to_thread(topics_read, empty_broker.bootstrap, LEADS_CAPTURED, "--limit", "2")
    assert last_two.returncode == 0, last_two.stderr
    lines = last_two.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ['ada@example.com {"n": 1}', 'ada@example.com {"n": 2}']
    partition, offset = lines[0].split(" ")[0].split("/")
    assert int(partition) in range(4) and offset == "1"

    # read again: the same answer (no group, nothing committed); a larger limit: all three
    everything = await asyncio.to_thread(topics_read, empty_broker.bootstrap, LEADS_CAPTURED, "--limit", "50")
    assert [line.rsplit(" ", 1)[1] for line in everything.stdout.splitlines()] == ["0}", "1}", "2}"]


async def test_read_an_empty_topic_says_so(empty_broker):
    from shared.kafka import ensure_topics
    from shared.settings import Settings

    await ensure_topics(Settings(kafka_bootstrap_servers=empty_broker.bootstrap))
    done = await asyncio.to_thread(topics_read, empty_broker.bootstrap, dlq_topic(LEADS_CAPTURED))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"{dlq_topic(LEADS_CAPTURED)} is empty" in done.stderr


@pytest.mark.parametrize("args", [("no.such.topic",), (LEADS_CAPTURED, "--limit", "0"), ()])
async def test_read_refuses_bad_arguments(broker, args):
    done = await asyncio.to_thread(topics_read, broker.bootstrap, *args)
    assert done.returncode == 2, done.stdout
    assert "no.such.topic" not in done.stdout


async def test_read_from_an_unreachable_broker_fails_with_the_address():
    address = f"127.0.0.1:{free_port()}"
    done = await asyncio.to_thread(topics_read, address, LEADS_CAPTURED, "--timeout", "5")
    assert done.returncode == 1
    assert f"could not read {LEADS_CAPTURED} from {address}" in done.stderr
