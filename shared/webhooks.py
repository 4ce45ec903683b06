"""Webhook subscriptions' shared rules: which events can be subscribed to, and which URLs
may receive them (checked when a subscription is made, and again before each delivery,
after DNS resolution, so a name that later resolves to an inside address is refused).

Refused unless the settings allow them: plain ``http`` (``LEADSTREAM_WEBHOOKS_ALLOW_HTTP``)
and any address that is not globally routable: loopback, private, link-local (cloud
metadata at 169.254.169.254), shared, multicast, reserved, or an IPv6 address embedding one
(NAT64, 6to4, Teredo, IPv4-mapped or -compatible) (``LEADSTREAM_WEBHOOKS_ALLOW_PRIVATE``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, Field

from shared.events import EVENT_TYPES, OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES

# the topics a webhook can follow, and so the event types a subscription may name
WEBHOOK_TOPICS = (OPPORTUNITIES_QUALIFIED, PIPELINE_CHANGES)
SUBSCRIBABLE_TYPES = tuple(t for t, (topic, _) in EVENT_TYPES.items() if topic in WEBHOOK_TOPICS)

MAX_URL_LENGTH = 2048


class WebhookSettings(BaseModel):
    """The settings of these shared rules, read by every process that makes subscriptions or
    delivers to them: mixed into those services' settings classes (``class
    XSettings(Settings, WebhookSettings)``), so both read the one definition."""

    webhooks_allow_http: bool = False  # for local receivers only
    webhooks_allow_private: bool = False  # loopback, private, link-local targets
    # how long a failed delivery is retried (from its first attempt, or from a manual retry)
    webhooks_retry_hours: float = Field(24.0, gt=0)


class TargetRefused(ValueError):
    """The URL may not receive webhooks; the message says why (it never holds a secret)."""


@dataclass(frozen=True)
class Target:
    """A URL taken apart: what a delivery connects to."""

    url: str
    scheme: str
    host: str  # without brackets for IPv6
    port: int


def parse_target(url: str, *, allow_http: bool) -> Target:
    """The URL's parts if its form is acceptable (no DNS here); ``TargetRefused`` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise TargetRefused("the URL contains white space or control characters")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        raise TargetRefused("not an absolute http(s) URL")
    if scheme == "http" and not allow_http:
        raise TargetRefused("the URL must use https (plain http needs LEADSTREAM_WEBHOOKS_ALLOW_HTTP=true)")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL must not carry credentials; authenticate deliveries by their signature")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("the URL has no host")
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode()
        except UnicodeError:
            raise TargetRefused("the URL's host is not a valid domain name") from None
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80))


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: a translator or
# tunnel on the path turns them into that IPv4 address, so it is what they reach
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: an operator's own translator
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated (:: and ::1 are refused anyway)
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is of a form that embeds one:
    IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 (well-known prefix), 6to4 (bits
    16–48) or Teredo (the client: the last 32 bits inverted)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forbidden_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not ip.is_global or ip.is_multicast


def forbidden_address(address: str) -> bool:
    """True for an address a webhook may not reach unless private targets are allowed: one
    that is not globally routable, or an IPv6 address embedding an IPv4 one that is not (a
    NAT64 or 6to4 gateway would carry ``64:ff9b::7f00:1`` or ``2002:a9fe:a9fe::`` inside).
    The local-use NAT64 prefix is refused whole: the translator it names is an inside one
    and the place of the IPv4 address in it is the operator's choice (RFC 8215)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL_USE:
            return True
        inner = embedded_ipv4(ip)
        if inner is not None:
            # a mapped address is judged by its IPv4 alone (Python < 3.13 calls all of them private)
            return _forbidden_ip(inner) or (ip.ipv4_mapped is None and _forbidden_ip(ip))
    return _forbidden_ip(ip)


def _described(address: str) -> str:
    """The address, and the IPv4 address it embeds if any (why ``64:ff9b::a00:1`` is inside)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return f"{address}, which embeds {inner}" if inner is not None else address


async def resolve(target: Target, *, allow_private: bool) -> list[str]:
    """The target's addresses (DNS resolved); ``TargetRefused`` if it does not resolve or any
    address is not public (unless allowed): a name with one inside address is refused whole."""
    try:
        ip = ipaddress.ip_address(target.host)
        addresses = [str(ip)]
    except ValueError:
        ip = None
    if ip is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise TargetRefused(f"the host {target.host!r} does not resolve ({exc.__class__.__name__})") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise TargetRefused(f"the host {target.host!r} does not resolve")
    if not allow_private:
        inside = [a for a in addresses if forbidden_address(a)]
        if inside:
            raise TargetRefused(f"the host {target.host!r} resolves to a loopback, private or link-local address "
                                f"({_described(inside[0])}); allowed only with LEADSTREAM_WEBHOOKS_ALLOW_PRIVATE=true")
    return addresses


async def check_target(url: str, *, allow_http: bool, allow_private: bool) -> Target:
    """Form and addresses of a subscription's URL; ``TargetRefused`` saying what is wrong."""
    target = parse_target(url, allow_http=allow_http)
    await resolve(target, allow_private=allow_private)
    return target


__all__ = ["MAX_URL_LENGTH", "SUBSCRIBABLE_TYPES", "WEBHOOK_TOPICS", "Target", "TargetRefused", "check_target",
           "embedded_ipv4", "forbidden_address", "parse_target", "resolve"]
