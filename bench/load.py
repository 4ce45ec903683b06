"""A small keep-alive HTTP/1.1 load generator on raw asyncio streams.

An async HTTP client library would be the bottleneck on 2 cores; this one spends
little CPU per request, so the server's throughput is what is measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def build_request(host: str, port: int, path: str, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    connections: int = 32,
    duration: float | None = 10.0,
    total: int | None = None,
    rate: float | None = None,
) -> LoadResult:
    """Send requests over ``connections`` keep-alive connections for ``duration`` s (or ``total``).

    With ``rate``, requests are paced to that many per second (open loop) and the latency is
    measured from the intended start, so queueing shows.
    """
    counter = 0
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + duration if duration else float("inf")

    def next_index() -> int | None:
        nonlocal counter
        if total is not None and counter >= total:
            return None
        if time.perf_counter() >= deadline:
            return None
        counter += 1
        return counter - 1

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (i := next_index()) is not None:
                intended = start + i / rate if rate else time.perf_counter()
                if rate:
                    delay = intended - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(make_request(i))
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - intended)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return LoadResult(sum(statuses.values()), elapsed, statuses, latencies)
