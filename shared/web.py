"""What every service's FastAPI app shares: errors, limits, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ProblemError, install_error_handlers, problem_response
from shared.observability import MetricsMiddleware, metrics_endpoint, tune_gc

ReadyCheck = Callable[[], Awaitable[None]]

DEFAULT_BODY_LIMIT = 64 * 1024


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """``413`` for a body over the limit, whether it declares its length or streams it."""

    def __init__(self, app: ASGIApp, default: int = DEFAULT_BODY_LIMIT, per_path: dict[str, int] | None = None) -> None:
        self.app, self.default, self.per_path = app, default, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        await self._reject(scope, receive, send, limit)
                        return
                except ValueError:
                    pass
        received = 0
        started = False

        async def _receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, _receive, _send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(413, f"The request body is larger than {limit} bytes.", limit=limit)
        await response(scope, receive, send)


async def require_json(request: Request) -> None:
    """Dependency: ``415`` unless the body is declared as JSON (async: no threadpool hop)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ProblemError(415, f"Send the body as application/json, not {ctype or 'an undeclared type'}.")


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def create_service_app(
    *,
    service: str,
    title: str,
    description: str,
    routers: Sequence[APIRouter],
    runtime: Any,
    ready_checks: Callable[[], dict[str, ReadyCheck]],
    body_limits: dict[str, int] | None = None,
    version: str = "1.0.0",
) -> FastAPI:
    """Build a service app; ``runtime`` has async ``start()``/``stop()`` run by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        if getattr(getattr(runtime, "settings", None), "gc_freeze", False):
            tune_gc()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=title, description=description, version=version, lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["operations"], summary="Readiness: database and broker reachable",
             description="`503` when a required dependency is unreachable. `require=database` limits what "
             "must answer (an ingest service still stores leads while Kafka is away, so a load balancer "
             "should keep sending it traffic); every check is reported either way.",
             responses={503: {"description": "A dependency is unreachable (problem+json)"}})
    async def readyz(require: str | None = None):
        checks = ready_checks()
        results = await asyncio.gather(*(asyncio.wait_for(c(), 3.0) for c in checks.values()), return_exceptions=True)
        status = {name: ("ok" if not isinstance(r, BaseException) else f"unavailable: {type(r).__name__}")
                  for name, r in zip(checks, results)}
        required = set(require.split(",")) & set(status) if require else set(status)
        if all(status[name] == "ok" for name in required):
            return {"status": "ready", "checks": status}
        return problem_response(503, "A dependency is unreachable.", checks=status)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, per_path=body_limits or {})
    app.add_middleware(MetricsMiddleware, service=service)
    return app
