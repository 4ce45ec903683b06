"""Problem details (RFC 9457) for every error a service answers, with field-level lists."""

from __future__ import annotations

from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

log = structlog.get_logger("errors")

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}


class FieldError(BaseModel):
    """One invalid input, named: ``{"field", "in", "message", "type"}``."""

    field: str = Field(description="The parameter, header or (dotted) body field")
    in_: Literal["body", "query", "path", "header", "cookie"] = Field(alias="in")
    message: str
    type: str


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details, ``application/problem+json``); some carry
    more members (``errors``, ``required_scope``, ``limit``, ``checks``, ``current_stage`` …)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem, or about:blank")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do, for people")
    instance: str | None = Field(None, description="The request path")
    errors: list[FieldError] | None = Field(None, description="Each invalid input (422)")


class ProblemError(Exception):
    """Raise anywhere below a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title or _TITLES.get(status, "Error")
        self.type = type_ or "about:blank"
        self.errors, self.headers, self.extra = errors, headers or {}, extra


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_, "title": title or _TITLES.get(status, "Error"), "status": status, "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as ``{"field", "in", "message", "type"}`` for people and programs."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else "body"
        rest = loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc
        kind = err.get("type", "value_error")
        message = err.get("msg", "invalid value")
        if where != "body" and kind == "extra_forbidden":
            field, message = rest[0] if rest else where, f"unknown {where} parameter"
        elif where != "body":
            # query, path and header parameters are flat: name the parameter, not its n-th value
            field = rest[0] if rest else where
        elif kind == "json_invalid":
            field, message = "body", f"malformed JSON: {err.get('ctx', {}).get('error', message)}"
        elif kind == "extra_forbidden":
            field, message = (
                ".".join(rest),
                "unknown field (put custom data in 'fields')" if len(rest) == 1 else "unknown field",
            )
        else:
            field = ".".join(rest) or where
        out.append({"field": field, "in": where, "message": message, "type": kind})
    return out


def validation_problem(errors: list[dict[str, Any]], detail: str = "The request has invalid fields.") -> JSONResponse:
    return problem_response(422, detail, errors=errors, type_="https://leadstream.dev/problems/validation")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json; never let bad input crash a request with a 500."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, title=exc.title, type_=exc.type, instance=request.url.path,
            errors=exc.errors, headers=exc.headers, **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(field_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up before its body arrived: nobody reads an answer, and it is not an
        # error of ours (logged as one, anonymous clients could flood the error log).
        log.debug("client disconnected", path=request.url.path, method=request.method)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return problem_response(500, "An unexpected error occurred; it has been logged.", instance=request.url.path)
