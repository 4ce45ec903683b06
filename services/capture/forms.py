"""The website forms declared in ``forms.yaml`` and the rules of a submission to one.

Pure functions (values in, values out): the flat HTML names of a lead's fields, a
consent checkbox's value, and the spam verdict (honeypot, then origin). The routes
parse the request and call these; they hold no rule of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.capture.schemas import LeadIn
from shared.errors import field_errors
from shared.events import FormType

# the flat form names of the nested JSON fields
FLAT_UTM = {f"utm_{k}": k for k in ("source", "medium", "campaign", "term", "content")}
FLAT_CONSENT = {"consent_marketing": "marketing", "consent_text": "text"}
_NESTED = {"utm", "consent", "fields"}
_TOP_LEVEL = frozenset(LeadIn.model_fields) - _NESTED

# what a checkbox or a select may send for "yes" and "no" (anything else is left for validation)
CONSENT_YES = frozenset({"on", "yes", "1", "true"})
CONSENT_NO = frozenset({"off", "no", "0", "false"})


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


def consent_value(value: Any) -> Any:
    """A consent checkbox's value as a bool (``on``/``yes``/``1``/``true`` and their opposites,
    any case); anything else is returned as sent, for validation to name."""
    text = str(value).strip().lower()
    if text in CONSENT_YES:
        return True
    if text in CONSENT_NO:
        return False
    return value


def flatten(form: Form, submitted: Mapping[str, str]) -> dict[str, Any]:
    """A flat HTML submission in ``LeadIn``'s JSON shape.

    Known names go to the top level, ``utm_*`` and ``consent_*`` to their objects, and
    every other input (``fields[name]`` or a bare ``name``) to the custom ``fields``. The
    honeypot and empty inputs (except ``email``, so a blank one is named) are left out. A
    consent given without ``consent_marketing`` (an unticked checkbox sends nothing) is
    ``marketing: false``."""
    body: dict[str, Any] = {"utm": {}, "fields": {}}
    consent: dict[str, Any] = {}
    for name, value in submitted.items():
        if name == form.honeypot:
            continue
        if value == "" and name != "email":
            continue
        if name in _TOP_LEVEL:
            body[name] = value
        elif name in FLAT_UTM:
            body["utm"][FLAT_UTM[name]] = value
        elif name in FLAT_CONSENT:
            consent[FLAT_CONSENT[name]] = value
        elif name.startswith("fields[") and name.endswith("]"):
            body["fields"][name[7:-1]] = value
        else:
            body["fields"][name] = value
    if consent:
        consent["marketing"] = consent_value(consent.get("marketing", False))
        body["consent"] = consent
    return body


_FLAT_NAMES = {f"utm.{nested}": flat for flat, nested in FLAT_UTM.items()} | {
    f"consent.{nested}": flat for flat, nested in FLAT_CONSENT.items()
}


def flat_name(field: str) -> str:
    """The name an HTML form uses for a ``LeadIn`` field (``utm.source`` -> ``utm_source``)."""
    return _FLAT_NAMES.get(field, field)


class InvalidSubmission(ValueError):
    """A submission that is not a valid lead; ``errors`` name the form's own inputs."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid form submission")
        self.errors = errors


def lead_of(form: Form, submitted: Mapping[str, str], context: dict[str, Any] | None = None) -> LeadIn:
    """The submission as a validated lead (``context``: ``LeadIn``'s validation context), or
    ``InvalidSubmission`` naming each bad input."""
    try:
        return LeadIn.model_validate(flatten(form, submitted), context=context)
    except ValidationError as exc:
        raise InvalidSubmission(
            [e | {"field": flat_name(e["field"])} for e in field_errors(list(exc.errors()))]
        ) from None


def honeypot_of(form: Form, values: Mapping[str, str]) -> str | None:
    """What ``values`` (a flat submission, or a JSON lead's ``fields``) hold in the form's honeypot."""
    return values.get(form.honeypot) if form.honeypot else None


def spam_payload(submitted: Mapping[str, Any]) -> dict[str, str]:
    """A flat submission as kept for review: at most 100 inputs of 2,000 characters."""
    return {k: str(v)[:2000] for k, v in list(submitted.items())[:100]}


def spam_verdict(form: Form, honeypot_value: str | None, origin: str | None) -> str | None:
    """Why a submission to ``form`` is spam, or ``None``: a filled honeypot first, then an
    ``Origin`` the form does not allow (no ``Origin`` at all is a server or curl: allowed)."""
    if form.honeypot and (honeypot_value or "").strip():
        return f"honeypot field {form.honeypot!r} filled"
    if not form.allows(origin):
        return f"origin {origin!r} not allowed for form {form.id!r}"
    return None


def judge_lead(declared: Mapping[str, Form], lead: LeadIn, origin: str | None) -> tuple[Form | None, str | None]:
    """A JSON lead meets the rules of the form its ``form_id`` names, as that form's own
    endpoint would judge it (honeypot looked for in ``fields``, then the ``Origin``): the
    declared form (``None`` if not declared: taken as sent) and why the lead is spam, or ``None``."""
    form = declared.get(lead.form_id) if lead.form_id else None
    if form is None:
        return None, None
    return form, spam_verdict(form, honeypot_of(form, lead.fields), origin)


def cors_headers(form: Form, origin: str | None) -> dict[str, str]:
    """CORS answer headers for a browser ``Origin`` posting to ``form``."""
    if origin and form.allows(origin):
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"}


def form_body_openapi() -> dict[str, Any]:
    """``openapi_extra`` of the form post: the flat HTML-form body it reads (no JSON body)."""
    names = [n for n in LeadIn.model_fields if n not in ("utm", "consent", "fields")] + [*FLAT_UTM, *FLAT_CONSENT]
    properties: dict[str, Any] = {name: {"type": "string"} for name in names}
    properties["consent_marketing"]["description"] = "`on`, `yes`, `1` or `true` (a checked box) for consent"
    schema = {
        "type": "object", "required": ["email"], "properties": properties,
        "additionalProperties": {"type": "string", "description": "Any other input: a custom field (`fields`)"},
    }
    return {"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": schema}, "multipart/form-data": {"schema": schema}}}}
