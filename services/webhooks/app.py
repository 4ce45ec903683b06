"""create_app(): the webhooks process (``leadstream serve webhooks``), a consumer group of
its own on the topics subscriptions follow, and the workers that deliver.

Events are stored as deliveries in the consumer's transaction (with its inbox rows) and the
Kafka offsets committed after it, so a restart loses nothing; sending happens apart, so a
slow receiver never holds the consumer (nor qualification, which it never touches). HTTP
serves operations only: health, readiness, metrics (per subscription) and status.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from pipeline_store import DATABASE
from services.webhooks.dispatcher import Dispatcher
from services.webhooks.handlers import bind, prefetch
from services.webhooks.settings import WebhooksSettings
from shared.consumer import InboxConsumer
from shared.runtime import Runtime, ServiceRuntime
from pipeline_store.models import WebhookProcessedEvent
from shared.web import create_service_app
from shared.webhooks import WEBHOOK_TOPICS


class WebhooksRuntime(ServiceRuntime):
    def __init__(self, settings: WebhooksSettings) -> None:
        super().__init__(settings, "webhooks", database=DATABASE)
        self.dispatcher = Dispatcher(self.db, settings, self.secrets, partitions=self.partitions)
        self.consumer = InboxConsumer(
            self.db, self.kafka, settings,
            topics=WEBHOOK_TOPICS,
            handlers=bind(settings),
            name="webhooks",
            inbox_model=WebhookProcessedEvent,
            group_id=settings.webhooks_consumer_group,
            after_commit=self.dispatcher.wake,
            prefetch=prefetch,
            # on SQLite, read and compute without the store's write lock, which qualification
            # needs; take it only to write the batch's deliveries and inbox rows
            snapshot=True,
        )

    def partitions(self) -> set[int]:
        """The partitions whose deliveries this process sends: those its consumer holds."""
        return {tp.partition for tp in self.consumer.assignment}

    async def start(self) -> None:
        await super().start()
        self.consumer.start()
        self.dispatcher.start()

    async def stop(self) -> None:
        try:
            await self.consumer.stop()
            await self.dispatcher.stop()
        finally:
            await super().stop()


router = APIRouter(tags=["operations"])


@router.get("/v1/status", summary="Consumer group membership, lag, and the delivery workers")
async def status(runtime: Runtime) -> dict:
    return {"consumer": runtime.consumer.status(), "dispatcher": runtime.dispatcher.status()}


def create_app(settings: WebhooksSettings | None = None) -> FastAPI:
    runtime = WebhooksRuntime(settings or WebhooksSettings())
    return create_service_app(
        service="webhooks",
        title="Leadstream webhooks",
        description="Delivers `opportunities.qualified` and `pipeline.changes` events to webhook subscriptions "
        "(managed on the pipeline service's `/v1/subscriptions`): signed, in order per contact, retried with "
        "backoff for 24 hours. Per-subscription metrics on `/metrics`.",
        routers=[router],
        runtime=runtime,
        ready_checks=runtime.ready_checks,
    )
