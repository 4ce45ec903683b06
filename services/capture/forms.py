"""The website forms declared in ``forms.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import FormType


class Form(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    name: str | None = None
    form_type: FormType
    lead_magnet: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    thank_you_url: str
    honeypot: str | None = None

    def allows(self, origin: str | None) -> bool:
        """No ``Origin`` (server-to-server, curl) is allowed; a browser's must be listed."""
        if origin is None:
            return True
        return "*" in self.allowed_origins or origin.rstrip("/") in {o.rstrip("/") for o in self.allowed_origins}


class FormsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forms: list[Form]


class FormsError(ValueError):
    pass


def load_forms(path: Path) -> dict[str, Form]:
    """Forms by id; ``FormsError`` with a clear message for a bad file."""
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else {"forms": []}
        parsed = FormsFile.model_validate(raw or {"forms": []})
    except (yaml.YAMLError, ValidationError) as exc:
        raise FormsError(f"{path}: {exc}") from exc
    forms = {f.id: f for f in parsed.forms}
    if len(forms) != len(parsed.forms):
        raise FormsError(f"{path}: form ids must be unique")
    return forms
