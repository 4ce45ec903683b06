"""The webhooks service's settings: the spine's, the webhook subscriptions' rules it shares
with the pipeline service (``shared.webhooks.WebhookSettings``), and delivery's own."""

from __future__ import annotations

from pydantic import Field

from shared.settings import Settings
from shared.webhooks import WebhookSettings


class WebhooksSettings(Settings, WebhookSettings):
    webhooks_timeout_s: float = Field(10.0, gt=0)
    webhooks_backoff_initial_s: float = Field(1.0, gt=0)
    webhooks_backoff_max_s: float = Field(3600.0, gt=0)
    webhooks_max_in_flight: int = Field(16, ge=1, le=256)  # concurrent requests per subscription
    webhooks_poll_interval_s: float = Field(1.0, gt=0)
    webhooks_consumer_group: str = "leadstream-webhooks"
    webhooks_retention_hours: float = Field(7 * 24.0, gt=0)  # delivered deliveries kept (dead ones until redriven)
