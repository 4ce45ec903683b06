"""One delivery attempt over HTTP: the target checked again after DNS resolution and
connected to by the address checked (no second lookup an attacker's DNS could answer
differently), the CloudEvent sent as it was published, signed; redirects are not followed,
the answer is read no further than 64 KiB, and no answer within the timeout is a failure."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass

import httpx

from shared.events import CONTENT_TYPE
from shared.signatures import SIGNATURE_HEADER, sign
from shared.webhooks import Target, TargetRefused, parse_target, resolve

MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "Leadstream-Webhooks/1.0"
DNS_CACHE_S = 5.0


@dataclass(frozen=True)
class Attempt:
    """What one attempt gave: ``ok`` for a 2xx; else the status (``None``: no answer) and why."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: str | None = None


class Sender:
    """Sends to one subscription's URL (one per subscription: a slow receiver's connections
    never hold another's)."""

    def __init__(self, url: str, *, timeout_s: float, allow_http: bool, allow_private: bool,
                 max_connections: int) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.allow_http, self.allow_private = allow_http, allow_private
        self.client = httpx.AsyncClient(
            follow_redirects=False, timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": USER_AGENT},
        )
        self._resolved: tuple[float, Target, list[str]] | None = None

    async def close(self) -> None:
        await self.client.aclose()

    async def _addresses(self) -> tuple[Target, list[str]]:
        now = time.monotonic()
        if self._resolved is not None and now - self._resolved[0] < DNS_CACHE_S:
            return self._resolved[1], self._resolved[2]
        target = parse_target(self.url, allow_http=self.allow_http)
        addresses = await resolve(target, allow_private=self.allow_private)
        self._resolved = (now, target, addresses)
        return target, addresses

    async def send(self, payload: bytes, secret: str, *, delivery_id: int, attempt: int,
                   event_id: str) -> Attempt:
        try:
            target, addresses = await self._addresses()
        except TargetRefused as exc:
            return Attempt(False, None, f"target refused: {exc}")
        request_url = httpx.URL(target.url)
        original_host = request_url.host
        address = addresses[0]
        host_header = request_url.netloc.decode("ascii")
        pinned = request_url.copy_with(host=address) if address != original_host else request_url
        headers = {
            "Host": host_header,
            "Content-Type": CONTENT_TYPE,
            SIGNATURE_HEADER: sign(secret, payload, int(time.time())),
            "Leadstream-Delivery": str(delivery_id),
            "Leadstream-Attempt": str(attempt),
            "Leadstream-Event-Id": event_id,
        }
        extensions = {"sni_hostname": original_host} if target.scheme == "https" and not _is_ip(original_host) else {}
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream("POST", pinned, content=payload, headers=headers,
                                              extensions=extensions) as answer:
                    body = await _read_some(answer)
        except TimeoutError:
            return Attempt(False, None, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {str(exc)[:300]}" if str(exc) else type(exc).__name__)
        status = answer.status_code
        if 200 <= status < 300:
            return Attempt(True, status)
        if 300 <= status < 400:
            error = f"HTTP {status}: redirect to {answer.headers.get('location', '?')[:300]} not followed"
        else:
            snippet = body[:300].decode("utf-8", "replace").strip()
            error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        return Attempt(False, status, error, answer.headers.get("retry-after"))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def _read_some(answer: httpx.Response) -> bytes:
    """At most ``MAX_ANSWER_BYTES`` of the answer; the rest is never read (the connection
    closes with the stream)."""
    body = bytearray()
    async for chunk in answer.aiter_raw():
        body += chunk
        if len(body) >= MAX_ANSWER_BYTES:
            break
    return bytes(body[:MAX_ANSWER_BYTES])
