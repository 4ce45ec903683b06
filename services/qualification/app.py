"""create_app(): the qualification service, a consumer group on leads and outreach touches.

Its runtime runs the inbox consumer (facts in, one transaction each batch, exactly once in
effect) and the outbox relay of the pipeline store (qualified opportunities and stage
changes out). HTTP serves only operations: health, readiness, metrics and status.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import structlog
from fastapi import APIRouter, FastAPI

from pipeline_store import DATABASE
from pipeline_store.models import ErasedSubject, PipelineOutbox, ProcessedEvent
from services.qualification import erasure
from services.qualification.domain import identity
from services.qualification.domain.channels import ChannelRulesError
from services.qualification.domain.policy import PolicyError
from services.qualification.handlers import bind, prefetch
from services.qualification.service import Qualifier, load_qualifier
from services.qualification.settings import QualificationSettings
from shared.consumer import InboxConsumer
from shared.events import LEADS_CAPTURED, OUTREACH_TOUCHES
from shared.privacy import erasure_consumer, privacy_key
from shared.runtime import Runtime, ServiceRuntime
from shared.web import create_service_app

log = structlog.get_logger("qualification")

TOPICS = (LEADS_CAPTURED, OUTREACH_TOUCHES)


class QualificationRuntime(ServiceRuntime):
    def __init__(self, settings: QualificationSettings, qualifier: Qualifier) -> None:
        super().__init__(settings, "qualification", PipelineOutbox, database=DATABASE)
        self.privacy = privacy_key(settings)
        qualifier = dataclasses.replace(qualifier, privacy=self.privacy)
        self.qualifier = qualifier
        self.consumer = InboxConsumer(
            self.db,
            self.kafka,
            settings,
            topics=TOPICS,
            handlers=bind(qualifier),
            name="qualification",
            group_id=settings.kafka_consumer_group,
            inbox_model=ProcessedEvent,
            after_commit=self.relay.wake,
            prefetch=partial(prefetch, qualifier=qualifier),
            snapshot=True,  # the repository checks what a batch read (services/qualification/repository.py)
        )
        # erasures of the pipeline store: a group of their own (every worker is a member)
        self.privacy_consumer = erasure_consumer(
            self, store=erasure.STORE, erase=partial(erasure.erase, self.privacy), inbox_model=ProcessedEvent,
            suppression_model=ErasedSubject, outbox_model=PipelineOutbox,
        )

    async def start(self) -> None:
        await super().start()
        identity.registrable_domain("www.example.co.uk")  # builds the suffix trie before the heap is frozen
        self.consumer.start()
        self.privacy_consumer.start()

    async def stop(self) -> None:
        # stop consuming first (commit what is done), then let the relay drain
        try:
            await self.privacy_consumer.stop()
            await self.consumer.stop()
        finally:
            await super().stop()


router = APIRouter(tags=["operations"])


@router.get("/v1/status", summary="Consumer group membership, partitions, lag, policy and channel rules versions")
async def status(runtime: Runtime) -> dict:
    return {
        "consumer": runtime.consumer.status(),
        "policies": runtime.qualifier.describe(),
        "outbox_published": runtime.relay.published,
    }


def create_app(settings: QualificationSettings | None = None) -> FastAPI:
    settings = settings or QualificationSettings()
    # A bad policy or channel rules file stops the service here, before it consumes
    # anything, with the file, line and field (and rule) named.
    try:
        qualifier = load_qualifier(settings.scoring_file, settings.channels_file)
    except PolicyError as exc:
        log.error("invalid scoring policy; not starting", error=str(exc))
        raise SystemExit(f"qualification: {exc}") from exc
    except ChannelRulesError as exc:
        log.error("invalid channel rules; not starting", error=str(exc))
        raise SystemExit(f"qualification: {exc}") from exc
    runtime = QualificationRuntime(settings, qualifier)
    return create_service_app(
        service="qualification",
        title="Leadstream qualification",
        description="Consumes `leads.captured` and `outreach.touches` into the pipeline store: identity, "
        "attribution, scoring and stages; publishes `io.leadstream.opportunity.qualified.v1` and "
        "`io.leadstream.stage.changed.v1` through the outbox.",
        routers=[router],
        runtime=runtime,
        ready_checks=runtime.ready_checks,
    )
