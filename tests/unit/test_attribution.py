"""Inbound channel derivation (GA4-like, the shipped channels.yaml) and first/last touch attribution."""

from datetime import UTC, datetime, timedelta

import pytest

from pathlib import Path

from services.qualification.domain.attribution import (
    Touch,
    first_touch,
    last_touch_before_qualification,
    motion_of,
)
from services.qualification.domain.channels import INBOUND_CHANNELS, load_channel_rules

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config" / "channels.yaml"


@pytest.fixture(scope="module")
def derive_inbound_channel():
    """The channel derivation: the shipped rules, deploy/config/channels.yaml (the code it
    replaced is tests/unit/channel_reference.py, compared in test_channel_rules.py), loaded
    once per module as a service loads them at start (a load is ~40 ms of CPU)."""
    return load_channel_rules(SHIPPED).classify


SITE = "https://www.leadstream.io/demo"


@pytest.mark.parametrize(
    ("utm_source", "utm_medium", "referrer", "page_url", "form_type", "expected"),
    [
        # paid media
        ("google", "cpc", None, SITE, None, "paid_search"),
        ("bing", "ppc", None, SITE, None, "paid_search"),
        ("newsletter-x", "paid", None, SITE, None, "paid_search"),  # unknown source: search (spec)
        ("linkedin", "cpc", None, SITE, None, "paid_social"),
        ("facebook", "paid", "https://l.facebook.com/", SITE, None, "paid_social"),
        ("anything", "paidsocial", None, SITE, None, "paid_social"),
        ("meta", "paid_social", None, SITE, None, "paid_social"),
        ("reddit", "social-paid", None, SITE, None, "paid_social"),
        ("google", "display", None, SITE, None, "other"),
        # named media
        ("linkedin", "social", None, SITE, None, "organic_social"),
        ("twitter", "sm", None, SITE, None, "organic_social"),
        ("hubspot", "email", None, SITE, None, "email"),
        ("weekly", "newsletter", None, SITE, None, "email"),
        ("g2", "referral", None, SITE, None, "referral"),
        ("acme-partner", "affiliate", None, SITE, None, "partner"),
        ("reseller", "partner", None, SITE, None, "partner"),
        ("saastr", "event", None, SITE, None, "event"),
        ("zoom", "webinar", None, SITE, None, "webinar"),
        ("techtarget", "content", None, SITE, None, "content"),
        ("google", "organic", None, SITE, None, "organic_search"),
        # unknown or missing medium: by source
        ("duckduckgo", None, None, SITE, None, "organic_search"),
        ("youtube", "video-desc", None, SITE, None, "organic_social"),
        ("email", None, None, SITE, None, "email"),
        ("somewhere", "weird", None, SITE, None, "other"),
        ("(direct)", "(none)", None, SITE, None, "direct"),
        # UTM from the landing page's URL
        (None, None, None, f"{SITE}?utm_source=google&utm_medium=cpc", None, "paid_search"),
        ("LinkedIn", "CPC", None, SITE, None, "paid_social"),  # case does not matter
        # ad click ids without UTM
        (None, None, "https://www.google.com/", f"{SITE}?gclid=abc", None, "paid_search"),
        (None, None, None, f"{SITE}?msclkid=abc", None, "paid_search"),
        (None, None, None, f"{SITE}?li_fat_id=abc", None, "paid_social"),
        # referrer only
        (None, None, "https://www.google.com/", SITE, None, "organic_search"),
        (None, None, "https://www.google.co.uk/search?q=x", SITE, None, "organic_search"),
        (None, None, "https://www.bing.com/", SITE, None, "organic_search"),
        (None, None, "https://duckduckgo.com/", SITE, None, "organic_search"),
        (None, None, "https://search.yahoo.com/", SITE, None, "organic_search"),
        (None, None, "https://www.baidu.com/", SITE, None, "organic_search"),
        (None, None, "https://yandex.ru/", SITE, None, "organic_search"),
        (None, None, "https://www.ecosia.org/", SITE, None, "organic_search"),
        (None, None, "https://www.linkedin.com/feed/", SITE, None, "organic_social"),
        (None, None, "https://lnkd.in/abc", SITE, None, "organic_social"),
        (None, None, "https://t.co/xyz", SITE, None, "organic_social"),
        (None, None, "https://x.com/someone", SITE, None, "organic_social"),
        (None, None, "https://m.facebook.com/", SITE, None, "organic_social"),
        (None, None, "https://www.reddit.com/r/sales", SITE, None, "organic_social"),
        (None, None, "https://www.youtube.com/watch?v=1", SITE, None, "organic_social"),
        (None, None, "https://mail.google.com/mail/u/0/", SITE, None, "email"),
        (None, None, "android-app://com.google.android.gm", SITE, None, "email"),
        (None, None, "android-app://com.google.android.googlequicksearchbox", SITE, None, "organic_search"),
        (None, None, "https://news.ycombinator.com/item?id=1", SITE, None, "referral"),
        (None, None, "https://blog.partner.io/post", SITE, None, "referral"),
        (None, None, "https://leadstream.io/pricing", SITE, None, "direct"),  # internal hop
        # nothing at all
        (None, None, None, None, None, "direct"),
        ("", "", "", SITE, "demo_request", "direct"),
        (None, None, None, SITE, "webinar", "webinar"),
        (None, None, None, SITE, "event", "event"),
        (None, None, None, SITE, "content_download", "content"),
        # a form type never overrides a real source
        (None, None, "https://www.google.com/", SITE, "webinar", "organic_search"),
        ("linkedin", "cpc", None, SITE, "webinar", "paid_social"),
    ],
)
def test_derive_inbound_channel(derive_inbound_channel, utm_source, utm_medium, referrer, page_url, form_type,
                                expected):
    channel = derive_inbound_channel(utm_source, utm_medium, referrer, page_url, form_type)
    assert channel == expected
    assert channel in INBOUND_CHANNELS


