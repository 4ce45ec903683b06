"""Managed-Kafka settings: SASL/SSL options aiokafka accepts, and the topic layout's configs."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
from aiokafka.client import AIOKafkaClient
from pydantic import ValidationError

from shared.events import ALL_TOPICS, TOPICS, dlq_topic
from shared.kafka import connection_options, create_consumer, topic_configs
from shared.settings import Settings

MANAGED = dict(kafka_bootstrap_servers="pkc-1.example.cloud:9092", kafka_sasl_username="u", kafka_sasl_password="p")


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
async def test_sasl_options_are_accepted_by_aiokafka(protocol, mechanism):
    settings = Settings(**MANAGED, kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism)
    opts = connection_options(settings)
    assert opts["security_protocol"] == protocol
    assert opts["sasl_mechanism"] == mechanism
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("u", "p")
    assert isinstance(opts.get("ssl_context"), ssl.SSLContext) == (protocol == "SASL_SSL")
    client = AIOKafkaClient(**opts)  # aiokafka's own checks of the combination
    await client.close()


def test_sasl_from_environment_variables(monkeypatch):
    for key, value in {
        "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": "b-1.msk.example:9096",
        "LEADSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LEADSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LEADSTREAM_KAFKA_SASL_USERNAME": "leadstream",
        "LEADSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
    }.items():
        monkeypatch.setenv(key, value)
    opts = connection_options(Settings())
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512" and opts["sasl_plain_password"] == "s3cret"


def test_plain_is_the_default_mechanism():
    assert connection_options(Settings(**MANAGED, kafka_security_protocol="SASL_SSL"))["sasl_mechanism"] == "PLAIN"


def test_plaintext_has_no_security_options():
    opts = connection_options(Settings())
    assert opts == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    "values",
    [
        dict(kafka_security_protocol="SASL_SSL"),  # no credentials
        dict(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u"),  # no password
        dict(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI", kafka_sasl_username="u",
             kafka_sasl_password="p"),  # needs Kerberos settings we do not have
        dict(kafka_security_protocol="SASL_SCRAM"),
        dict(kafka_ssl_certfile="/tmp/cert.pem"),  # a certificate without its key
        dict(kafka_partitions=0),
        dict(kafka_replication_factor=0),
        dict(kafka_topic_retention_ms=-2),
        dict(kafka_partition_assignors="sticky"),
        dict(kafka_partition_assignors=""),
        dict(kafka_partition_assignors="range,range"),
    ],
    ids=["no-credentials", "no-password", "gssapi", "bad-protocol", "cert-no-key", "0-partitions", "0-replicas",
         "bad-retention", "unknown-assignor", "no-assignor", "assignor-twice"],
)
def test_bad_kafka_settings_fail_at_start(values):
    with pytest.raises(ValidationError):
        Settings(**values)


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_mutual_tls_loads_the_client_certificate(tmp_path):
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=leadstream-test"],
        check=True, capture_output=True,
    )
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(key),
                        kafka_ssl_cafile=str(cert))
    context = connection_options(settings)["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError):
        connection_options(settings.model_copy(update={"kafka_ssl_keyfile": str(cert)}))  # not a key


def test_topic_configs_delete_by_age_and_keep_the_dlq_longer():
    settings = Settings(kafka_topic_retention_ms=1000, kafka_dlq_retention_ms=5000)
    for topic in TOPICS:
        assert topic_configs(settings, topic) == {
            "cleanup.policy": "delete", "retention.ms": "1000", "min.insync.replicas": "1"}
        assert topic_configs(settings, dlq_topic(topic))["retention.ms"] == "5000"
    assert len(ALL_TOPICS) == 2 * len(TOPICS)


@pytest.mark.parametrize(
    ("replication", "min_isr", "expected"),
    [(1, None, "1"), (2, None, "1"), (3, None, "2"), (5, None, "2"), (3, 3, "3"), (1, 2, "1")],
)
def test_min_insync_replicas(replication, min_isr, expected):
    settings = Settings(kafka_replication_factor=replication, kafka_min_insync_replicas=min_isr)
    assert topic_configs(settings, TOPICS[0])["min.insync.replicas"] == expected


async def test_the_gateway_producer_never_sends_a_batch_a_second_time_by_itself():
    """``send_each_batch_once`` relies on aiokafka's batch time to live (a private attribute):
    a batch past it is failed on its first error instead of being sent again (the sender's
    ``_can_retry``). An aiokafka that renames it must fail here, not lose writes after a broker
    restart (see ``shared.kafka.send_each_batch_once``)."""
    from aiokafka import AIOKafkaProducer, TopicPartition

    from shared.kafka import send_each_batch_once

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", request_timeout_ms=30000)
    assert producer._message_accumulator._batch_ttl == 30  # noqa: SLF001 - what the setting gives
    send_each_batch_once(producer)
    builder = producer.create_batch()
    builder.append(key=b"k", value=b"v", timestamp=None)
    accumulator = producer._message_accumulator  # noqa: SLF001
    await accumulator.add_batch(builder, TopicPartition("t", 0), timeout=1)
    (batch,) = accumulator._batches[TopicPartition("t", 0)]  # noqa: SLF001
    assert batch.expired()
    await producer.client.close()
    producer._closed = True  # noqa: SLF001 - never started: nothing to stop


@pytest.mark.parametrize(("value", "offered"), [
    (None, ["range"]),  # one protocol: one JoinGroup per join (aiokafka 0.14 sends one per assignor)
    ("range,roundrobin", ["range", "roundrobin"]),  # rolling from a round-robin-only release
    (" roundrobin ", ["roundrobin"]),
])
async def test_consumers_offer_the_configured_assignors_in_order(value, offered):
    settings = Settings() if value is None else Settings(kafka_partition_assignors=value)
    consumer = create_consumer(settings, [], group_id="g", client_id="c")
    assert [assignor.name for assignor in consumer._partition_assignment_strategy] == offered
