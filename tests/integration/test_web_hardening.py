"""Issue 26's outside probe, answered: malformed signatures, far dates, Host headers, readiness.

Each test sends the issue's reproduction and checks the answer (no ``500``).
"""

from __future__ import annotations

import base64
import importlib
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.test_outreach_api import add_secret, outreach, webhook  # noqa: F401 - fixture
from tests.integration.test_pipeline_api import pipeline  # noqa: F401 - fixture
from tests.support import make_settings

PROBLEM = "application/problem+json"
SERVICES = ("capture", "outreach", "qualification", "pipeline", "webhooks")


def _problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM, answer.headers
    body = answer.json()
    assert body["status"] == status
    return body


# ---- 3: malformed webhook signatures are 401 before any comparison ----------------------


async def test_a_non_ascii_webhook_signature_is_401(outreach):  # noqa: F811
    await add_secret(outreach.runtime.db, "salesloft")
    body = webhook("evt_sig")
    now = int(time.time())
    for value in ["v1=é", f"t={now},v1=é", f"t={now},v1={'é' * 64}", f"t={now},v1={'a' * 63}é",
                  f"t={now},v1=zz", f"t=١٧٠٠٠٠٠٠٠٠,v1={'a' * 64}", f"t=+{now},v1={'a' * 64}"]:
        answer = await outreach.post("/v1/webhooks/salesloft", content=body, headers=[
            (b"Content-Type", b"application/json"), (b"Leadstream-Signature", value.encode())])
        problem = _problem(answer, 401)
        assert problem["type"] == "https://leadstream.dev/problems/webhook-signature", value


# ---- 4: dates no datetime can hold are 422 naming the parameter ---------------------------

