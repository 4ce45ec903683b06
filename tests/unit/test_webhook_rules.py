"""Webhook rules, pure: backoff with jitter, Retry-After, the retry window; which URLs may
receive deliveries."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.webhooks.retries import backoff_s, next_attempt, retry_after_s
from shared.webhooks import SUBSCRIBABLE_TYPES, TargetRefused, embedded_ipv4, forbidden_address, parse_target

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("attempts,rand,expected", [
    (1, 0.0, 0.5), (1, 0.999999, 1.0), (2, 0.0, 1.0), (3, 0.5, 3.0), (10, 0.0, 256.0),
    (20, 0.0, 1800.0), (20, 0.999999, 3600.0),  # capped at the maximum
])
def test_backoff_doubles_with_equal_jitter_up_to_the_maximum(attempts, rand, expected):
    assert backoff_s(attempts, initial=1.0, maximum=3600.0, rand=rand) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("value,expected", [
    (None, None), ("120", 120.0), (" 0 ", 0.0), ("soon", None), ("-5", None),
    ("Wed, 02 Dec 2026 12:05:00 GMT", 300.0), ("Wed, 02 Dec 2026 11:00:00 GMT", 0.0),
])
def test_retry_after_in_seconds_or_as_a_date(value, expected):
    assert retry_after_s(value, NOW) == expected


def test_retry_after_is_a_floor_and_the_window_makes_it_dead():
    window_end = NOW + timedelta(hours=24)
    plain = next_attempt(1, NOW, window_end, initial=1.0, maximum=3600.0, rand=0.0)
    assert plain == NOW + timedelta(seconds=0.5)
    honoured = next_attempt(1, NOW, window_end, initial=1.0, maximum=3600.0, rand=0.0, retry_after=120.0)
    assert honoured == NOW + timedelta(seconds=120)
    assert next_attempt(1, NOW, window_end, initial=1.0, maximum=3600.0, rand=0.0, retry_after=0.0) == plain
    # an attempt that would fall after the window is not made
    assert next_attempt(30, NOW, NOW + timedelta(minutes=10), initial=1.0, maximum=3600.0, rand=0.0) is None
    assert next_attempt(1, NOW, NOW + timedelta(seconds=60), initial=1.0, maximum=3600.0, rand=0.0,
                        retry_after=3600.0) is None


def test_a_day_of_failures_is_a_few_dozen_attempts_then_dead():
    at, attempts, end = NOW, 0, NOW + timedelta(hours=24)
    while at is not None:
        attempts += 1
        at = next_attempt(attempts, at, end, initial=1.0, maximum=3600.0, rand=0.5)
    assert 30 <= attempts <= 50


@pytest.mark.parametrize("address,forbidden", [
    ("127.0.0.1", True), ("10.0.0.1", True), ("172.16.5.4", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True),
    ("::1", True), ("fe80::1", True), ("fc00::1", True), ("::ffff:127.0.0.1", True), ("::ffff:10.0.0.1", True),
    ("8.8.8.8", False), ("1.1.1.1", False), ("2606:4700:4700::1111", False),
])
def test_inside_addresses_are_forbidden(address, forbidden):
    assert forbidden_address(address) is forbidden


@pytest.mark.parametrize("address,embedded,forbidden", [
    # IPv4-mapped
    ("::ffff:127.0.0.1", "127.0.0.1", True), ("::ffff:169.254.169.254", "169.254.169.254", True),
    ("::ffff:8.8.8.8", "8.8.8.8", False),
    # IPv4-compatible (deprecated) and IPv4-translated
    ("::127.0.0.1", "127.0.0.1", True), ("::10.0.0.1", "10.0.0.1", True), ("::a9fe:a9fe", "169.254.169.254", True),
    ("::8.8.8.8", "8.8.8.8", False), ("::ffff:0:10.0.0.1", "10.0.0.1", True), ("::ffff:0:8.8.8.8", "8.8.8.8", False),
    # NAT64, well-known prefix: the last 32 bits
    ("64:ff9b::127.0.0.1", "127.0.0.1", True), ("64:ff9b::a9fe:a9fe", "169.254.169.254", True),
    ("64:ff9b::c0a8:101", "192.168.1.1", True), ("64:ff9b::100.64.0.1", "100.64.0.1", True),
    ("64:ff9b::e000:1", "224.0.0.1", True), ("64:ff9b::808:808", "8.8.8.8", False),
    # NAT64, local-use prefix: an inside translator, refused whatever it embeds
    ("64:ff9b:1::7f00:1", None, True), ("64:ff9b:1::808:808", None, True),
    # 6to4: bits 16-48
    ("2002:7f00:1::", "127.0.0.1", True), ("2002:a9fe:a9fe::1", "169.254.169.254", True),
    ("2002:a00:1:1::1", "10.0.0.1", True), ("2002:808:808::1", "8.8.8.8", False),
    # Teredo: the client is the last 32 bits inverted (2001::/32 is not global either way)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1", True),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254", True),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1", True),
    # no IPv4 inside
    ("2606:4700:4700::1111", None, False), ("::1", "0.0.0.1", True), ("::", "0.0.0.0", True),
])
def test_ipv6_forms_embedding_an_inside_ipv4_address_are_forbidden(address, embedded, forbidden):
    inner = embedded_ipv4(ipaddress.IPv6Address(address))
    assert (str(inner) if inner is not None else None) == embedded
    assert forbidden_address(address) is forbidden


@pytest.mark.parametrize("url,allow_http,message", [
    ("https://crm.example.com/hooks", False, None),
    ("https://crm.example.com:8443/hooks?x=1", False, None),
    ("http://crm.example.com/hooks", True, None),
    ("https://bücher.example/hook", False, None),
    ("http://crm.example.com/hooks", False, "must use https"),
    ("crm.example.com/hooks", False, "not an absolute"),
    ("mailto:a@b.c", False, "not an absolute"),
    ("https://a:b@crm.example.com/", False, "credentials"),
    ("https://crm.example.com:70000/", False, "not a valid URL"),
    ("https:///path-only", False, "not an absolute"),
    ("https://:443/x", False, "no host"),
    ("https://crm.example.com/a b", False, "white space"),
    ("https://crm.example.com/\r\nX: y", False, "white space"),
])
def test_url_form(url, allow_http, message):
    if message is None:
        target = parse_target(url, allow_http=allow_http)
        assert target.port in (443, 8443, 80) and target.host.isascii()
    else:
        with pytest.raises(TargetRefused, match=message):
            parse_target(url, allow_http=allow_http)


def test_subscribable_types_are_every_type_of_the_followed_topics():
    assert SUBSCRIBABLE_TYPES == ("io.leadstream.opportunity.qualified.v1", "io.leadstream.stage.changed.v1",
                                  "io.leadstream.contact.erased.v1")


def test_the_webhooks_guide_lists_every_subscribable_type_and_no_other():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    section = guide.split("### Event types", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\| `(io\.leadstream\.[a-z_.]+\.v\d+)` \|", section, re.MULTILINE)
    assert listed == list(SUBSCRIBABLE_TYPES)
