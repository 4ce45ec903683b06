"""The spine's settings: what more than one Leadstream process reads, from ``LEADSTREAM_*``
environment variables (Kafka, the database pool, the outbox, the host, logging, the secrets
key ...).

A setting one service alone reads belongs to that service: its ``settings.py`` holds a
subclass of ``Settings`` that adds its fields, and the composition root's registry
(``leadstream/registry.py``) names the class each service is built with. The variables keep
one flat namespace, ``LEADSTREAM_<FIELD>`` whichever class declares the field; a process
ignores the variables it does not declare (those of other services).

The spine names no service: each database's URL (``LEADSTREAM_<DATABASE>_DATABASE_URL``)
and each service's port (``LEADSTREAM_<SERVICE>_PORT``) are read for any name, and looked
up by name (``database_url``, ``port_of``); which names exist, with their default ports,
is the composition root's registry (``leadstream/registry.py``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.secrets import DEVELOPMENT_KEY, SecretBox

EMBEDDED_BOOTSTRAP = "127.0.0.1:9092"

# the settings of one database or service, by name: ``<name>_database_url``, ``<name>_port``
PER_NAME = re.compile(r"[a-z][a-z0-9_]*_(database_url|port)")


class Settings(BaseSettings):
    """What more than one process needs (a service's own settings: its subclass of this one);
    tests build their own instance instead of patching."""

    # errors never echo a value (some are keys and passwords)
    # extras: only the per-name settings (``PER_NAME``); other unknown keys are ignored
    model_config = SettingsConfigDict(env_prefix="LEADSTREAM_", extra="allow", hide_input_in_errors=True)

    kafka_bootstrap_servers: str = EMBEDDED_BOOTSTRAP
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # aiokafka's mechanisms that need nothing but a user name and a password (managed Kafka:
    # Confluent Cloud PLAIN, MSK and Aiven SCRAM); GSSAPI/OAUTHBEARER would need more settings.
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    # mutual TLS (e.g. Aiven, MSK with TLS client authentication): a PEM certificate and key
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: str | None = None
    kafka_partitions: int = Field(4, ge=1)
    kafka_replication_factor: int = Field(1, ge=1)
    # topic configs applied when topics are created (``leadstream topics create``)
    kafka_topic_retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1)  # -1 keeps forever
    kafka_dlq_retention_ms: int = Field(30 * 24 * 3600 * 1000, ge=-1)  # time to inspect and replay
    kafka_min_insync_replicas: int | None = Field(None, ge=1)  # default: 2 when replicated 3+, else 1
    kafka_session_timeout_ms: int = 3000
    kafka_heartbeat_interval_ms: int = 1000
    kafka_request_timeout_ms: int = 5000
    # the partition assignors consumers offer, in order of preference; "range,roundrobin" lets a
    # group whose older members offer only round robin roll (aiokafka 0.14 then joins twice:
    # aio-libs/aiokafka#1168, 2 s more per join on the embedded broker)
    kafka_partition_assignors: str = "range"
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"

    data_dir: Path = Path("./var")
    config_dir: Path = Path("deploy/config")  # the services' YAML files (forms, scoring policies)

    # and, per database and per service, <name>_database_url and <name>_port (PER_NAME)
    database_pool_size: int = 10

    host: str = "127.0.0.1"
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips): comma-separated addresses or networks, "*" for any. Empty (the
    # default): none, so a client cannot name its own address by sending the header.
    forwarded_allow_ips: str = ""

    api_rate_limit: str = "6000/minute"

    outbox_poll_interval_s: float = 0.2
    outbox_batch_size: int = 500
    outbox_retention_hours: float = 24.0
    outbox_max_backoff_s: float = 10.0
    # One relay per outbox table publishes: the holder of its lease (shared.lease). It renews
    # the lease this often; another process takes over about ``outbox_lease_s`` after the
    # holder stops renewing (kill -9); a clean stop hands it over within one renewal period.
    outbox_lease_s: float = Field(5.0, gt=0)
    outbox_lease_renew_s: float = Field(1.0, gt=0)

    # Each batch is one transaction, followed by a relay round: a backlog drains faster in
    # larger ones (end to end with one SQLite worker: 2,621 / 3,167 / 3,276 events/s at
    # 1,000 / 2,000 / 4,000, peak RSS 162 / 192 / 190 MiB); a quiet stream still makes
    # small batches.
    consumer_batch_size: int = 2000

    # Host header values a service answers (comma-separated; `*.example.com` for subdomains,
    # `*` for any); others are 400. /healthz, /readyz and /metrics answer any Host (probes).
    trusted_hosts: str = "*"

    # Fernet key(s), comma-separated (the first encrypts): signing secrets stored encrypted.
    # The default is public (shared/secrets.py), for development only.
    secrets_key: str = Field(DEVELOPMENT_KEY, repr=False)

    # keys the hashes that stand for erased people (suppression lists, erasure requests); the
    # services that store personal data refuse to start without it (`make run` sets a
    # development value, unsafe in production). A new value forgets every suppression.
    privacy_secret: str | None = Field(None, repr=False)
    # the erasure saga's consumer groups on privacy.requests: <this>-capture, -outreach,
    # -pipeline (the pipeline store) and -coordinator (the pipeline service)
    privacy_consumer_group: str = "leadstream-privacy"

    log_level: str = "INFO"
    log_json: bool = True
    # after start-up: freeze the heap built so far and collect young objects less often
    # (shared.observability.tune_gc); off for apps built inside another process (tests)
    gc_freeze: bool = True

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        """Each entry an address, a network or ``*`` (uvicorn would take a typo as a host name)."""
        for entry in filter(None, (e.strip() for e in value.split(","))):
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"LEADSTREAM_FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network") from None
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _PerNameEnvironment(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _per_name_only(cls, data: Any) -> Any:
        """Unknown keys are ignored, as before, unless they are per-name settings."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields or PER_NAME.fullmatch(k)}
        return data

    @field_validator("kafka_partition_assignors")
    @classmethod
    def _assignors(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        unknown = [name for name in names if name not in ("range", "roundrobin")]
        if unknown or not value.strip() or len(set(names)) != len(names):
            raise ValueError(f"names range and/or roundrobin, comma-separated, each once (got {value!r})")
        return ",".join(names)

    @field_validator("secrets_key")
    @classmethod
    def _secrets_key(cls, value: str) -> str:
        SecretBox(value)  # SecretKeyError (a ValueError) names the setting, never the value
        return value

    @model_validator(mode="after")
    def _per_name_values(self) -> Settings:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, value in list(extra.items()):
            if value is None:
                continue
            if key.endswith("_port"):
                try:
                    extra[key] = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"LEADSTREAM_{key.upper()} is not a port number: {value!r}") from None
            else:
                extra[key] = str(value)
        return self

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"LEADSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "LEADSTREAM_KAFKA_SASL_USERNAME and LEADSTREAM_KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("LEADSTREAM_KAFKA_SSL_CERTFILE and LEADSTREAM_KAFKA_SSL_KEYFILE go together")
        if self.outbox_lease_s < 2 * self.outbox_lease_renew_s:
            # the holder acts on its lease until one renewal period before it expires
            raise ValueError("LEADSTREAM_OUTBOX_LEASE_S must be at least twice LEADSTREAM_OUTBOX_LEASE_RENEW_S")
        return self

    @property
    def embedded_broker(self) -> bool:
        """True when the default address is used: ``make run`` starts Tansu there."""
        return self.kafka_bootstrap_servers == EMBEDDED_BOOTSTRAP

    def proxy_headers(self) -> dict[str, object]:
        """uvicorn's options for forwarded headers: believed only from ``forwarded_allow_ips``."""
        return {"proxy_headers": bool(self.forwarded_allow_ips), "forwarded_allow_ips": self.forwarded_allow_ips}

    def port_of(self, service: str, default: int) -> int:
        """``LEADSTREAM_<SERVICE>_PORT``, else ``default`` (the service's, from the registry)."""
        port = (self.model_extra or {}).get(f"{service}_port")
        return default if port is None else int(port)

    def database_url(self, database: str) -> str:
        """The async SQLAlchemy URL of ``database`` (a database's name, not a service's):
        ``LEADSTREAM_<DATABASE>_DATABASE_URL``, else SQLite in the data dir."""
        url = (self.model_extra or {}).get(f"{database}_database_url")
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / f'{database}.db').as_posix()}"
        return async_url(url)

    @property
    def scoring_file(self) -> Path:
        """The scoring policies (``config_dir``): more than one service reads them."""
        return self.config_dir / "scoring.yaml"


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite:///`` URLs and pick the async driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


class _PerNameEnvironment(PydanticBaseSettingsSource):
    """``LEADSTREAM_<NAME>_DATABASE_URL`` and ``LEADSTREAM_<NAME>_PORT`` from the environment,
    for any name (the declared fields are read by pydantic-settings' own source)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix") or "").lower()
        found = {}
        for key, value in os.environ.items():
            name = key.lower()
            if name.startswith(prefix) and PER_NAME.fullmatch(name[len(prefix):]):
                found[name[len(prefix):]] = value
        return found


@lru_cache
def get_settings() -> Settings:
    return Settings()
