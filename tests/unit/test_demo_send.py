"""The demo's requests (``leadstream.demo.send``): a connection that breaks with the request
sent is tried again, as a rate limit is; errors that say the request itself is wrong are not.
The server is a transport that answers from a script (pure client logic, no service)."""

from __future__ import annotations

import httpx
import pytest

from leadstream import demo

URL = "http://capture.test/v1/leads"


def scripted(*steps: object) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose n-th request gets ``steps[n]``: an exception class to raise, or a status."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps[min(len(seen), len(steps)) - 1]
        if isinstance(step, type):
            raise step("the connection broke", request=request)
        return httpx.Response(step, headers={"Retry-After": "0"}, json={})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer)), seen


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    async def instant(_seconds: float) -> None:
        return None

    monkeypatch.setattr(demo.asyncio, "sleep", instant)


@pytest.mark.parametrize("broken", [httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError])
async def test_a_broken_connection_is_tried_again_with_the_same_request(broken):
    client, seen = scripted(broken, 202)
    async with client:
        answer = await demo.send(client, URL, {"email": "a@b.io"}, {"Idempotency-Key": "demo-1"})
    assert answer.status_code == 202 and len(seen) == 2
    assert {r.headers["Idempotency-Key"] for r in seen} == {"demo-1"} and seen[0].content == seen[1].content


async def test_a_connection_that_keeps_breaking_raises_its_error(monkeypatch):
    monkeypatch.setattr(demo, "RETRIES", 3)
    client, seen = scripted(httpx.ReadError)
    async with client:
        with pytest.raises(httpx.ReadError):
            await demo.send(client, URL, {})
    assert len(seen) == 3


async def test_rate_limits_wait_and_a_repeat_409_is_an_answer_but_errors_raise():
    client, seen = scripted(429, 429, 409)
    async with client:
        assert (await demo.send(client, URL, {})).status_code == 409
    assert len(seen) == 3
    client, _ = scripted(422)
    async with client:
        with pytest.raises(RuntimeError, match="answered 422"):
            await demo.send(client, URL, {})


async def test_a_refused_connection_is_not_retried_without_another_address():
    client, seen = scripted(httpx.ConnectError)
    async with client:
        with pytest.raises(httpx.ConnectError):
            await demo.send(client, URL, {})
    assert len(seen) == 1
