"""The parts a service process builds once in its lifespan (bootstrap, not globals)."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import Depends, Request

from shared.db import Database
from shared.kafka import KafkaGateway
from shared.outbox import OutboxMixin, OutboxRelay
from shared.secrets import SecretBox
from shared.settings import Settings

log = structlog.get_logger("runtime")


class ServiceRuntime:
    """Database, Kafka gateway and outbox relay of one service process.

    ``database`` names the database the service uses (``Settings.database_url``); by
    default the service's own name (a service owns a database of its name).
    """

    def __init__(self, settings: Settings, service: str, outbox_model: type[OutboxMixin] | None = None,
                 *, database: str | None = None) -> None:
        self.settings = settings
        self.service = service
        self.database_name = database or service
        self.db = Database(settings.database_url(self.database_name), pool_size=settings.database_pool_size)
        self.kafka = KafkaGateway(settings, client_id=f"leadstream-{service}")
        self.relay = OutboxRelay(self.db, outbox_model, self.kafka, settings, service) if outbox_model else None
        # signing secrets stored encrypted (outreach's inbound ones, webhook subscriptions')
        self.secrets = SecretBox(settings.secrets_key)

    async def start(self) -> None:
        if self.secrets.development and not self.settings.embedded_broker:
            log.warning("LEADSTREAM_SECRETS_KEY is the public development key: stored signing secrets are "
                        "not protected; set a key of your own (leadstream secrets new-key)")
        await self.kafka.start()
        if self.relay:
            self.relay.start()

    async def stop(self) -> None:
        if self.relay:
            await self.relay.stop()
        await self.kafka.stop()
        await self.db.dispose()

    def ready_checks(self) -> dict[str, Any]:
        return {"database": self.db.ping, "broker": self.kafka.ping}


async def get_runtime(request: Request) -> Any:
    """The service's runtime (async: FastAPI would run a plain function in its thread pool)."""
    return request.app.state.runtime


def runtime_of(request: Request) -> Any:
    """The runtime without a dependency: on the ingest hot paths each FastAPI dependency costs a
    resolution per request (one fewer measured ~9 % less CPU per lead in capture)."""
    return request.app.state.runtime


Runtime = Annotated[Any, Depends(get_runtime)]
