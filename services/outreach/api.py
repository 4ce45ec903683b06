"""Outreach routes: parse, call the service, shape the answer. No logic."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.outreach import repository, service
from services.outreach.external_keys import api_key_of, webhook_key_of
from services.outreach.schemas import (
    Accepted,
    BatchAnswer,
    ProspectIn,
    TouchAnswer,
    TouchBatchIn,
    TouchIn,
    WebhookAnswer,
    WebhookEventIn,
)
from services.outreach.signatures import SIGNATURE_HEADER, TOLERANCE_S, SignatureError, verify
from shared.auth import Principal
from shared.errors import PROBLEM_JSON, ProblemError
from shared.idempotency import write_and_wake
from shared.runtime import Runtime, runtime_of
from shared.web import json_body, json_body_openapi, require_json

PROBLEM = {"content": {PROBLEM_JSON: {}}}
ERRORS = {
    401: {"description": "Missing, wrong or revoked API key", **PROBLEM},
    403: {"description": "The API key lacks the `outreach` scope", **PROBLEM},
    413: {"description": "Body over 64 KiB", **PROBLEM},
    415: {"description": "Wrong content type", **PROBLEM},
    422: {"description": "Invalid fields, each named", **PROBLEM},
    429: {"description": "Rate limited per API key; see Retry-After", **PROBLEM},
}

SUPPRESSED = {409: {"description": "The address was erased at the person's request (problem type `suppressed`)",
                    **PROBLEM}}

_bearer = HTTPBearer(auto_error=False, description="An API key with the `outreach` scope "
                     "(`leadstream api-keys create --name NAME --scope outreach`).")


async def _caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return await runtime_of(request).auth.authenticate(request, "outreach")


Caller = Annotated[Principal, Depends(_caller)]

# the key is checked before the content type, so an unauthenticated caller learns nothing
router = APIRouter(prefix="/v1", tags=["outreach"], dependencies=[Depends(_caller)])
webhooks = APIRouter(prefix="/v1", tags=["webhooks"])

T = TypeVar("T")


async def _in_transaction(
    runtime, use_case: Callable[..., Awaitable[T]], *, retry: bool = True, external_key: str | None = None,  # noqa: ANN001
    email: str | None = None,
) -> T:
    """Run a use case in a unit of work; wake the relay after the commit. ``external_key``
    and ``email`` join the batch's one lookup of stored external keys and of suppressed
    subjects (instead of queries of their own)."""
    subject = service.subject_of(runtime.privacy, email) if email else None
    hint = (external_key, (subject,) if subject else ())
    # group commit: concurrent requests share a transaction, each answered after it commits. A
    # duplicate key: a request with the same external id from the same source committed first;
    # looking again finds it, and the repeat is answered as a duplicate.
    return await write_and_wake(runtime.relay, lambda: runtime.writer.submit(use_case, hint=hint),
                                retries=2 if retry else 0)


@router.post(
    "/prospects",
    status_code=202,
    response_model=Accepted,
    summary="Add a researched prospect",
    description="Answers `202` once the prospect is durably stored; it is published as "
    "`io.leadstream.prospect.added.v1` on `outreach.touches`, keyed by the normalised email.",
    responses=ERRORS | SUPPRESSED,
    openapi_extra=json_body_openapi(ProspectIn),
)
async def post_prospect(request: Request, caller: Caller) -> Accepted:
    prospect = await json_body(request, ProspectIn)
    runtime = runtime_of(request)
    result = await _in_transaction(runtime, lambda s: service.add_prospect(
        s, prospect, api_key_id=caller.key_id, traceparent=request.headers.get("traceparent"),
        privacy=runtime.privacy), retry=False, email=prospect.email)
    return Accepted(event_id=result.event_id)


@router.post(
    "/touches",
    status_code=202,
    response_model=TouchAnswer,
    summary="Record one touch of a sequence",
    description="Answers `202 accepted` once the touch is durably stored; it is published as "
    "`io.leadstream.touch.recorded.v1` on `outreach.touches`, keyed by the normalised email. "
    "A repeated `external_id` is a no-op answered `200` with `status: duplicate` and the first touch's `event_id`. "
    "External ids are unique per API key name (a key rotated under the same name keeps them): another key's "
    "`\"123\"` is another touch.",
    responses=ERRORS | SUPPRESSED | {
        200: {"description": "Duplicate `external_id` (of this key's name): nothing recorded", "model": TouchAnswer}},
    openapi_extra=json_body_openapi(TouchIn),
)
async def post_touch(request: Request, response: Response, caller: Caller) -> TouchAnswer:
    touch = await json_body(request, TouchIn)
    runtime = runtime_of(request)
    external_key = api_key_of(caller.name, touch.external_id)
    result = await _in_transaction(runtime, lambda s: service.record_touch(
        s, touch, external_id=touch.external_id, external_key=external_key, api_key_id=caller.key_id,
        traceparent=request.headers.get("traceparent"), privacy=runtime.privacy),
        external_key=external_key, email=touch.email)
    if result.duplicate:
        response.status_code = 200
    return TouchAnswer(event_id=result.event_id, status=result.status)


@router.post(
    "/touches:batch",
    status_code=200,
    response_model=BatchAnswer,
    response_model_exclude_none=True,
    summary="Record up to 1,000 touches",
    description="`{\"touches\": [ … ]}` with 1 to 1,000 touches (body ≤ 1 MiB). The answer has one result per "
    "item, in order: `accepted` with its `event_id`, `duplicate` (an `external_id` already stored under this API "
    "key's name or repeated earlier in the batch) with the first `event_id`, or `rejected` with field errors "
    "relative to the item. "
    "Valid items are stored and published even when others are rejected; the whole batch is one transaction. "
    "A body that is not `{\"touches\": [ … ]}` is `422`.",
    responses=ERRORS | {413: {"description": "Body over 1 MiB", **PROBLEM}},
    openapi_extra=json_body_openapi(TouchBatchIn),
)
async def post_touch_batch(request: Request, caller: Caller) -> BatchAnswer:
    batch = await json_body(request, TouchBatchIn)
    runtime = runtime_of(request)
    results = await _in_transaction(runtime, lambda s: service.record_touches(
        s, batch.touches, key_name=caller.name, api_key_id=caller.key_id,
        traceparent=request.headers.get("traceparent"), privacy=runtime.privacy))
    return BatchAnswer.model_validate(
        {"results": [{"status": r.status, "event_id": r.event_id, "errors": r.errors} for r in results]}
    )


async def _signed_by_integration(integration: str, request: Request, runtime: Runtime) -> None:
    """The webhook's auth: 404 for an unknown integration, 415, then 401 unless the body is
    signed by one of its active secrets within the tolerance; then the per-integration limit."""
    async with runtime.db.reader() as session:
        secrets = await repository.active_webhook_secrets(session, integration, runtime.secrets)
    if not secrets:
        raise ProblemError(404, f"No integration {integration!r} has a webhook secret; "
                           "create one with 'leadstream webhooks create-secret'.")
    await require_json(request)
    try:
        verify(request.headers.get(SIGNATURE_HEADER), await request.body(), secrets, now=time.time())
    except SignatureError as exc:
        raise ProblemError(401, str(exc), type_="https://leadstream.dev/problems/webhook-signature") from None
    await runtime.webhook_limit.check(integration)


WEBHOOK_DESCRIPTION = f"""
A sales tool pushes its events here, one event per delivery. No API key: the request is
authenticated by its signature, made with the integration's secret
(`leadstream webhooks create-secret --integration NAME` prints it once).

