"""Which proxies' X-Forwarded-For is believed (LEADSTREAM_FORWARDED_ALLOW_IPS) and the client
addresses capture keeps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings
from shared.web import ip_address_or_none


def test_by_default_no_proxy_is_believed():
    """uvicorn alone would believe 127.0.0.1 and ::1 (or $FORWARDED_ALLOW_IPS): on one machine
    that is every client. Leadstream passes its own setting, empty unless configured."""
    assert Settings().proxy_headers() == {"proxy_headers": False, "forwarded_allow_ips": ""}


@pytest.mark.parametrize("value", ["10.0.0.0/8", "10.0.0.0/8, 192.168.1.10", "::1,fd00::/8", "*", " 127.0.0.1 "])
def test_proxies_are_addresses_or_networks(value):
    settings = Settings(forwarded_allow_ips=value)
    assert settings.proxy_headers() == {"proxy_headers": True, "forwarded_allow_ips": value.strip()}


@pytest.mark.parametrize("value", ["ingress-nginx", "10.0.0.0/33", "127.0.0.1, localhost"])
def test_a_proxy_that_is_not_an_address_is_refused(value):
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings(forwarded_allow_ips=value)


@pytest.mark.parametrize("host,kept", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:DB8::1", "2001:db8::1"),
    ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("fe80::1%" + "x" * 60, None),  # a zone id is free text: too long to be an address column
    ("<script>alert(1)</script>", None),
    ("unknown", None),
    ("", None),
    (None, None),
    ("203.0.113.7:443", None),
])
def test_only_an_ip_address_is_kept(host, kept):
    assert ip_address_or_none(host) == kept
