"""Tables of the capture database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.consumer import InboxMixin
from shared.outbox import OutboxMixin
from shared.privacy import SuppressionMixin


class Base(DeclarativeBase):
    pass


class CapturedLead(Base):
    """Every accepted submission (leads and spam), kept as received."""

    __tablename__ = "capture_leads"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    contact_key: Mapped[str] = mapped_column(String(320), index=True)
    form_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    form_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # accepted | spam | dropped (an erased person's, not published)
    spam_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class CaptureOutbox(OutboxMixin, Base):
    __tablename__ = "capture_outbox"


class CaptureSuppression(SuppressionMixin, Base):
    """Erased people, by keyed hash only: a later lead for one is dropped (answered like a
    success) unless it carries a new marketing opt-in, which lifts the suppression."""

    __tablename__ = "capture_suppressions"


class CaptureProcessedEvent(InboxMixin, Base):
    """The inbox of capture's ``privacy.requests`` consumer."""

    __tablename__ = "capture_processed_events"
