"""Tables of the outreach database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.api_keys import ApiKeyMixin
from shared.consumer import InboxMixin
from shared.outbox import OutboxMixin
from shared.privacy import SuppressionMixin


class Base(DeclarativeBase):
    pass


class OutreachProspect(Base):
    """Every accepted prospect, kept as received (the ``prospect.added`` event's data)."""

    __tablename__ = "outreach_prospects"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))  # as typed
    contact_key: Mapped[str] = mapped_column(String(320), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class OutreachTouch(Base):
    """Every accepted touch. ``external_key`` (``services.outreach.external_keys``: the sales
    tool's id within its source, the API key's name or the webhook integration) makes a
    repeat a no-op; ``external_id`` is the id as the tool gave it, unique only per source."""

    __tablename__ = "outreach_touches"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))  # as typed
    contact_key: Mapped[str] = mapped_column(String(320), index=True)
    channel: Mapped[str] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(40))
    external_id: Mapped[str | None] = mapped_column(String(320), nullable=True)
    external_key: Mapped[str | None] = mapped_column(String(64), unique=True, index=True, nullable=True)
    integration: Mapped[str | None] = mapped_column(String(100), nullable=True)  # set for webhooks
    api_key_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # set for API pushes
    payload: Mapped[dict] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class OutreachApiKey(ApiKeyMixin, Base):
    __tablename__ = "outreach_api_keys"


class OutreachWebhookSecret(Base):
    """Signing secrets of the sales tools pushing webhooks. Encrypted with
    ``LEADSTREAM_SECRETS_KEY`` (``shared.secrets``): verifying an HMAC needs the secret
    itself, a copy of the database must not give it. Several active secrets per
    integration allow rotation."""

    __tablename__ = "outreach_webhook_secrets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    integration: Mapped[str] = mapped_column(String(100), index=True)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OutreachOutbox(OutboxMixin, Base):
    __tablename__ = "outreach_outbox"


class OutreachSuppression(SuppressionMixin, Base):
    """Erased people, by keyed hash only: their prospects and touches are refused (409
    ``suppressed``) until a new marketing opt-in at capture lifts it."""

    __tablename__ = "outreach_suppressions"


class OutreachProcessedEvent(InboxMixin, Base):
    """The inbox of outreach's ``privacy.requests`` consumer."""

    __tablename__ = "outreach_processed_events"
