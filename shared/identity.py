"""Contact identity: the normalised email every service keys facts by."""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import ATEXT

# Mailbox domains that are aliases of another provider: the same inbox, so one contact.
DOMAIN_ALIASES = {"googlemail.com": "gmail.com"}
EMAIL_MAX_LENGTH = 320  # the longest address the schemas accept: a 64-character local part, @, a 255-character domain


def normalise_email(raw: str) -> str:
    """The contact identity of an email, the key every service files its facts under:
    trimmed, lower-cased, plus-tags and dots kept, the domain as ``normalise_domain``
    gives it (``jo@Bücher.de`` and ``jo@xn--bcher-kva.de`` are one contact), and
    ``googlemail.com`` read as ``gmail.com``.

    Raises ``ValueError`` for text that has no local part or domain (syntax is checked at
    the API edge with ``check_email``; this only refuses what cannot be an identity). The
    address as typed is kept beside it for display (``email_as_typed``)."""
    email = raw.strip().lower()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {raw!r}")
    domain = domain.rstrip(".")  # normalise_domain's rule, inline: every event takes this path
    if not domain.isascii():
        domain = _a_label(domain)
    return f"{local}@{DOMAIN_ALIASES.get(domain, domain)}"


def normalise_domain(domain: str) -> str:
    """A host name in one form: lower case, no trailing dot, and an internationalised name
    as its IDNA A-label (``Bücher.de`` → ``xn--bcher-kva.de``), the form DNS and every mail
    system use, so it compares byte for byte. An ASCII name is left as it is (a plain name
    is its own A-label), so ordinary domains cost nothing; a name IDNA refuses is kept
    lower-cased (the edge has already checked addresses; this only has to be stable)."""
    domain = domain.strip().lower().rstrip(".")
    return domain if domain.isascii() else _a_label(domain)


@lru_cache(maxsize=4096)
def _a_label(domain: str) -> str:
    # email-validator's own IDNA (UTS-46 mapping, IDNA 2008): the check at the edge and
    # the identity agree on what a name is; ideographic full stops and NFD are mapped too
    try:
        found = validate_email(f"a@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return domain
    return found.rstrip(".") if found else domain


def check_email(raw: str) -> str:
    """The email as typed (trimmed) if syntactically valid; ``ValueError`` naming the problem."""
    value = raw.strip()
    # only verdicts on addresses the schemas accept are remembered: the memo stays small
    problem = _email_problem(value) if len(value) <= EMAIL_MAX_LENGTH else _email_problem.__wrapped__(value)
    if problem is not None:
        raise ValueError(f"not a valid email address: {problem}")
    return value


@lru_cache(maxsize=8192)
def _email_problem(value: str) -> str | None:
    """Why ``value`` is not a valid address (``None`` if it is). The check is syntax only,
    so its verdict never changes: remembered for the addresses seen lately, as a sequence
    touches the same prospects again and again (~12 % of a batch of touches' CPU).

    Most addresses are a plain ASCII dot-atom before the @ and a host name after it: their
    verdict is the domain's alone (email-validator accepts such a local part without
    further checks), and domains repeat far more than addresses (a company's leads, the
    free-mail providers), so it is remembered per domain. Checking a domain is ~85 % of
    email-validator's time (IDNA/UTS-46 rules character by character: ~36 µs of ~43 µs
    per address here). Anything else takes the whole check."""
    match = _PLAIN_ADDRESS.match(value)
    if match is not None and len(value) <= _ADDRESS_MAX_LENGTH:
        return _domain_problem(match["domain"])
    return _address_problem(value)


# email-validator's own character set of an unquoted local part (RFC 5322 atext), as dot-atom
_PLAIN_ADDRESS = re.compile(rf"[{ATEXT}]+(?:\.[{ATEXT}]+)*@(?P<domain>[A-Za-z0-9.-]+)\Z")
_ADDRESS_MAX_LENGTH = 254  # email-validator's limit of a whole address (RFC 3696 errata)


@lru_cache(maxsize=4096)
def _domain_problem(domain: str) -> str | None:
    """The verdict on ``domain`` after a local part that is valid as it is (the shortest)."""
    return _address_problem(f"a@{domain}")


def _address_problem(value: str) -> str | None:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None
