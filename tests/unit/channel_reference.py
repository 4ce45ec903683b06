"""The inbound channel derivation as code, as it was before the rules moved to
``deploy/config/channels.yaml`` (issue 24): kept as the reference the shipped rules must
reproduce exactly (``test_channel_rules.py`` compares the two on random leads).

The GA4 default channel grouping, mapped onto the product's channels: see the shipped
file's comments and docs/channels.md for the order of rules.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from services.qualification.domain.identity import registrable_domain

# Search engines by the label before the public suffix (google.de, google.co.uk, …).
_SEARCH_ENGINE_LABELS = frozenset(
    {
        "google", "bing", "duckduckgo", "yahoo", "baidu", "yandex", "ecosia", "ask",
        "naver", "seznam", "qwant", "startpage", "sogou", "so", "daum", "kagi", "aol",
        "brave", "msn", "lycos", "dogpile", "mojeek",
    }
)
# utm_source values meaning a search engine beyond the labels above.
_SEARCH_SOURCES = _SEARCH_ENGINE_LABELS | {"adwords", "googleads", "google_ads", "gads", "bingads", "microsoft"}

# Social networks by registrable domain (their short-link domains included).
_SOCIAL_DOMAINS = frozenset(
    {
        "facebook.com", "fb.com", "fb.me", "messenger.com", "instagram.com", "linkedin.com",
        "lnkd.in", "twitter.com", "t.co", "x.com", "reddit.com", "redd.it", "youtube.com",
        "youtu.be", "tiktok.com", "pinterest.com", "quora.com", "threads.net", "bsky.app",
        "whatsapp.com", "wa.me", "t.me", "telegram.org", "snapchat.com", "xing.com",
        "vk.com", "tumblr.com", "mastodon.social", "discord.com", "weibo.com",
    }
)
# utm_source values naming a social network.
_SOCIAL_SOURCES = frozenset(
    {
        "facebook", "fb", "meta", "instagram", "ig", "linkedin", "li", "twitter", "x", "tw",
        "reddit", "youtube", "yt", "tiktok", "pinterest", "quora", "threads", "bluesky",
        "bsky", "whatsapp", "telegram", "snapchat", "xing", "vk", "tumblr", "mastodon",
        "discord", "weibo",
    }
) | _SOCIAL_DOMAINS

_WEBMAIL_HOSTS = frozenset(
    {
        "mail.google.com", "inbox.google.com", "outlook.live.com", "outlook.office.com",
        "outlook.office365.com", "mail.yahoo.com", "mail.aol.com", "mail.proton.me",
        "mail.zoho.com", "app.fastmail.com", "webmail.gmx.net", "mail.yandex.ru",
        "android.gm",
    }
)

_PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
_PAID_SOCIAL_MEDIA = frozenset(
    {"paidsocial", "paid_social", "paid-social", "social-paid", "social_paid", "socialpaid", "paid social"}
)
_PAID_SEARCH_MEDIA = frozenset({"paidsearch", "paid_search", "paid-search", "paid search", "sem"})
_DISPLAY_MEDIA = frozenset({"display", "banner", "expandable", "interstitial", "native"})
_NAMED_MEDIA: dict[str, str] = {
    "organic": "organic_search",
    **dict.fromkeys(("social", "social-network", "social_network", "social-media", "social_media", "sm",
                     "social network", "social media"), "organic_social"),
    **dict.fromkeys(("email", "e-mail", "e_mail", "e mail", "newsletter", "mail"), "email"),
    **dict.fromkeys(("referral", "app", "link"), "referral"),
    **dict.fromkeys(("affiliate", "affiliates", "partner", "partners", "partnership"), "partner"),
    **dict.fromkeys(("event", "events", "tradeshow", "trade-show", "conference", "booth"), "event"),
    **dict.fromkeys(("webinar", "webinars"), "webinar"),
    **dict.fromkeys(("content", "content-syndication", "syndication", "ebook", "whitepaper"), "content"),
}
_EMAIL_SOURCES = frozenset({"email", "e-mail", "e_mail", "e mail", "newsletter"})
_CLICK_IDS = (
    (("gclid", "gbraid", "wbraid", "dclid", "msclkid"), "paid_search"),
    (("li_fat_id", "ttclid", "twclid", "rdt_cid"), "paid_social"),
)
_FORM_CHANNELS = {"webinar": "webinar", "event": "event", "content_download": "content"}


def _clean(value: str | None) -> str:
    return (value or "").strip().lower()


def _query(url: str | None) -> dict[str, list[str]]:
    if not url:
        return {}
    try:
        return parse_qs(urlsplit(url).query)
    except ValueError:
        return {}


def is_search_source(source: str) -> bool:
    """Whether a utm_source value or host names a search engine."""
    source = _clean(source)
    if source in _SEARCH_SOURCES:
        return True
    label = _host_label(source)
    return label in _SEARCH_ENGINE_LABELS


def is_social_source(source: str) -> bool:
    """Whether a utm_source value or host names a social network."""
    source = _clean(source)
    if source in _SOCIAL_SOURCES:
        return True
    return "." in source and registrable_domain(source) in _SOCIAL_DOMAINS


def _host_label(host: str) -> str | None:
    """``www.google.co.uk`` → ``google``: the label before the public suffix."""
    if "." not in host:
        return None
    registrable = registrable_domain(host)
    return registrable.split(".", 1)[0] if registrable else None


def _channel_from_utm(source: str, medium: str) -> str:
    if source == "(direct)" and medium in ("", "(none)", "none", "(not set)"):
        return "direct"
    if medium in _PAID_SOCIAL_MEDIA:
        return "paid_social"
    if medium in _PAID_SEARCH_MEDIA:
        return "paid_search"
    if _PAID_MEDIUM.match(medium):
        return "paid_social" if is_social_source(source) else "paid_search"
    if medium in _DISPLAY_MEDIA:
        return "other"
    if medium in _NAMED_MEDIA:
        return _NAMED_MEDIA[medium]
    if is_search_source(source):
        return "organic_search"
    if is_social_source(source):
        return "organic_social"
    if source in _EMAIL_SOURCES:
        return "email"
    return "other"


def _channel_from_referrer(referrer: str, page_url: str | None) -> str | None:
    """The channel a referrer implies, or ``None`` when it says nothing (internal hop)."""
    try:
        parts = urlsplit(referrer if "://" in referrer else f"//{referrer}")
    except ValueError:
        return "referral"
    host = (parts.hostname or "").lower()
    if not host:
        return None
    if parts.scheme == "android-app":
        return _channel_from_android_app(host)
    if host in _WEBMAIL_HOSTS:
        return "email"
    site = registrable_domain(host)
    if page_url and site is not None and site == registrable_domain(page_url):
        return None
    if is_search_source(host):
        return "organic_search"
    if site in _SOCIAL_DOMAINS:
        return "organic_social"
    return "referral"


def _channel_from_android_app(package: str) -> str:
    # Android apps refer as android-app://<package>; GA4 groups these the same way.
    if package == "com.google.android.gm":
        return "email"
    if "googlequicksearchbox" in package:
        return "organic_search"
    if any(name in package for name in ("linkedin", "facebook", "twitter", "instagram", "reddit", "youtube")):
        return "organic_social"
    return "referral"


def derive_inbound_channel(
    utm_source: str | None,
    utm_medium: str | None,
    referrer: str | None,
    page_url: str | None = None,
    form_type: str | None = None,
) -> str:
    """The inbound channel of a lead from its UTM parameters, referrer, landing page and
    form type, the way GA4's default channel grouping would (see the module docstring
    for the exact order of rules). Always one of ``INBOUND_CHANNELS``.
    """
    query = _query(page_url)
    source = _clean(utm_source) or _clean((query.get("utm_source") or [""])[0])
    medium = _clean(utm_medium) or _clean((query.get("utm_medium") or [""])[0])
    if source or medium:
        return _channel_from_utm(source, medium)
    for names, channel in _CLICK_IDS:
        if any(name in query for name in names):
            return channel
    if referrer and referrer.strip():
        channel = _channel_from_referrer(referrer.strip(), page_url)
        if channel is not None:
            return channel
    return _FORM_CHANNELS.get(_clean(form_type), "direct")
