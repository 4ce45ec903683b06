"""The capture service's settings: the spine's, and what capture alone reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import Settings


class CaptureSettings(Settings):
    # per client address ("off" disables)
    capture_rate_limit: str = "100/minute"
    # how far back a lead's occurred_at may be (anonymous clients must not backdate into old cohorts)
    capture_occurred_at_horizon_days: int = Field(400, ge=1, le=36500)
    # per form and client address, counting only well-formed submissions
    capture_form_rate_limit: str = "20/minute"

    @property
    def forms_file(self) -> Path:
        return self.config_dir / "forms.yaml"
