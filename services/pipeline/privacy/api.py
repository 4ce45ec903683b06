"""Privacy routes (scope ``privacy``): parse, call the service, shape the answer. No logic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from services.pipeline.auth import PROBLEM, auth_errors, caller_with
from services.pipeline.privacy import erasures, service
from services.pipeline.privacy.schemas import ErasureAccepted, ErasureIn, ErasureOut, PersonQuery, PrivacyExport
from shared.auth import Principal
from shared.idempotency import write_and_wake
from shared.runtime import Runtime
from shared.web import api_guards, require_json

SCOPE = "privacy"
authenticate, Caller = caller_with(SCOPE)
AUTH_ERRORS = auth_errors(SCOPE)
QUERY_ERRORS = {422: {"description": "Missing or malformed email (or an unknown parameter), each named",
                      **PROBLEM}}


def actor_of(caller: Principal) -> str:
    """Who asks, for the audit: the API key's id and name."""
    return f"key {caller.key_id} ({caller.name})"


router = APIRouter(prefix="/v1/privacy", tags=["privacy"], dependencies=api_guards(authenticate),
                   responses=AUTH_ERRORS)


@router.get("/exports", response_model=PrivacyExport, summary="Everything stored about a person (access request)",
            responses=QUERY_ERRORS | {404: {"description": "No contact with this email address", **PROBLEM}},
            description="One JSON document of everything the pipeline store holds about the person with this "
            "email address: the contact and its account, the timeline with each fact's payload, every score "
            "with its reasons, stage changes, opportunities, the consent ledger with the current consent per "
            "purpose, and the webhook deliveries that sent their data on. `leadstream privacy export EMAIL` "
            "prints the same document. Each answer (`200` or `404`) is audited (the key, the time, the store "
            "read, the outcome), never with the email.")
async def get_export(params: Annotated[PersonQuery, Query()], caller: Caller, runtime: Runtime) -> PrivacyExport:
    return await service.audited_export(runtime.db, params.email, actor_of(caller))


@router.post(
    "/erasures", status_code=202, response_model=ErasureAccepted, summary="Erase a person from every store",
    description="Asks capture, outreach and the pipeline store to erase everything personal they hold about the "
    "person of `email` (names, email, phone, title, LinkedIn URL, custom fields, page URLs, referrers, free text), "
    "keeping the non-personal facts (motion, channel, campaign, stages, scores, amounts, dates) under a "
    "pseudonymous id, so analytics are unchanged. Answers `202` with the erasure's id at once; follow it with "
    "`GET /v1/privacy/erasures/{id}`. The email travels and is stored only as a keyed hash. The same person "
    "asked again while an erasure is under way (or after it, with no new opt-in since) answers that erasure. "
    "An address never seen completes too, with nothing found.",
    dependencies=[Depends(require_json)],
    responses={415: {"description": "Body not JSON", **PROBLEM},
               422: {"description": "A malformed email, or unknown fields, each named", **PROBLEM}},
)
async def request_erasure(body: ErasureIn, caller: Caller, runtime: Runtime) -> JSONResponse:
    actor = actor_of(caller)

    async def write():  # noqa: ANN202
        async with runtime.db.unit_of_work() as session:
            return await erasures.request_erasure(session, runtime.privacy, body.email, actor)

    result = await write_and_wake(runtime.relay, write, published=lambda r: r.new)
    answer = ErasureAccepted(erasure_id=result.erasure_id, status=result.status)
    return JSONResponse(answer.model_dump(), status_code=202,
                        headers={"Location": f"/v1/privacy/erasures/{result.erasure_id}"})


@router.get("/erasures/{erasure_id}", response_model=ErasureOut, summary="An erasure's progress, store by store",
            responses={404: {"description": "Unknown erasure", **PROBLEM}})
async def get_erasure(erasure_id: str, runtime: Runtime) -> ErasureOut:
    async with runtime.db.reader() as session:
        return await erasures.erasure_status(session, erasure_id)
