"""Contact identity: the normalised email every service keys facts by."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

DOMAIN_ALIASES = {"googlemail.com": "gmail.com"}


def normalise_email(raw: str) -> str:
    """Trimmed and lower-cased; plus-tags kept; ``googlemail.com`` is ``gmail.com``."""
    email = raw.strip().lower()
    local, sep, domain = email.rpartition("@")
    if not sep:
        return email
    return f"{local}@{DOMAIN_ALIASES.get(domain, domain)}"


def check_email(raw: str) -> str:
    """The email as typed (trimmed) if syntactically valid; ``ValueError`` naming the problem."""
    value = raw.strip()
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return value
