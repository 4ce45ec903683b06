"""create_app(): the pipeline service (contacts, accounts, opportunities, transitions, analytics)."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from pipeline_store import DATABASE
from pipeline_store.models import PipelineApiKey, PipelineOutbox, PrivacyProcessedEvent
from services.pipeline.analytics import Thresholds
from services.pipeline.api import router
from services.pipeline.balance import BalanceThresholds
from services.pipeline.dashboard import STATIC_PATH, Sessions, static_files
from services.pipeline.dashboard import router as dashboard_router
from services.pipeline.privacy import erasures
from services.pipeline.privacy.api import router as privacy_router
from services.pipeline.settings import PipelineSettings
from services.pipeline.subscriptions.api import router as subscriptions_router
from shared.amounts import NO_EXPECTED_AMOUNTS, ExpectedAmounts, ExpectedAmountsError, read_expected_amounts
from shared.auth import ApiKeyAuth
from shared.consumer import InboxConsumer
from shared.events import ERASURE_COMPLETED, ERASURE_REQUESTED, PRIVACY_REQUESTS, SUPPRESSION_LIFTED
from shared.privacy import privacy_key
from shared.runtime import ServiceRuntime
from shared.web import create_service_app

log = structlog.get_logger("pipeline")


def dependency_thresholds(settings: PipelineSettings) -> Thresholds:
    return Thresholds(channel=settings.dependency_thresholds_channel,
                      campaign=settings.dependency_thresholds_campaign, motion=settings.dependency_thresholds_motion)


def balance_thresholds(settings: PipelineSettings) -> BalanceThresholds:
    return BalanceThresholds(
        majority=settings.balance_majority, fit_gap=settings.balance_fit_gap,
        effort_high=settings.balance_effort_high, effort_rise=settings.balance_effort_rise,
        shift=settings.balance_shift, assisted=settings.balance_assisted,
        min_opportunities=settings.balance_min_opportunities,
    )


class PipelineRuntime(ServiceRuntime):
    def __init__(self, settings: PipelineSettings, expected_amounts: ExpectedAmounts = NO_EXPECTED_AMOUNTS) -> None:
        super().__init__(settings, "pipeline", PipelineOutbox, database=DATABASE)
        self.expected_amounts = expected_amounts
        self.auth = ApiKeyAuth(self.db, PipelineApiKey, settings.api_rate_limit)
        self.thresholds = dependency_thresholds(settings)
        self.balance_thresholds = balance_thresholds(settings)
        self.sessions = Sessions(settings.dashboard_session_hours, settings.dashboard_secure_cookie)
        self.privacy = privacy_key(settings)
        # the erasure saga's reports: each store's erasure.completed marks it done
        self.privacy_consumer = InboxConsumer(
            self.db, self.kafka, settings, topics=[PRIVACY_REQUESTS], name="pipeline-privacy",
            handlers={ERASURE_COMPLETED: erasures.record_report, ERASURE_REQUESTED: erasures.ignore,
                      SUPPRESSION_LIFTED: erasures.ignore},
            inbox_model=PrivacyProcessedEvent, group_id=f"{settings.privacy_consumer_group}-coordinator",
        )

    async def start(self) -> None:
        await super().start()
        self.privacy_consumer.start()

    async def stop(self) -> None:
        try:
            await self.privacy_consumer.stop()
        finally:
            await super().stop()


def create_app(settings: PipelineSettings | None = None) -> FastAPI:
    settings = settings or PipelineSettings()
    # scoring.yaml's expected amounts: a mistake stops the service here, before it answers
    try:
        expected_amounts = read_expected_amounts(settings.scoring_file)
    except ExpectedAmountsError as exc:
        log.error("invalid expected amounts; not starting", error=str(exc))
        raise SystemExit(f"pipeline: {exc}") from exc
    runtime = PipelineRuntime(settings, expected_amounts)
    app = create_service_app(
        service="pipeline",
        title="Leadstream pipeline",
        description="The one qualified pipeline, inbound and outbound: contacts with their timelines, accounts, "
        "opportunities and sales transitions, and the sources question — where the best opportunities come "
        "from and where the business is too dependent. Every `/v1` route needs an API key with the "
        "`pipeline` scope (`Authorization: Bearer …`), but `/v1/subscriptions` (webhooks), which needs the "
        "`subscriptions` scope, and `/v1/privacy` (data protection requests), which needs the `privacy` scope.",
        routers=[router, subscriptions_router, privacy_router, dashboard_router],
        runtime=runtime,
        ready_checks=runtime.ready_checks,
    )
    app.mount(STATIC_PATH, static_files, name="dashboard-static")
    return app
