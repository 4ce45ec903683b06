"""The Kafka adapter: one place that talks to aiokafka (producer, consumer, admin, topics)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.partitioner import DefaultPartitioner

from shared.events import ALL_TOPICS
from shared.settings import Settings

log = structlog.get_logger("kafka")

TOPIC_ALREADY_EXISTS = 36

Message = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers

# The producer's own default (murmur2 of the key, as the Java client): a key keeps its partition.
PARTITIONER = DefaultPartitioner()
ASSIGNORS = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}


def connection_options(settings: Settings) -> dict[str, Any]:
    """Options every client shares: bootstrap servers and, for managed Kafka, SSL/SASL."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile, settings.kafka_ssl_key_password
            )
        opts["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password
    return opts


async def ensure_topics(settings: Settings, topics: tuple[str, ...] = ALL_TOPICS) -> set[str]:
    """Create every topic with its partition count before any client can auto-create it;
    returns the topics that existed already."""
    admin = AIOKafkaAdminClient(request_timeout_ms=settings.kafka_request_timeout_ms, **connection_options(settings))
    await admin.start()
    try:
        return await _create_topics(admin, settings, topics)
    finally:
        await admin.close()


async def describe_topics(settings: Settings, topics: tuple[str, ...] = ALL_TOPICS) -> dict[str, dict[str, int]]:
    """Partitions and replicas of each existing topic (a topic that is missing is left out)."""
    admin = AIOKafkaAdminClient(request_timeout_ms=settings.kafka_request_timeout_ms, **connection_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    layout: dict[str, dict[str, int]] = {}
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            layout[topic["topic"]] = {
                "partitions": len(topic["partitions"]),
                "replicas": min(len(p["replicas"]) for p in topic["partitions"]),
            }
    return layout


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """The configs a topic is created with: delete (never compact) and its retention.

    Events are facts keyed by contact; compaction would keep only a contact's last
    event, so every topic deletes by age. A DLQ keeps longer, to inspect and replay.
    """
    retention = settings.kafka_dlq_retention_ms if topic.endswith(".dlq") else settings.kafka_topic_retention_ms
    min_isr = settings.kafka_min_insync_replicas or (2 if settings.kafka_replication_factor >= 3 else 1)
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(retention),
        "min.insync.replicas": str(min(min_isr, settings.kafka_replication_factor)),
    }


async def _create_topics(admin: AIOKafkaAdminClient, settings: Settings, topics: tuple[str, ...]) -> set[str]:
    """Create ``topics``; returns those that existed already (error code 36, not an exception)."""
    response = await admin.create_topics(
        [
            NewTopic(
                t, settings.kafka_partitions, settings.kafka_replication_factor,
                topic_configs=topic_configs(settings, t),
            )
            for t in topics
        ]
    )
    existing = set()
    for topic_error in getattr(response, "topic_errors", []):
        name, code = topic_error[0], topic_error[1]
        if code == TOPIC_ALREADY_EXISTS:
            existing.add(name)
        elif code != 0:
            raise RuntimeError(f"could not create topic {name}: error code {code}")
    return existing


def send_each_batch_once(producer: AIOKafkaProducer) -> None:
    """Make ``producer`` fail a batch whose request failed instead of sending it again.

    aiokafka re-sends a batch after a connection error until ``request_timeout_ms`` has
    passed since the batch was made. When the broker restarts meanwhile, the batch goes to
    the new one the moment it listens, before its topics are created; the embedded broker
    acknowledges it, and creating the topic then starts the partition's offsets again at 0,
    so later writes take offsets that batch covers and readers skip them: acknowledged and
    lost (BROKER.md). The relay sends the rows again itself, after it has checked the
    cluster and created the topics (``shared.outbox``). The batches' time to live is the
    only knob aiokafka has for it (a private attribute; ``test_kafka_settings`` checks it).
    """
    producer._message_accumulator._batch_ttl = 0  # noqa: SLF001


async def abandon_join(consumer: AIOKafkaConsumer) -> None:
    """End a group join in flight so that ``consumer.stop()`` returns at once.

    aiokafka's ``stop()`` first lets the coordination task finish what it is doing, and
    a member that is joining waits for the broker's JoinGroup answer: the embedded broker
    holds it until the rebalance ends, about 3 s even for a group of one (BROKER.md), so a
    service stopped soon after it started waited that long for a group it never served.
    A member without partitions has nothing to commit or hand over; cancelling the task
    (a private attribute; ``test_kafka_settings`` checks it) only skips that wait.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_coordination_task", None)
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task})  # raises only if the caller itself is cancelled meanwhile


class KafkaGateway:
    """A started producer and admin client; what a service's outbox relay publishes through."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self.producer: AIOKafkaProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        opts = connection_options(self.settings)
        compression = None if self.settings.kafka_compression == "none" else self.settings.kafka_compression
        self.producer = AIOKafkaProducer(
            client_id=self.client_id,
            acks="all",
            # Tansu fails InitProducerId; consumers deduplicate by event id instead.
            enable_idempotence=False,
            compression_type=compression,
            linger_ms=5,
            max_batch_size=262144,
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
            **opts,
        )
        send_each_batch_once(self.producer)
        self.admin = AIOKafkaAdminClient(
            client_id=f"{self.client_id}-admin", request_timeout_ms=self.settings.kafka_request_timeout_ms, **opts
        )
        # Starting fails while the broker is away; keep the service up and retry lazily.
        await self._start_clients()

    async def _start_clients(self) -> None:
        for client in (self.admin, self.producer):
            try:
                await asyncio.wait_for(client.start(), self.settings.kafka_request_timeout_ms / 1000)
                client._leadstream_started = True  # noqa: SLF001
            except Exception as exc:  # noqa: BLE001
                log.warning("kafka client not started yet", client=type(client).__name__, error=repr(exc))

    async def _ready(self) -> None:
        if not getattr(self.producer, "_leadstream_started", False) or not getattr(
            self.admin, "_leadstream_started", False
        ):
            await self._start_clients()
            if not getattr(self.producer, "_leadstream_started", False):
                raise ConnectionError("Kafka producer not connected")

    async def stop(self) -> None:
        for client in (self.producer, self.admin):
            if client is not None and getattr(client, "_leadstream_started", False):
                try:
                    await asyncio.wait_for(client.stop() if client is self.producer else client.close(), 5)
                except Exception:  # noqa: BLE001
                    pass

    async def cluster_id(self) -> str:
        """The broker cluster's id; a new id means a new (empty) embedded broker."""
        await self._ready()
        info = await asyncio.wait_for(self.admin.describe_cluster(), self.settings.kafka_request_timeout_ms / 1000)
        return str(info.get("cluster_id"))

    async def ensure_topics(self) -> set[str]:
        """Create every topic that is missing; returns those that existed already."""
        await self._ready()
        return await _create_topics(self.admin, self.settings, ALL_TOPICS)

    async def send_many(self, messages: list[Message]) -> list[bool]:
        """Send in order; wait until every send is settled; return which were acknowledged.

        The messages go out as record batches built here, one per partition (more when one
        fills), each acknowledged as a whole: no future and no accumulator step per record.
        Within a partition they keep their order. Nothing is left in flight when this
        returns, so a caller that retries the unacknowledged ones cannot race an old attempt
        into a duplicate; and nothing is sent twice by the producer itself: a batch whose
        request failed comes back unacknowledged (``send_each_batch_once``).
        """
        await self._ready()
        producer = self.producer
        sent: list[tuple[asyncio.Future, list[int]]] = []
        error: BaseException | None = None
        try:
            by_partition: dict[tuple[str, int], list[int]] = {}
            partitions: dict[str, list[int]] = {}
            for i, (topic, key, _, _) in enumerate(messages):
                if topic not in partitions:
                    partitions[topic] = sorted(await producer.partitions_for(topic))
                by_partition.setdefault((topic, PARTITIONER(key, partitions[topic], partitions[topic])), []).append(i)
            for (topic, partition), indices in by_partition.items():
                batch, members = producer.create_batch(), []
                for i in indices:
                    _, key, value, headers = messages[i]
                    while batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        # full: send it and start the next (a first record always fits)
                        sent.append((await producer.send_batch(batch, topic, partition=partition), members))
                        batch, members = producer.create_batch(), []
                    members.append(i)
                sent.append((await producer.send_batch(batch, topic, partition=partition), members))
        except Exception as exc:  # noqa: BLE001 - e.g. no metadata while the broker is away
            error = exc
        results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        acked = [False] * len(messages)
        for (_, members), result in zip(sent, results):
            if isinstance(result, BaseException):
                error = error or result
            else:
                for i in members:
                    acked[i] = True
        if error is not None and not any(acked):
            raise error
        return acked

    async def ping(self) -> None:
        await self.cluster_id()


def create_consumer(
    settings: Settings,
    topics: list[str],
    *,
    group_id: str | None,
    client_id: str,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A consumer with manual commits: offsets are committed only after the effect is stored.

    Partitions are assigned by range, topic by topic: with topics of equal partition counts
    keyed alike (``leads.captured`` and ``outreach.touches``, both by contact email) each
    member gets the same partition numbers of every topic, so all of a contact's events go
    to one member (co-partitioning) and two members rarely write the same contact at once.
    ``LEADSTREAM_KAFKA_PARTITION_ASSIGNORS=range,roundrobin`` also offers round robin, so
    members of a release before run H (round robin only) and of this one form one group
    during a rolling upgrade (the group takes range once every member offers it).
    """
    consumer = AIOKafkaConsumer(
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_records=settings.consumer_batch_size,
        partition_assignment_strategy=tuple(
            ASSIGNORS[name] for name in settings.kafka_partition_assignors.split(",")),
        request_timeout_ms=max(settings.kafka_request_timeout_ms, settings.kafka_session_timeout_ms + 2000),
        **connection_options(settings),
    )
    if topics:
        consumer.subscribe(topics, listener=listener) if listener else consumer.subscribe(topics)
    return consumer


async def read_latest(settings: Settings, topic: str, limit: int, *, timeout: float = 30.0) -> list[ConsumerRecord]:
    """The last ``limit`` messages of ``topic`` over all its partitions, oldest first.

    Reads without a consumer group (nothing is committed, no group's position moves) from the
    beginning of each partition until it has caught up with the fetches' high watermark, or
    has seen nothing new for a second (``end_offsets`` can answer too low on the embedded
    broker: see BROKER.md), keeping only the last ``limit`` of each partition.
    ``TimeoutError`` if that takes more than ``timeout`` seconds.
    """
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, request_timeout_ms=settings.kafka_request_timeout_ms,
        **connection_options(settings),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata (creates nothing)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        kept: dict[TopicPartition, deque[ConsumerRecord]] = {tp: deque(maxlen=limit) for tp in partitions}
        deadline, quiet = time.monotonic() + timeout, 0
        while True:
            batch = await consumer.getmany(*partitions, timeout_ms=500)
            for tp, records in batch.items():
                kept[tp].extend(records)
            quiet = 0 if batch else quiet + 1
            caught_up = True
            for tp in partitions:
                highwater = consumer.highwater(tp)
                caught_up = caught_up and highwater is not None and await consumer.position(tp) >= highwater
            if (caught_up and not batch) or quiet >= 2:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took more than {timeout} s")
    finally:
        await consumer.stop()
    merged = sorted((r for records in kept.values() for r in records),
                    key=lambda r: (r.timestamp, r.partition, r.offset))
    return merged[-limit:]


__all__ = [
    "ConsumerRebalanceListener",
    "KafkaGateway",
    "connection_options",
    "create_consumer",
    "describe_topics",
    "ensure_topics",
    "read_latest",
    "send_each_batch_once",
    "topic_configs",
]
