"""What every service's FastAPI app shares: errors, limits, hosts, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar, Union

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import PROBLEM_JSON, Problem, ProblemError, install_error_handlers, problem_response
from shared import tracing
from shared.observability import MetricsMiddleware, metrics_endpoint, tune_gc

ReadyCheck = Callable[[], Awaitable[None]]
M = TypeVar("M", bound=BaseModel)

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
        declared = encoding = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                encoding = value
        if declared is not None and encoding is None:
            try:
                length = int(declared)
            except ValueError:
                length = None
            if length is not None:
                if length > limit:
                    await self._reject(scope, receive, send, limit)
                    return
                # The server frames the body by its declared length: it cannot grow past it.
                await self.app(scope, receive, send)
                return
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


def ip_address_or_none(host: str | None) -> str | None:
    """``host`` if it is an IP address (in its canonical text), else ``None``: what a proxy
    forwarded is text from the client, not to be stored or keyed on as an address."""
    if not host:
        return None
    try:
        text = str(ipaddress.ip_address(host))
    except ValueError:
        return None
    return text if len(text) <= 45 else None  # INET6_ADDRSTRLEN: an IPv6 zone id is free text


# Operations endpoints answer whatever the Host: probes and scrapers name a pod by its address.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _host_name(value: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), lower-cased;
    ``None`` when it is not one."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    return name.lower() or None


def trusted_hosts(setting: str) -> list[str]:
    """``LEADSTREAM_TRUSTED_HOSTS`` as a list: comma-separated, brackets of IPv6 literals dropped."""
    return [h.strip().strip("[]").lower() for h in setting.split(",") if h.strip()]


class TrustedHostMiddleware:
    """``400`` (problem+json) for a ``Host`` header naming none of ``hosts`` (exact names, or
    ``*.example.com`` for its subdomains; ``*`` trusts any). Starlette's middleware of this name
    answers text/plain and reads the host of ``[::1]:8000`` as ``[``; the matching is the same."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str], exempt: frozenset[str] = OPERATIONS_PATHS) -> None:
        self.app, self.exempt = app, exempt
        self.any = not hosts or "*" in hosts
        self.names = frozenset(h for h in hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
        host = _host_name(header)
        if host is not None and (host in self.names or (self.suffixes and host.endswith(self.suffixes))):
            await self.app(scope, receive, send)
            return
        response = problem_response(400, "The Host header names no host this service answers for "
                                    "(LEADSTREAM_TRUSTED_HOSTS).")
        await response(scope, receive, send)


async def require_json(request: Request) -> None:
    """Dependency: ``415`` unless the body is declared as JSON (async: no threadpool hop)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ProblemError(415, f"Send the body as application/json, not {ctype or 'an undeclared type'}.")


def _takes_many(annotation: Any) -> bool:
    """Whether a query parameter of this type takes several values (a list, maybe optional)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _takes_many(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_takes_many(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, tuple, set, frozenset)


def _declared_query(dependant: Any) -> dict[str, bool]:
    """A route's query parameters (a parameter model's fields too), each with whether it
    takes several values."""
    out: dict[str, bool] = {}
    for param in dependant.query_params:
        annotation = param.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, field in annotation.model_fields.items():
                out[field.alias or name] = _takes_many(field.annotation)
        else:
            out[param.alias] = _takes_many(annotation)
    for sub in dependant.dependencies:
        out |= _declared_query(sub)
    return out


_QUERY_SHAPES: dict[int, dict[str, bool]] = {}  # by id(route): routes are unhashable and live as long as their app


async def query_as_declared(request: Request) -> None:
    """Dependency: ``422`` naming each query parameter the route does not take, or that
    takes one value and was given several (``?attribution=first&attribution=last`` would
    otherwise be answered under one of them, silently)."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    declared = _QUERY_SHAPES.get(id(route))
    if declared is None:
        declared = _QUERY_SHAPES[id(route)] = _declared_query(route.dependant)
    counts: dict[str, int] = {}
    for name, _ in request.query_params.multi_items():
        counts[name] = counts.get(name, 0) + 1
    errors = []
    for name, count in counts.items():
        many = declared.get(name)
        if many is None:
            errors.append({"type": "extra_forbidden", "loc": ("query", name), "msg": "Extra inputs are not permitted",
                           "input": request.query_params.get(name)})
        elif count > 1 and not many:
            errors.append({"type": "repeated", "loc": ("query", name), "input": request.query_params.getlist(name),
                           "msg": f"takes one value, given {count} times"})
    if errors:
        raise RequestValidationError(errors)


def api_guards(authenticate: Callable[..., Any]) -> list[Any]:
    """A router's dependencies: the caller's key (``401``/``403``), then its query
    parameters as declared (``422``)."""
    return [Depends(authenticate), Depends(query_as_declared)]


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body with ``json_body``: the same required
    JSON request body FastAPI documents for a ``model`` parameter (list the model in
    ``create_service_app(body_models=...)`` so its schema is in the components)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


async def json_body(request: Request, model: type[M]) -> M:
    """``415`` unless JSON, then ``parse_json_body``."""
    await require_json(request)
    return await parse_json_body(request, model)


async def parse_json_body(request: Request, model: type[M], context: dict[str, Any] | None = None) -> M:
    """The body parsed and validated by pydantic in one pass (``model_validate_json``);
    errors are raised as FastAPI's, so they get the same 422. The caller has checked the
    content type (``require_json``).

    For the ingest hot paths: FastAPI's own body handling decodes with the stdlib, validates
    the Python objects again and solves a dependency per check (measured in capture: about
    a quarter of the CPU it spends on a lead outside storage)."""
    body = await request.body()
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


def header_value(request: Request, name: str, max_length: int) -> str | None:
    """A header read in the route (see ``json_body``), with FastAPI's 422 when too long."""
    value = request.headers.get(name)
    if value is not None and len(value) > max_length:
        raise RequestValidationError([{
            "type": "string_too_long", "loc": ("header", name), "input": value, "ctx": {"max_length": max_length},
            "msg": f"String should have at most {max_length} characters",
        }])
    return value


def header_openapi(name: str, max_length: int) -> dict[str, Any]:
    """``openapi_extra`` documenting an optional header read with ``header_value``."""
    schema = {"anyOf": [{"type": "string", "maxLength": max_length}, {"type": "null"}], "title": name}
    return {"parameters": [{"name": name.lower(), "in": "header", "required": False, "schema": schema}]}


def _shape_openapi(app: FastAPI, body_models: Sequence[type[BaseModel]]) -> None:
    """The app's OpenAPI as it answers: the schemas of ``body_models`` (read by ``json_body``,
    and the models they nest) in the components, and every error response documented as
    ``application/problem+json`` with the ``Problem`` schema (FastAPI documents its own ``422``
    as ``application/json`` ``HTTPValidationError``, which no route here ever answers)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            models = [Problem, *body_models]
            _, defs = models_json_schema([(m, "validation") for m in models],
                                         ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for status, response in operation.get("responses", {}).items():
                        if status[0] in "45":
                            response["content"] = problem
                            if response.get("description") == "Validation Error":
                                response["description"] = "Invalid parameters, each named in `errors`"
            text = orjson.dumps(schema).decode()
            for unused in ("HTTPValidationError", "ValidationError"):
                if f'"#/components/schemas/{unused}"' not in text:
                    components.pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str] = Field(description="Each dependency: `ok` or `unavailable: <error>`")


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
    body_models: Sequence[type[BaseModel]] = (),
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
        # no 307 to the slash-less path: it would be built from the Host header (issue 26)
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    check_names = ", ".join(f"`{name}`" for name in ready_checks())

    @app.get("/readyz", tags=["operations"], summary="Readiness: database and broker reachable",
             response_model=Readiness,
             description="`503` when a required dependency is unreachable. `require=database` limits what "
             "must answer (an ingest service still stores leads while Kafka is away, so a load balancer "
             f"should keep sending it traffic); every check is reported either way. Checks: {check_names} "
             "(comma-separated); another name is `422`.",
             responses={503: {"description": "A dependency is unreachable; `checks` says which"}})
    async def readyz(require: Annotated[str | None, Query(max_length=200)] = None):
        checks = ready_checks()
        names = {name.strip() for name in (require or "").split(",") if name.strip()}
        unknown = sorted(names - set(checks))
        if unknown:
            raise RequestValidationError([{
                "type": "enum", "loc": ("query", "require"), "input": require,
                "msg": f"no check named {', '.join(map(repr, unknown))}; one or more of {', '.join(checks)}",
            }])
        results = await asyncio.gather(*(asyncio.wait_for(c(), 3.0) for c in checks.values()), return_exceptions=True)
        status = {name: ("ok" if not isinstance(r, BaseException) else f"unavailable: {type(r).__name__}")
                  for name, r in zip(checks, results)}
        if all(status[name] == "ok" for name in names or status):
            return {"status": "ready", "checks": status}
        return problem_response(503, "A dependency is unreachable.", checks=status)

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, per_path=body_limits or {})
    hosts = getattr(getattr(runtime, "settings", None), "trusted_hosts", "*")
    app.add_middleware(TrustedHostMiddleware, hosts=trusted_hosts(hosts))
    app.add_middleware(MetricsMiddleware, service=service)
    _shape_openapi(app, body_models)
    tracing.instrument_app(app)
    return app
