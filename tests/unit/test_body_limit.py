"""The body limit: declared lengths are checked before the app runs, streamed bodies as they arrive."""

from __future__ import annotations

import pytest

from shared.web import BodyLimitMiddleware


async def echo_length(scope, receive, send):  # noqa: ANN001, ANN201 - a tiny ASGI app
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def call(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int = 10) -> tuple[int, bytes]:
    app = BodyLimitMiddleware(echo_length, default=limit)
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():  # noqa: ANN202
        return pending.pop(0)

    async def send(message):  # noqa: ANN001, ANN202
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/leads", "headers": headers}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("chunks,status", [([b"12345"], 200), ([b"1234567890"], 200), ([b"12345678901"], 413)])
async def test_a_declared_length_is_checked_before_the_app_reads(chunks, status):
    length = str(sum(map(len, chunks))).encode()
    code, body = await call([(b"content-length", length)], chunks)
    assert code == status
    if status == 200:
        assert body == length


@pytest.mark.parametrize("chunks,status", [([b"12345", b"12345"], 200), ([b"123456", b"12345"], 413)])
async def test_a_streamed_body_is_counted_as_it_arrives(chunks, status):
    code, body = await call([(b"transfer-encoding", b"chunked")], chunks)
    assert code == status
    assert (b'"status":413' in body) == (status == 413)


async def test_a_declared_length_beside_chunked_encoding_is_not_trusted():
    code, _ = await call([(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], [b"123456", b"123456"])
    assert code == 413


async def test_reads_are_not_limited():
    app = BodyLimitMiddleware(echo_length, default=1)
    sent: list[dict] = []

    async def receive():  # noqa: ANN202
        return {"type": "http.request", "body": b"xx", "more_body": False}

    async def send(message):  # noqa: ANN001, ANN202
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    assert sent[0]["status"] == 200
