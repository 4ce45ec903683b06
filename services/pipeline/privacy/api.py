"""Privacy routes (scope ``privacy``): parse, call the service, shape the answer. No logic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.pipeline.auth import PROBLEM, auth_errors, caller_with
from services.pipeline.privacy import service
from services.pipeline.privacy.schemas import PersonQuery, PrivacyExport
from shared.runtime import Runtime

SCOPE = "privacy"
authenticate, Caller = caller_with(SCOPE)
AUTH_ERRORS = auth_errors(SCOPE)
QUERY_ERRORS = {422: {"description": "Missing or malformed email (or an unknown parameter), each named",
                      **PROBLEM}}

router = APIRouter(prefix="/v1/privacy", tags=["privacy"], dependencies=[Depends(authenticate)],
                   responses=AUTH_ERRORS)


@router.get("/exports", response_model=PrivacyExport, summary="Everything stored about a person (access request)",
            responses=QUERY_ERRORS | {404: {"description": "No contact with this email address", **PROBLEM}},
            description="One JSON document of everything the pipeline store holds about the person with this "
            "email address: the contact and its account, the timeline with each fact's payload, every score "
            "with its reasons, stage changes, opportunities, the consent ledger with the current consent per "
            "purpose, and the webhook deliveries that sent their data on. `leadstream privacy export EMAIL` "
            "prints the same document.")
async def get_export(params: Annotated[PersonQuery, Query()], runtime: Runtime) -> PrivacyExport:
    async with runtime.db.reader() as session:
        return await service.export(session, params.email)
