"""The baseline: a bare FastAPI POST endpoint with the same pydantic model, no storage."""

from __future__ import annotations

import uuid

from fastapi import FastAPI

from services.capture.schemas import Accepted, LeadIn
from services.outreach.schemas import TouchIn

app = FastAPI()


@app.post("/v1/leads", status_code=202)
async def post_lead(lead: LeadIn) -> Accepted:
    return Accepted(event_id=str(uuid.uuid4()))


@app.post("/v1/touches", status_code=202)
async def post_touch(touch: TouchIn) -> Accepted:
    return Accepted(event_id=str(uuid.uuid4()))
