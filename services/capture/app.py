"""create_app(): the capture service (public REST ingest of form and landing-page leads)."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from fastapi import FastAPI

from services.capture import repository, service
from services.capture.api import router
from services.capture.forms import load_forms
from services.capture.models import CaptureOutbox, CaptureProcessedEvent, CaptureSuppression
from services.capture.schemas import OCCURRED_AT_HORIZON, LeadIn
from services.capture.settings import CaptureSettings
from shared.db import GroupCommit
from shared.privacy import erasure_consumer, privacy_key
from shared.ratelimit import RateLimit
from shared.runtime import ServiceRuntime
from shared.web import create_service_app


class CaptureRuntime(ServiceRuntime):
    def __init__(self, settings: CaptureSettings) -> None:
        super().__init__(settings, "capture", CaptureOutbox)
        self.privacy = privacy_key(settings)
        self.forms = load_forms(settings.forms_file)
        # LeadIn's validation context: how far back occurred_at may go
        self.lead_context = {OCCURRED_AT_HORIZON: timedelta(days=settings.capture_occurred_at_horizon_days)}
        self.client_limit = RateLimit(settings.capture_rate_limit, "client address")
        self.form_limit = RateLimit(settings.capture_form_rate_limit, "form and client address")
        self.writer = GroupCommit(self.db, prepare=repository.prefetch)
        self.privacy_consumer = erasure_consumer(
            self, store=service.STORE, erase=partial(service.erase, self.privacy), inbox_model=CaptureProcessedEvent,
            suppression_model=CaptureSuppression, outbox_model=CaptureOutbox,
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


def create_app(settings: CaptureSettings | None = None) -> FastAPI:
    runtime = CaptureRuntime(settings or CaptureSettings())
    return create_service_app(
        service="capture",
        title="Leadstream capture",
        description="Public ingest of website form and landing-page leads. Every accepted lead is stored "
        "before `202` and published as `io.leadstream.lead.captured.v1` on `leads.captured`.",
        routers=[router],
        runtime=runtime,
        ready_checks=runtime.ready_checks,
        body_models=[LeadIn],
    )
