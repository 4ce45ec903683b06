"""create_app(): the outreach service (authenticated ingest of prospects and touches from sales tools)."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.outreach import repository, service
from services.outreach.api import router, webhooks
from services.outreach.models import OutreachApiKey, OutreachOutbox, OutreachProcessedEvent, OutreachSuppression
from services.outreach.schemas import MAX_BATCH, ProspectIn, TouchBatchIn, TouchIn
from services.outreach.settings import OutreachSettings
from shared.auth import ApiKeyAuth
from shared.db import GroupCommit
from shared.privacy import erasure_consumer, privacy_key
from shared.ratelimit import RateLimit
from shared.runtime import ServiceRuntime
from shared.web import create_service_app

BATCH_BODY_LIMIT = 1024 * 1024


class OutreachRuntime(ServiceRuntime):
    def __init__(self, settings: OutreachSettings) -> None:
        super().__init__(settings, "outreach", OutreachOutbox)
        self.privacy = privacy_key(settings)
        self.auth = ApiKeyAuth(self.db, OutreachApiKey, settings.api_rate_limit)
        self.webhook_limit = RateLimit(settings.api_rate_limit, "integration")
        self.writer = GroupCommit(self.db, prepare=repository.prefetch)
        self.privacy_consumer = erasure_consumer(
            self, store=service.STORE, erase=partial(service.erase, self.privacy),
            inbox_model=OutreachProcessedEvent, suppression_model=OutreachSuppression, outbox_model=OutreachOutbox,
        )

    async def start(self) -> None:
        await super().start()
        self.privacy_consumer.start()

    async def stop(self) -> None:
        try:
            await self.privacy_consumer.stop()
        finally:
            await self.writer.stop()
            await super().stop()


def create_app(settings: OutreachSettings | None = None) -> FastAPI:
    runtime = OutreachRuntime(settings or OutreachSettings())
    return create_service_app(
        service="outreach",
        title="Leadstream outreach",
        description="Authenticated ingest of researched prospects and sequence touches from sales tools "
        "(Outreach, Salesloft, HubSpot Sequences, scripts). Send an API key with the `outreach` scope as "
        "`Authorization: Bearer <key>`; webhooks are authenticated by their signature instead. Every accepted "
        "fact is stored before it is answered and published on `outreach.touches` "
        "(`io.leadstream.prospect.added.v1`, `io.leadstream.touch.recorded.v1`), keyed by the normalised email.",
        routers=[router, webhooks],
        runtime=runtime,
        ready_checks=runtime.ready_checks,
        body_limits={"/v1/touches:batch": BATCH_BODY_LIMIT},
        body_models=[ProspectIn, TouchIn, TouchBatchIn],
    )


assert MAX_BATCH == 1000  # the spec's batch size; the body limit is sized for it
