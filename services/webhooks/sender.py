"""One delivery attempt over HTTP: the target checked again after DNS resolution and
connected to at the address checked (no second lookup an attacker's DNS could answer
differently; TLS still verifies the certificate for the URL's host name), the CloudEvent
sent as it was published, signed; redirects are not followed, the answer is read no further
than 64 KiB, and no answer within the timeout is a failure.

HTTP/1.1 is spoken with h11 (the protocol machine httpx itself uses) over asyncio streams,
with a few kept-alive connections per subscription: measured in ``make bench``, httpx's
connection pool spent more CPU per request than the rest of a delivery (it polls every
pooled socket on each request), and more connections made it slower.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from shared.events import CONTENT_TYPE
from shared.signatures import SIGNATURE_HEADER, sign
from shared.webhooks import Target, TargetRefused, parse_target, resolve

MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "Leadstream-Webhooks/1.0"
DNS_CACHE_S = 5.0
_TLS = ssl.create_default_context()


@dataclass(frozen=True)
class Attempt:
    """What one attempt gave: ``ok`` for a 2xx; else the status (``None``: no answer) and why."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: str | None = None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A kept-alive connection the receiver had closed: nothing was answered on it."""


class Sender:
    """Sends to one subscription's URL (one per subscription: a slow receiver's connections
    never hold another's)."""

    def __init__(self, url: str, *, timeout_s: float, allow_http: bool, allow_private: bool,
                 max_connections: int) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.allow_http, self.allow_private = allow_http, allow_private
        self.max_idle = max_connections
        self._idle: list[_Connection] = []
        self._resolved: tuple[float, Target, list[str]] | None = None
        parts = urlsplit(url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _addresses(self) -> tuple[Target, list[str]]:
        now = time.monotonic()
        if self._resolved is not None and now - self._resolved[0] < DNS_CACHE_S:
            return self._resolved[1], self._resolved[2]
        target = parse_target(self.url, allow_http=self.allow_http)
        addresses = await resolve(target, allow_private=self.allow_private)
        if self._resolved is not None and self._resolved[2] != addresses:
            await self.close()  # kept-alive connections go to the addresses checked before
        self._resolved = (now, target, addresses)
        return target, addresses

    async def _connect(self, target: Target, address: str) -> _Connection:
        if target.scheme == "https":
            reader, writer = await asyncio.open_connection(
                address, target.port, ssl=_TLS, server_hostname=None if _is_ip(target.host) else target.host)
        else:
            reader, writer = await asyncio.open_connection(address, target.port)
        return _Connection(reader, writer)

    async def send(self, payload: bytes, secret: str, *, delivery_id: int, attempt: int,
                   event_id: str) -> Attempt:
        try:
            target, addresses = await self._addresses()
        except TargetRefused as exc:
            return Attempt(False, None, f"target refused: {exc}")
        host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        if ":" in target.host and target.port not in (80, 443):
            host = f"[{target.host}]:{target.port}"
        headers = [
            ("Host", host), ("User-Agent", USER_AGENT), ("Content-Type", CONTENT_TYPE),
            ("Content-Length", str(len(payload))),
            (SIGNATURE_HEADER, sign(secret, payload, int(time.time()))),
            ("Leadstream-Delivery", str(delivery_id)), ("Leadstream-Attempt", str(attempt)),
            ("Leadstream-Event-Id", event_id),
        ]
        try:
            async with asyncio.timeout(self.timeout_s):
                while self._idle:
                    connection = self._idle.pop()
                    try:
                        return await self._exchange(connection, headers, payload)
                    except _Stale:
                        connection.close()  # closed by the receiver while idle: try another
                connection = await self._connect(target, addresses[0])
                try:
                    return await self._exchange(connection, headers, payload)
                except _Stale:
                    connection.close()
                    return Attempt(False, None, "the connection closed without an answer")
        except TimeoutError:
            return Attempt(False, None, f"no answer within {self.timeout_s:g} s")
        except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {str(exc)[:300]}" if str(exc) else type(exc).__name__)

    async def _exchange(self, connection: _Connection, headers: list, payload: bytes) -> Attempt:
        keep = False
        try:
            conn = connection.h11
            data = conn.send(h11.Request(method="POST", target=self._path, headers=headers))
            data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
            connection.writer.write(data)
            await connection.writer.drain()
            status, retry_after, location, body, complete, answered = None, None, None, bytearray(), False, False
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await connection.reader.read(65536)
                    if not chunk and not answered:
                        raise _Stale
                    answered = True
                    conn.receive_data(chunk)
                    continue
                answered = True
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"retry-after":
                            retry_after = value.decode("latin-1")
                        elif name == b"location":
                            location = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) >= MAX_ANSWER_BYTES:
                        break  # read no further: the connection is closed below
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
            keep = complete and conn.our_state is h11.DONE and conn.their_state is h11.DONE
            if keep:
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            return Attempt(False, None, f"not an HTTP answer: {str(exc)[:200]}")
        finally:
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                connection.close()
        if status is not None and 200 <= status < 300:
            return Attempt(True, status)
        if status is not None and 300 <= status < 400:
            return Attempt(False, status, f"HTTP {status}: redirect to {(location or '?')[:300]} not followed",
                           retry_after)
        snippet = bytes(body[:300]).decode("utf-8", "replace").strip()
        return Attempt(False, status, f"HTTP {status}" + (f": {snippet}" if snippet else ""), retry_after)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
