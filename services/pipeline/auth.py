"""The pipeline service's API-key checks, one per scope its routers need."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from shared.auth import Principal
from shared.errors import PROBLEM_JSON
from shared.runtime import Runtime

PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}


def caller_with(scope: str) -> tuple[Any, Any]:
    """The dependency that admits a key with ``scope`` (401 without a key, 403 without the scope),
    and the ``Caller`` annotation that hands its principal to a route."""

    async def authenticate(request: Request, runtime: Runtime) -> Principal:
        return await runtime.auth.authenticate(request, scope)

    return authenticate, Annotated[Principal, Depends(authenticate)]


def auth_errors(scope: str) -> dict[int, dict[str, Any]]:
    """The answers every route of ``scope`` documents besides its own."""
    return {
        401: {"description": "Missing or wrong API key", **PROBLEM},
        403: {"description": f"The key lacks the `{scope}` scope", **PROBLEM},
        429: {"description": "Rate limited per API key; see Retry-After", **PROBLEM},
    }
