"""A local webhook receiver for tests and the bench: a small HTTP/1.1 server (keep-alive) on
a free port whose behaviour a test sets: answer 2xx, fail, hang, redirect, flood."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.broker import free_port


@dataclass
class Received:
    at: float  # time.time() when the body was read
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False  # never answer
    flood: int = 0  # bytes of body to stream after the headers (Content-Length says so)


Behaviour = Callable[[Received], Answer]


class Receiver:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.port = free_port()
        self.behaviour: Behaviour = behaviour or (lambda _: Answer())
        self.received: list[Received] = []
        self.hanging = 0  # requests held open right now
        self.flood_sent = 0
        self._server: asyncio.base_events.Server | None = None
        self._release = asyncio.Event()
        self._open: set[asyncio.StreamWriter] = set()  # connections kept alive by clients

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=512)
        return self

    async def __aexit__(self, *_) -> None:  # noqa: ANN002
        self._release.set()
        self._server.close()
        for writer in list(self._open):  # their handlers read the end of the stream and return,
            writer.close()               # instead of being cancelled when the loop stops
        try:
            await asyncio.wait_for(self._server.wait_closed(), 2)
        except TimeoutError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(time.time(), path, headers, body)
                self.received.append(request)
                answer = self.behaviour(request)
                if answer.hang:
                    self.hanging += 1
                    try:
                        await self._release.wait()
                    finally:
                        self.hanging -= 1
                    return
                length = answer.flood or len(answer.body)
                head = [f"HTTP/1.1 {answer.status} X", f"Content-Length: {length}"]
                head += [f"{k}: {v}" for k, v in answer.headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
                if answer.flood:
                    chunk = b"x" * 65536
                    sent = 0
                    while sent < answer.flood:
                        writer.write(chunk)
                        await writer.drain()
                        sent += len(chunk)
                        self.flood_sent = sent
                    return
                writer.write(answer.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._open.discard(writer)
            writer.close()