DATE_PARAMETERS = {
    "/v1/analytics/sources": ("from", "to"),
    "/v1/analytics/balance": ("from", "to"),  # the same rules; its 28-day windows saturate at year 1
    "/v1/contacts": ("created_from", "created_to", "qualified_from", "qualified_to"),
    "/v1/opportunities": ("qualified_from", "qualified_to", "closed_from", "closed_to"),
}
OUT_OF_RANGE = ("9999-12-31", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59")


async def test_far_future_and_far_past_dates_are_422_naming_the_parameter(pipeline):  # noqa: F811
    for path, names in DATE_PARAMETERS.items():
        for name in names:
            for value in OUT_OF_RANGE:
                problem = _problem(await pipeline.get(path, params={name: value}), 422)
                assert [(e["field"], e["in"]) for e in problem["errors"]] == [(name, "query")], (path, value)
            # the widest range that is still a range of whole days answers
            for value in ("9999-12-30", "0001-01-01", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"):
                answer = await pipeline.get(path, params={name: value})
                assert answer.status_code == 200, (path, name, value, answer.text)


async def test_a_cursor_holding_an_impossible_time_is_422(pipeline):  # noqa: F811
    for path, kind in (("/v1/contacts", "contacts"), ("/v1/opportunities", "opportunities")):
        raw = orjson.dumps([kind, "desc", "9999-12-31T23:59:59-23:59", "x"])
        cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        problem = _problem(await pipeline.get(path, params={"cursor": cursor}), 422)
        assert [e["field"] for e in problem["errors"]] == ["cursor"]


# ---- 9: no slash redirects, and a trusted-hosts setting, on every service -------------------


def _app(service: str, tmp_path: Path, **overrides):  # noqa: ANN003, ANN202
    """A service's app, not started: routing and middleware answer without its lifespan."""
    settings = make_settings("127.0.0.1:9", tmp_path, service=service, **overrides)
    return importlib.import_module(f"services.{service}.app").create_app(settings)


def _client(app, host: str = "testserver") -> httpx.AsyncClient:  # noqa: ANN001
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


SLASHED = {
    "capture": [("POST", "/v1/leads/"), ("POST", "/v1/forms/newsletter/submissions/")],
    "outreach": [("POST", "/v1/prospects/"), ("POST", "/v1/touches/")],
    "qualification": [("GET", "/v1/status/")],
    "pipeline": [("GET", "/dashboard/"), ("GET", "/v1/contacts/"), ("POST", "/dashboard/sign-in/")],
    "webhooks": [("GET", "/v1/status/")],
}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_trailing_slash_is_404_and_never_a_redirect_to_the_host_header(service, tmp_path):
    async with _client(_app(service, tmp_path), host="evil.example") as client:
        for method, path in [*SLASHED[service], ("GET", "/healthz/"), ("GET", "/docs/")]:
            answer = await client.request(method, path, headers={"Content-Type": "application/json"}, content=b"{}")
            _problem(answer, 404)
            assert "location" not in answer.headers, (method, path)


@pytest.mark.parametrize("service", SERVICES)
async def test_trusted_hosts_refuse_other_host_headers(service, tmp_path):
    app = _app(service, tmp_path, trusted_hosts="leads.example.com, *.leads.example.net ,127.0.0.1,::1")
    for host in ("leads.example.com", "api.leads.example.net", "127.0.0.1:8004", "LEADS.example.com", "[::1]:8004"):
        async with _client(app, host) as client:
            assert (await client.get("/openapi.json")).status_code == 200, host
    async with _client(app) as client:
        for host in ("evil.example", "leads.example.com.evil.example", "leads.example.net", "evil-leads.example.net",
                     "[::2]:8004", "", "leads.example.com:80:80"):
            problem = _problem(await client.get("/openapi.json", headers={"Host": host}), 400)
            assert "Host" in problem["detail"], host
            assert (await client.get("/dashboard/", headers={"Host": host})).status_code == 400
    async with _client(app, "10.1.2.3:8001") as probe:  # a kubelet or Prometheus by the pod's address
        assert (await probe.get("/healthz")).status_code == 200
        assert (await probe.get("/metrics")).status_code == 200


async def test_trusted_hosts_default_to_any_host(tmp_path):
    async with _client(_app("pipeline", tmp_path), "anything.example:1234") as client:
        assert (await client.get("/openapi.json")).status_code == 200


# ---- 15: readiness names an unknown check; every 422 is documented as problem+json ---------


async def test_readyz_requiring_an_unknown_check_is_422_naming_require(pipeline):  # noqa: F811
    problem = _problem(await pipeline.get("/readyz", params={"require": "bogus"}), 422)
    assert [(e["field"], e["in"]) for e in problem["errors"]] == [("require", "query")]
    assert "database" in problem["errors"][0]["message"] and "broker" in problem["errors"][0]["message"]
    assert _problem(await pipeline.get("/readyz", params={"require": "database,bogus"}), 422)
    for require in ("database", "database,broker", "broker", " database , broker "):
        answer = await pipeline.get("/readyz", params={"require": require})
        assert answer.status_code == 200 and answer.json()["status"] == "ready", require


@pytest.mark.parametrize("service", SERVICES)
async def test_every_documented_422_is_problem_json(service, tmp_path):
    spec = _app(service, tmp_path).openapi()
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if int(status) >= 400:
                    content = response.get("content", {})
                    assert list(content) == [PROBLEM], (method, path, status, content)
                    assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
                    seen += status == "422"
    assert seen >= 1
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    ready = spec["paths"]["/readyz"]["get"]
    assert set(ready["responses"]) >= {"200", "422", "503"}


async def test_the_form_post_documents_its_form_body_and_a_bodiless_303(tmp_path):
    spec = _app("capture", tmp_path).openapi()
    operation = spec["paths"]["/v1/forms/{form_id}/submissions"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/x-www-form-urlencoded", "multipart/form-data"}
    see_other = operation["responses"]["303"]
    assert "content" not in see_other and "Location" in see_other["headers"]
    accepted = operation["responses"]["202"]
    assert list(accepted["content"]) == ["application/json"]  # with Accept: application/json
    assert "Accept: application/json" in operation["description"]
