"""Capture under abuse (issue 26): each test sends a probe's reproduction over real HTTP
(uvicorn in-process, with the options ``leadstream serve`` gives it), a real broker and a
real migrated database on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.capture.app import create_app
from services.capture.models import CapturedLead
from tests.support import make_settings, serve_over_http

ALLOWED = {"origin": "https://www.example.com"}
SCRIPT = "<script>" + "alert(document.cookie);" * 8 + "</script>"  # the probe's 208-character value


@pytest.fixture
async def capture_settings(broker, database_factory, tmp_path):
    url = await database_factory("capture")

    def settings(**overrides):  # noqa: ANN003, ANN202
        return make_settings(broker.bootstrap, tmp_path, capture_database_url=url, **overrides)

    return settings


async def _rows(app) -> list[tuple[str | None, str]]:  # noqa: ANN001
    async with app.state.runtime.db.reader() as s:
        query = select(CapturedLead.client_address, CapturedLead.email).order_by(CapturedLead.received_at)
        rows = await s.execute(query)
    return [tuple(r) for r in rows]


async def _refused_posts(client, n: int, forwarded_for) -> list[int]:  # noqa: ANN001
    codes = []
    for i in range(n):
        response = await client.post("/v1/forms/newsletter/submissions", content=b"email=x@spam.example",
                                     headers={"content-type": "text/plain", "x-forwarded-for": forwarded_for(i)})
        codes.append(response.status_code)
    return codes


async def test_spoofed_forwarded_for_and_refused_posts_do_not_lock_a_form(capture_settings):
    """1,000 refused (415) posts, each with a new X-Forwarded-For, then a real visitor: by
    default no proxy is believed, so the flood counts against its sender's address alone."""
    settings = capture_settings(capture_rate_limit="5/minute", capture_form_rate_limit="5/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        codes = await _refused_posts(client_from("127.0.0.2"), 1000, lambda i: f"10.{i // 250}.{i % 250}.1")
        answer = await client_from("127.0.0.3").post(
            "/v1/forms/newsletter/submissions", data={"email": "ada@example.org"},
            headers=ALLOWED | {"x-forwarded-for": "203.0.113.50"})
        rows = await _rows(app)
    assert codes[:5] == [415] * 5 and set(codes[5:]) == {429}  # a spoofed header is no fresh budget
    assert answer.status_code == 303, answer.text
    assert rows == [("127.0.0.3", "ada@example.org")]  # the connection's address, not the header


async def test_a_forms_limit_counts_valid_submissions_per_address(capture_settings):
    settings = capture_settings(capture_rate_limit="off", capture_form_rate_limit="3/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        client = client_from("127.0.0.4")
        refused = [(await client.post("/v1/forms/newsletter/submissions", content=b"email=a@b.co",
                                      headers={"content-type": "text/plain"})).status_code for _ in range(10)]
        invalid = [(await client.post("/v1/forms/newsletter/submissions", data={"email": "nope"})).status_code
                   for _ in range(10)]
        valid = [(await client.post("/v1/forms/newsletter/submissions", data={"email": f"v{i}@example.org"},
                                    headers=ALLOWED)).status_code for i in range(3)]
        spam = await client.post("/v1/forms/newsletter/submissions",
                                 data={"email": "bot@example.org", "nickname": "x"})
        other_form = await client.post("/v1/forms/demo-request/submissions", data={"email": "w@example.org"},
                                       headers=ALLOWED)
        theirs = await client_from("127.0.0.5").post("/v1/forms/newsletter/submissions",
                                                     data={"email": "n@example.org"}, headers=ALLOWED)
    assert (set(refused), set(invalid), valid) == ({415}, {422}, [303, 303, 303])
    assert spam.status_code == 429 and "per form and client address" in spam.json()["detail"]
    assert spam.headers["retry-after"]
    assert other_form.status_code == 303 and theirs.status_code == 303


async def test_forwarded_for_is_believed_only_from_a_configured_proxy(capture_settings):
    settings = capture_settings(forwarded_allow_ips="127.0.0.1", capture_rate_limit="5/minute")
    app = create_app(settings)
    async with serve_over_http(app, settings) as client_from:
        proxy = client_from("127.0.0.1")
        # the proxy appends the address it saw to what the client sent: that one is believed
        codes = await _refused_posts(proxy, 50, lambda i: f"6.6.{i}.6, 198.51.100.9")
        visitor = await proxy.post("/v1/leads", json={"email": "v@example.org"},
                                   headers={"x-forwarded-for": "203.0.113.7"})
        garbage = await proxy.post("/v1/leads", json={"email": "g@example.org"}, headers={"x-forwarded-for": SCRIPT})
        spoofer = await client_from("127.0.0.2").post("/v1/leads", json={"email": "s@example.org"},
                                                      headers={"x-forwarded-for": "203.0.113.8"})
        rows = await _rows(app)
    assert codes[:5] == [415] * 5 and set(codes[5:]) == {429}
    assert (visitor.status_code, garbage.status_code, spoofer.status_code) == (202, 202, 202)
    assert rows == [("203.0.113.7", "v@example.org"), (None, "g@example.org"), ("127.0.0.2", "s@example.org")]
