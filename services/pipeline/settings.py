"""The pipeline service's settings: the spine's, the webhook subscriptions' rules it shares
with the webhooks service (``shared.webhooks.WebhookSettings``), and what pipeline alone reads."""

from __future__ import annotations

from pydantic import Field

from shared.settings import Settings
from shared.webhooks import WebhookSettings


class PipelineSettings(Settings, WebhookSettings):
    # share of qualified pipeline above which source analytics warns of a dependency
    dependency_thresholds_channel: float = 0.5
    dependency_thresholds_campaign: float = 0.3
    dependency_thresholds_motion: float = 0.8
    # motion balance diagnoses (GET /v1/analytics/balance; services/pipeline/balance.py)
    balance_majority: float = Field(0.6, ge=0, le=1)
    balance_fit_gap: float = Field(0.2, ge=0, le=1)
    balance_effort_high: float = Field(20.0, ge=0)
    balance_effort_rise: float = Field(0.25, ge=0)
    balance_shift: float = Field(0.15, ge=0, le=1)
    balance_assisted: float = Field(0.3, ge=0, le=1)
    balance_min_opportunities: int = Field(10, ge=0)

    # dashboard sessions live in the pipeline store (any pipeline process serves them)
    dashboard_session_hours: float = Field(12.0, gt=0)
    # the session cookie is Secure (sent over https only) even when a TLS-terminating proxy
    # forwards plain http; only `make run` (plain http on localhost) turns it off
    dashboard_secure_cookie: bool = True
