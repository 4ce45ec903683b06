"""Capture routes: parse, call the service, shape the answer. No logic."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from services.capture import forms, service
from services.capture.forms import Form, form_body_openapi
from services.capture.schemas import Accepted, LeadIn
from shared.errors import PROBLEM_JSON, ProblemError
from shared.idempotency import write_and_wake
from shared.runtime import Runtime, runtime_of
from shared.web import (
    header_openapi, header_value, ip_address_or_none, json_body_openapi, parse_json_body, require_json,
)

router = APIRouter(prefix="/v1", tags=["capture"])

IDEMPOTENCY_KEY_MAX = 255  # the column's length, on every path

PROBLEM = {"content": {PROBLEM_JSON: {}}}
ERRORS = {
    413: {"description": "Body over 64 KiB", **PROBLEM},
    415: {"description": "Wrong content type", **PROBLEM},
    422: {"description": "Invalid fields, each named", **PROBLEM},
    429: {"description": "Rate limited; see Retry-After", **PROBLEM},
}


def client_address(request: Request) -> str | None:
    """The client's IP address as the server sees it (a configured proxy's X-Forwarded-For
    already applied by uvicorn), or ``None`` when that is not an IP address."""
    return ip_address_or_none(request.client.host if request.client else None)


def _limit_key(address: str | None) -> str:
    return address or "unknown"


async def _record_spam(runtime, form: Form, payload: dict, reason: str, address: str | None) -> service.Capture:
    subject = service.spam_subject(runtime.privacy, payload)
    async with runtime.db.unit_of_work() as session:
        return await service.record_spam(session, form, payload, reason, address, subject)


async def _capture(runtime, lead: LeadIn, idempotency_key: str | None, request: Request) -> service.Capture:
    address, traceparent = client_address(request), request.headers.get("traceparent")

    hint = service.hint(runtime.privacy, lead, idempotency_key)

    async def work(session):  # noqa: ANN001, ANN202
        return await service.capture_lead(
            session, lead, idempotency_key=idempotency_key, client_address=address, traceparent=traceparent,
            subject=hint[1], privacy=runtime.privacy,
        )

    return await write_and_wake(runtime.relay, lambda: runtime.writer.submit(work, hint=hint),
                                retries=1 if idempotency_key else 0,
                                published=lambda result: not (result.duplicate or result.dropped))


@router.post(
    "/leads",
    status_code=202,
    response_model=Accepted,
    summary="Capture a lead from a form or landing page",
    description="Answers `202` once the lead is durably stored, even while Kafka is down. "
    "Send `Idempotency-Key` to make retries safe: a retry returns the same `event_id` and publishes nothing new. "
    "A `form_id` declared in `forms.yaml` brings that form's rules: a filled honeypot (in `fields`) or a browser "
    "`Origin` the form does not allow is answered the same and recorded as spam, never published.",
    responses=ERRORS | {409: {"description": "Idempotency-Key reused with another body", **PROBLEM}},
    # The body and header are read by the route itself: one pydantic pass, no dependencies.
    openapi_extra=json_body_openapi(LeadIn) | header_openapi("Idempotency-Key", IDEMPOTENCY_KEY_MAX),
)
async def post_lead(request: Request) -> Accepted:
    runtime = runtime_of(request)
    # 415, then the limit (so invalid bodies count against it too), then 422
    await require_json(request)
    await runtime.client_limit.check(_limit_key(client_address(request)))
    idempotency_key = header_value(request, "idempotency-key", IDEMPOTENCY_KEY_MAX)
    lead = await parse_json_body(request, LeadIn, runtime.lead_context)
    form, spam_reason = forms.judge_lead(runtime.forms, lead, request.headers.get("origin"))
    if spam_reason:
        payload = lead.model_dump(mode="json", exclude_none=True)
        result = await _record_spam(runtime, form, payload, spam_reason, client_address(request))
    else:
        result = await _capture(runtime, service.apply_form(lead, form), idempotency_key, request)
    return Accepted(event_id=result.event_id)


def _form(runtime, form_id: str) -> Form:
    form = runtime.forms.get(form_id)
    if form is None:
        raise ProblemError(404, f"No form with id {form_id!r} is declared in forms.yaml.")
    return form


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


@router.options("/forms/{form_id}/submissions", include_in_schema=False)
async def form_preflight(form_id: str, request: Request, runtime: Runtime) -> Response:
    form = _form(runtime, form_id)
    origin = request.headers.get("origin")
    headers = forms.cors_headers(form, origin)
    if "Access-Control-Allow-Origin" in headers:
        headers |= {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Accept, Idempotency-Key",
            "Access-Control-Max-Age": "600",
        }
    return Response(status_code=204, headers=headers)


@router.post(
    "/forms/{form_id}/submissions",
    status_code=303,
    summary="Submit a plain HTML form",
    description=(
        "Post a plain HTML `<form>` here (`application/x-www-form-urlencoded` or `multipart/form-data`) "
        "with the lead's fields flat (`email`, `first_name`, `utm_source`, `consent_marketing`, …); "
        "other inputs become custom `fields`. Browsers are sent `303` to the form's thank-you URL; "
        "`Accept: application/json` gets `202` with the `event_id`.\n\n"
        "```html\n<form method=\"post\" action=\"https://capture.example.com/v1/forms/demo-request/submissions\">\n"
        "  <input name=\"email\" type=\"email\" required>\n  <input name=\"company\">\n"
        "  <input name=\"website_url\" style=\"display:none\" tabindex=\"-1\" autocomplete=\"off\">\n"
        "  <button>Book a demo</button>\n</form>\n```"
    ),
    responses=ERRORS | {
        202: {"description": "Accepted (with `Accept: application/json`)", "model": Accepted},
        303: {"description": "Accepted (a browser's post): no body, the form's thank-you URL in `Location`",
              "headers": {"Location": {"description": "The form's `thank_you_url`", "schema": {"type": "string"}}}},
        404: {"description": "Unknown form", **PROBLEM},
    },
    response_class=Response,  # the 303 has no body; the 202 is documented above
    openapi_extra=form_body_openapi() | header_openapi("Idempotency-Key", IDEMPOTENCY_KEY_MAX),
)
async def post_form_submission(form_id: str, request: Request, runtime: Runtime) -> Response:
    # every request counts against its address; only a well-formed submission (a lead or
    # spam, after 404, 415 and 422) counts against the form's limit for that address
    address = client_address(request)
    await runtime.client_limit.check(_limit_key(address))
    form = _form(runtime, form_id)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise ProblemError(415, "Post the form as application/x-www-form-urlencoded or multipart/form-data.")
    idempotency_key = header_value(request, "idempotency-key", IDEMPOTENCY_KEY_MAX)
    try:
        raw = await request.form(max_files=0, max_fields=200)
    except Exception as exc:  # noqa: BLE001 - a malformed body is the client's error
        raise ProblemError(422, f"The form body could not be parsed: {exc}") from None
    submitted = {k: v for k, v in raw.items() if isinstance(v, str)}
    origin = request.headers.get("origin")
    cors = forms.cors_headers(form, origin)
    spam_reason = forms.spam_verdict(form, submitted.get(form.honeypot) if form.honeypot else None, origin)
    lead = None
    if not spam_reason:
        try:
            lead = service.apply_form(forms.lead_of(form, submitted, runtime.lead_context), form)
        except forms.InvalidSubmission as exc:
            raise ProblemError(422, "The form has invalid fields.", errors=exc.errors,
                               type_="https://leadstream.dev/problems/validation", headers=cors) from None
    await runtime.form_limit.check(f"{form.id} {_limit_key(address)}")
    if spam_reason:
        result = await _record_spam(runtime, form, forms.spam_payload(submitted), spam_reason, address)
    else:
        result = await _capture(runtime, lead, idempotency_key, request)
    if _wants_json(request):
        return JSONResponse(Accepted(event_id=result.event_id).model_dump(), status_code=202, headers=cors)
    return RedirectResponse(form.thank_you_url, status_code=303, headers=cors)
