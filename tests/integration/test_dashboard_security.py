"""The dashboard's sessions against issue 26's probe: malformed cookies, far dates, sign-out that
ends the session on the server, Secure cookies behind a TLS proxy, and login CSRF."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from pipeline_store.models import DashboardSession, PipelineApiKey
from services.pipeline.app import create_app
from services.pipeline.dashboard import COOKIE
from tests.integration.test_pipeline_api import add_key, pipeline  # noqa: F401 - fixture
from tests.support import make_settings, serve_app

SIGNED_OUT = {"Authorization": ""}


def key_of(client) -> str:  # noqa: ANN001
    return client.headers["Authorization"].split()[1]


async def sign_in(client, key: str, **headers):  # noqa: ANN001, ANN003, ANN201
    return await client.post("/dashboard/sign-in", data={"api_key": key}, headers=SIGNED_OUT | headers)


async def page(client, session: str, **params):  # noqa: ANN001, ANN003, ANN201
    return await client.get("/dashboard", params=params, headers=SIGNED_OUT | {"Cookie": f"{COOKIE}={session}"})


def signed_in(answer) -> bool:  # noqa: ANN001
    return answer.status_code == 200 and "Totals" in answer.text and 'name="api_key"' not in answer.text


def signed_out(answer) -> bool:  # noqa: ANN001
    return 'name="api_key"' in answer.text and "Totals" not in answer.text


# ---- 3: a malformed session cookie is 401, never a 500 -------------------------------------


async def test_a_non_ascii_or_malformed_session_cookie_is_401(pipeline):  # noqa: F811
    session = (await sign_in(pipeline, key_of(pipeline))).cookies[COOKIE]
    for value in ["é", "é.9999999999.é", "x.9999999999.forged", session[:-1] + "é", session + "é",
                  "a" * 4000, session.upper() if session.upper() != session else session.lower()]:
        answer = await pipeline.get("/dashboard", headers=[(b"Authorization", b""),
                                                             (b"Cookie", f"{COOKIE}={value}".encode())])
        assert answer.status_code == 401, value
        assert signed_out(answer) and "sign in again" in answer.text.lower()
        assert f'{COOKIE}=""' in answer.headers["set-cookie"]  # the stale cookie is cleared
    no_cookie = await pipeline.get("/dashboard", headers=SIGNED_OUT)
    assert no_cookie.status_code == 200 and signed_out(no_cookie)
    assert signed_in(await page(pipeline, session))


# ---- 4: far dates on the dashboard are its own 422 page --------------------------------------


async def test_far_dates_on_the_dashboard_are_its_error_page(pipeline):  # noqa: F811
    session = (await sign_in(pipeline, key_of(pipeline))).cookies[COOKIE]
    for params, name in [({"to": "9999-12-31"}, "to"), ({"from": "9999-12-31"}, "from"),
                         ({"from": "2025-01-01", "to": "9999-12-31"}, "to")]:
        answer = await page(pipeline, session, **params)
        assert answer.status_code == 422 and 'role="alert"' in answer.text, answer.text
        assert f"({name})" in answer.text
    assert signed_in(await page(pipeline, session, to="9999-12-30"))
    assert signed_in(await page(pipeline, session, to="0001-01-01"))  # the balance's windows saturate


# ---- 5: sign-out ends the session on the server ----------------------------------------------


async def sessions(client) -> int:  # noqa: ANN001
    async with client.runtime.db.reader() as s:
        return (await s.execute(select(func.count()).select_from(DashboardSession))).scalar_one()


async def test_sign_out_ends_that_session_on_the_server(pipeline):  # noqa: F811
    key = key_of(pipeline)
    laptop = (await sign_in(pipeline, key)).cookies[COOKIE]
    phone = (await sign_in(pipeline, key)).cookies[COOKIE]
    assert laptop != phone and await sessions(pipeline) == 2
    assert signed_in(await page(pipeline, laptop)) and signed_in(await page(pipeline, phone))

    out = await pipeline.post("/dashboard/sign-out", headers=SIGNED_OUT | {"Cookie": f"{COOKIE}={laptop}"})
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    replayed = await page(pipeline, laptop)  # the cookie a thief copied before sign-out
    assert replayed.status_code == 401 and signed_out(replayed)
    assert signed_in(await page(pipeline, phone)) and await sessions(pipeline) == 1
    again = await pipeline.post("/dashboard/sign-out", headers=SIGNED_OUT | {"Cookie": f"{COOKIE}={laptop}"})
    assert again.status_code == 303  # signing out twice, or without a session, is harmless
    assert (await pipeline.post("/dashboard/sign-out", headers=SIGNED_OUT)).status_code == 303


async def test_sessions_expire_and_end_with_their_key(pipeline):  # noqa: F811
    key = key_of(pipeline)
    signed = await sign_in(pipeline, key)
    assert "max-age=43200" in signed.headers["set-cookie"].lower()  # 12 h, as before
    session = signed.cookies[COOKIE]
    async with pipeline.runtime.db.reader() as s:
        row = (await s.execute(select(DashboardSession))).scalar_one()
    assert session not in (row.id, row.key_id)  # the store keeps a hash of the token, not the token
    left = row.expires_at.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(hours=11.9) < left <= timedelta(hours=12)
    async with pipeline.runtime.db.unit_of_work() as s:
        await s.execute(update(DashboardSession).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert (await page(pipeline, session)).status_code == 401
    await sign_in(pipeline, key)  # a sign-in sweeps expired sessions away
    assert await sessions(pipeline) == 1

    current = (await sign_in(pipeline, key)).cookies[COOKIE]
    assert signed_in(await page(pipeline, current))
    async with pipeline.runtime.db.unit_of_work() as s:
        await s.execute(update(PipelineApiKey).values(revoked_at=datetime.now(timezone.utc)))
    assert (await page(pipeline, current)).status_code == 401


async def test_a_session_is_good_on_every_process_of_the_store(pipeline, broker, tmp_path):  # noqa: F811
    """Sessions live in the store: another pipeline process (no shared secret) accepts them."""
    session = (await sign_in(pipeline, key_of(pipeline))).cookies[COOKIE]
    url = pipeline.runtime.settings.pipeline_database_url
    other = create_app(make_settings(broker.bootstrap, tmp_path / "other", service="pipeline",
                                     pipeline_database_url=url))
    async with serve_app(other) as second:
        assert signed_in(await page(second, session))
        out = await second.post("/dashboard/sign-out", headers=SIGNED_OUT | {"Cookie": f"{COOKIE}={session}"})
        assert out.status_code == 303
    assert (await page(pipeline, session)).status_code == 401


# ---- 6: the cookie is Secure unless a development setting says otherwise --------------------


def cookie_flags(answer) -> set[str]:  # noqa: ANN001
    return {part.strip().split("=")[0].lower() for part in answer.headers["set-cookie"].split(";")[1:]}


async def test_the_session_cookie_is_secure_even_behind_a_tls_proxy(pipeline, broker, database_factory, tmp_path):  # noqa: F811
    signed = await sign_in(pipeline, key_of(pipeline))  # plain http, as a TLS-terminating proxy forwards it
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= cookie_flags(signed)
    assert "path=/dashboard" in signed.headers["set-cookie"].lower()
    cookie = {"Cookie": f"{COOKIE}={signed.cookies[COOKIE]}"}
    out = await pipeline.post("/dashboard/sign-out", headers=SIGNED_OUT | cookie)
    assert "secure" in cookie_flags(out)

    url = await database_factory("pipeline")
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="pipeline", pipeline_database_url=url,
                                   dashboard_secure_cookie=False))
    async with serve_app(app) as dev:
        key = await add_key(app.state.runtime.db, "dev", "pipeline")
        plain = await sign_in(dev, key)
        assert plain.status_code == 303 and "secure" not in cookie_flags(plain)
        tls = await dev.post("https://testserver/dashboard/sign-in", data={"api_key": key},
                             headers={"Origin": "https://testserver"})
        assert tls.status_code == 303 and "secure" in cookie_flags(tls)  # https is always Secure


# ---- 7: login CSRF: cross-site sign-in and sign-out are refused -------------------------------

CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "http://testserver:8080"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
]
SAME_ORIGIN = [
    {},  # no Origin: not a browser (curl, scripts), or a browser older than Origin on POST
    {"Origin": "http://testserver"},
    {"Origin": "HTTP://TestServer"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
    {"Sec-Fetch-Site": "none"},  # typed or bookmarked by the user
]


async def test_cross_site_sign_in_and_sign_out_are_refused(pipeline):  # noqa: F811
    key = key_of(pipeline)
    for headers in CROSS_SITE:
        refused = await sign_in(pipeline, key, **headers)
        assert refused.status_code == 403, headers
        assert "set-cookie" not in refused.headers and "cross-site" in refused.text.lower()
    assert await sessions(pipeline) == 0
    for headers in SAME_ORIGIN:
        signed = await sign_in(pipeline, key, **headers)
        assert signed.status_code == 303 and COOKIE in signed.cookies, headers

    session = signed.cookies[COOKIE]
    for headers in CROSS_SITE:
        refused = await pipeline.post("/dashboard/sign-out",
                                      headers=SIGNED_OUT | {"Cookie": f"{COOKIE}={session}"} | headers)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers, headers
    assert signed_in(await page(pipeline, session))
    out = await pipeline.post("/dashboard/sign-out", headers=SIGNED_OUT | {
        "Cookie": f"{COOKIE}={session}", "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert out.status_code == 303
    assert (await page(pipeline, session)).status_code == 401