**Signature.** Header `{SIGNATURE_HEADER}: t=<unix time>,v1=<hex>`, where `<hex>` is the
HMAC-SHA256, keyed by the whole secret string (`whsec_…`), of the timestamp, a dot and the
raw body bytes: `hmac_sha256(secret, f"{{t}}.{{body}}")`. Several `v1=` entries may be sent
(during a secret rotation). A missing or wrong signature, or a timestamp more than
{TOLERANCE_S} s from now, is `401`. An integration without a secret is `404`.

```python
import hashlib, hmac, json, time, httpx
body = json.dumps(event).encode()
t = int(time.time())
sig = hmac.new(secret.encode(), f"{{t}}.".encode() + body, hashlib.sha256).hexdigest()
httpx.post(url, content=body, headers={{"Content-Type": "application/json",
                                       "{SIGNATURE_HEADER}": f"t={{t}},v1={{sig}}"}})
```

**Payload.** `{{"id": <the tool's event id>, "type": "touch", "touch": {{…}}}}` where
`touch` has the fields of `POST /v1/touches` except `external_id`. The touch is recorded
once per integration and `id` (published with external id `<integration>:<id>`): a redelivery
or replay answers `200` with `status: duplicate` and publishes nothing. Another integration's
`id`, or an API caller's `external_id` that happens to read `<integration>:<id>`, is another
touch. Events of any other `type` are
acknowledged with `200 ignored` so the tool does not retry them.
"""


@webhooks.post(
    "/webhooks/{integration}",
    status_code=202,
    response_model=WebhookAnswer,
    response_model_exclude_none=True,
    summary="Receive a signed webhook from a sales tool",
    description=WEBHOOK_DESCRIPTION,
    dependencies=[Depends(_signed_by_integration)],
    responses={
        200: {
            "description": "Duplicate (same tool event id) or ignored type: nothing recorded",
            "model": WebhookAnswer,
        },
        401: {"description": "Missing or bad signature, or stale timestamp", **PROBLEM},
        404: {"description": "Unknown integration (no webhook secret)", **PROBLEM},
        413: {"description": "Body over 64 KiB", **PROBLEM},
        415: {"description": "Wrong content type", **PROBLEM},
        422: {"description": "Invalid fields, each named", **PROBLEM},
        429: {"description": "Rate limited per integration; see Retry-After", **PROBLEM},
    },
)
async def post_webhook(
    integration: str, event: WebhookEventIn, request: Request, response: Response, runtime: Runtime
) -> WebhookAnswer:
    result = await _in_transaction(runtime, lambda s: service.record_webhook_event(
        s, integration, event, traceparent=request.headers.get("traceparent"), privacy=runtime.privacy),
        external_key=webhook_key_of(integration, event.id),
        email=event.touch.email if event.touch is not None else None)
    if result.status != "accepted":
        response.status_code = 200
    return WebhookAnswer(id=event.id, event_id=result.event_id, status=result.status)
