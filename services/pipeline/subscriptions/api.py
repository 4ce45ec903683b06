"""Subscriptions routes (scope ``subscriptions``): parse, call the service, shape the answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from services.pipeline.schemas import Page
from services.pipeline.subscriptions import service
from services.pipeline.subscriptions.schemas import (
    DeliveryFilters,
    DeliveryOut,
    DeliveryPage,
    Redriven,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
    SubscriptionPatch,
)
from services.pipeline.auth import PROBLEM, auth_errors, caller_with
from shared.runtime import Runtime
from shared.web import api_guards, require_json

SCOPE = "subscriptions"
authenticate, Caller = caller_with(SCOPE)
AUTH_ERRORS = auth_errors(SCOPE)
NOT_FOUND = {404: {"description": "Unknown subscription", **PROBLEM}}
BODY_ERRORS = {
    415: {"description": "Body not JSON", **PROBLEM},
    422: {"description": "Invalid, unknown or missing fields, each named: a malformed or non-https URL, one "
          "that resolves to a loopback, private or link-local address, an unknown event type", **PROBLEM},
}
QUERY_ERRORS = {422: {"description": "Invalid query parameters, each named", **PROBLEM}}

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"], dependencies=api_guards(authenticate),
                   responses=AUTH_ERRORS)

DELIVERY = """Each matching event is `POST`ed to the URL as the CloudEvent JSON itself
(`Content-Type: application/cloudevents+json`), one event per request, in order per contact
(key), signed: `Leadstream-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body" keyed by the
secret>`. A `2xx` within 10 s is delivered; anything else (a redirect too) is retried with
exponential backoff and jitter for 24 hours, honouring `Retry-After`; then the delivery is dead."""


@router.post("", status_code=201, response_model=SubscriptionCreated, summary="Subscribe a URL to events",
             description="Answers the subscription with its signing `secret`, shown this once.\n\n" + DELIVERY,
             dependencies=[Depends(require_json)], responses=BODY_ERRORS)
async def create_subscription(body: SubscriptionIn, caller: Caller, runtime: Runtime) -> JSONResponse:
    await service.checked_url(body.url, runtime.settings)
    async with runtime.db.unit_of_work() as session:
        created = await service.create(session, body, caller, runtime.secrets)
    return JSONResponse(created.model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/v1/subscriptions/{created.id}"})


@router.get("", response_model=SubscriptionPage, summary="List subscriptions", responses=QUERY_ERRORS,
            description="Newest first, `{\"items\", \"next_cursor\"}` as every list (never the secrets).")
async def list_subscriptions(params: Annotated[Page, Query()], runtime: Runtime) -> SubscriptionPage:
    async with runtime.db.reader() as session:
        return await service.list_subscriptions(session, params)


@router.get("/{subscription_id}", response_model=SubscriptionOut, summary="One subscription", responses=NOT_FOUND)
async def get_subscription(subscription_id: str, runtime: Runtime) -> SubscriptionOut:
    async with runtime.db.reader() as session:
        return service.subscription_view(await service.get(session, subscription_id))


@router.patch("/{subscription_id}", response_model=SubscriptionOut, summary="Pause, resume or change a subscription",
              description="Any of `url`, `event_types`, `description`, `status` (`paused` or `active`); a field "
              "left out is kept, `description: null` clears it, `null` for another field is `422` naming it. While "
              "paused, new events are not queued for it and pending deliveries wait; they resume with it.",
              dependencies=[Depends(require_json)], responses=NOT_FOUND | BODY_ERRORS)
async def patch_subscription(subscription_id: str, body: SubscriptionPatch, runtime: Runtime) -> SubscriptionOut:
    if body.url is not None:
        await service.checked_url(body.url, runtime.settings)
    async with runtime.db.unit_of_work() as session:
        return await service.update(session, subscription_id, body)


@router.delete("/{subscription_id}", status_code=204, summary="Delete a subscription and its deliveries",
               responses=NOT_FOUND)
async def delete_subscription(subscription_id: str, runtime: Runtime) -> Response:
    async with runtime.db.unit_of_work() as session:
        await service.delete(session, subscription_id)
    return Response(status_code=204)


@router.get("/{subscription_id}/deliveries", response_model=DeliveryPage, summary="Deliveries of a subscription",
            description="Newest first: status (`pending`, `delivered`, `dead`), attempts, the last answer's "
            "status and error, when the next attempt is due.", responses=NOT_FOUND | QUERY_ERRORS)
async def list_deliveries(subscription_id: str, params: Annotated[DeliveryFilters, Query()],
                          runtime: Runtime) -> DeliveryPage:
    async with runtime.db.reader() as session:
        return await service.list_deliveries(session, subscription_id, params)


@router.post("/{subscription_id}/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryOut,
             summary="Send a dead (or delivered) delivery again",
             description="The delivery is pending again, due now, with a new 24-hour retry window.",
             responses={404: {"description": "Unknown subscription or delivery", **PROBLEM},
                        409: {"description": "The delivery is still pending", **PROBLEM}} | QUERY_ERRORS)
async def retry_delivery(subscription_id: str, delivery_id: int, runtime: Runtime) -> JSONResponse:
    async with runtime.db.unit_of_work() as session:
        answer = await service.retry(session, subscription_id, delivery_id, runtime.settings)
    return JSONResponse(answer.model_dump(mode="json"), status_code=202)


@router.post("/{subscription_id}/redrive", status_code=202, response_model=Redriven,
             summary="Send every dead delivery again", responses=NOT_FOUND)
async def redrive(subscription_id: str, runtime: Runtime) -> JSONResponse:
    async with runtime.db.unit_of_work() as session:
        requeued = await service.redrive(session, subscription_id, runtime.settings)
    return JSONResponse({"requeued": requeued}, status_code=202)