def test_derive_inbound_channel_survives_garbage(derive_inbound_channel):
    assert derive_inbound_channel(None, None, "http://[::1", "::::") in INBOUND_CHANNELS


T0 = datetime(2026, 11, 1, tzinfo=UTC)


def touch(days: float, motion: str = "inbound", channel: str = "organic_search", **extra) -> Touch:
    return Touch(motion=motion, channel=channel, occurred_at=T0 + timedelta(days=days), **extra)


@pytest.mark.parametrize(
    ("existing", "new", "expected"),
    [
        (None, touch(3), touch(3)),
        (touch(1), touch(3, channel="email"), touch(1)),
        (touch(3), touch(1, channel="email"), touch(1, channel="email")),  # late-arriving earlier fact
        (touch(1), touch(1, channel="email"), touch(1)),  # tie: the recorded one stays
    ],
)
def test_first_touch_is_the_earliest(existing, new, expected):
    assert first_touch(existing, new) == expected


QUALIFIED_AT = T0 + timedelta(days=5)


@pytest.mark.parametrize(
    ("existing", "new", "qualified_at", "expected"),
    [
        (None, touch(1), None, touch(1)),
        (touch(1), touch(2, channel="email"), None, touch(2, channel="email")),
        (touch(2), touch(1, channel="email"), None, touch(2)),  # older fact does not replace
        (touch(1), touch(5, channel="email"), QUALIFIED_AT, touch(5, channel="email")),  # qualifying touch counts
        (touch(1), touch(6, channel="email"), QUALIFIED_AT, touch(1)),  # frozen after qualification
        (touch(1), touch(4, channel="email"), QUALIFIED_AT, touch(4, channel="email")),  # late fact from before
    ],
)
def test_last_touch_before_qualification(existing, new, qualified_at, expected):
    assert last_touch_before_qualification(existing, new, qualified_at) == expected


@pytest.mark.parametrize(
    ("motions", "expected"),
    [
        ({"inbound"}, "inbound"),
        ({"outbound"}, "outbound"),
        ({"inbound", "outbound"}, "blended"),
        ({"blended"}, "blended"),
    ],
)
def test_motion_of(motions, expected):
    assert motion_of(motions) == expected


def test_motion_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        motion_of(set())


def test_touch_is_a_frozen_value():
    with pytest.raises(AttributeError):
        touch(0).channel = "x"  # type: ignore[misc]
