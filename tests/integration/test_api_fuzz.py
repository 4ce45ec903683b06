"""API fuzzing: schemathesis against each service's OpenAPI, a bounded number of examples per operation.

Checks: no 5xx, every documented status and content type honoured, responses match their
schemas, and every error is problem+json. The services run in-process over ASGI on a real
migrated SQLite database; the broker is not needed for any answer fuzzed here.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from leadstream.registry import upgrade
from shared.api_keys import hash_key, new_key
from shared.broker import free_port
from tests.support import make_settings

pytestmark = [
    pytest.mark.timeout(300),
    # schemathesis 4's own generators draw from the `random` module inside their strategies
    # (none of ours does); Hypothesis warns about it on every run, which says nothing about us
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"
                               ":hypothesis.errors.HypothesisDeprecationWarning"),
]

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def problem_json(ctx, response, case):  # noqa: ANN001, ANN201
    """Every 4xx/5xx is application/problem+json with type, title, status and detail."""
    if response.status_code >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/problem+json"), response.headers
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body), body
        assert body["status"] == response.status_code


CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_schema_conformance, problem_json]
# /readyz is 503 here by design (no broker), which is documented: every check but "no 5xx"
READYZ_CHECKS = [check for check in CHECKS if check is not st_checks.not_a_server_error]


def _app(service: str, tmp_path_factory):  # noqa: ANN001, ANN202
    import importlib

    tmp = tmp_path_factory.mktemp(f"fuzz-{service}")
    urls = {db: f"sqlite+aiosqlite:///{tmp / f'{db}.db'}" for db in ("capture", "outreach", "pipeline")}
    for db, url in urls.items():
        upgrade(db, url)
    # nothing listens there: fuzzed answers never wait for Kafka (ingest stores first)
    s = make_settings(f"127.0.0.1:{free_port()}", tmp, service=service, capture_database_url=urls["capture"],
                      outreach_database_url=urls["outreach"], pipeline_database_url=urls["pipeline"],
                      kafka_request_timeout_ms=300)
    app = importlib.import_module(f"services.{service}.app").create_app(s)
    return app, urls


def _key(url: str, model_path: str, scopes: str) -> str:
    import asyncio
    import importlib

    from shared.db import Database

    module, name = model_path.rsplit(".", 1)
    model = getattr(importlib.import_module(module), name)
    key = new_key()

    async def add() -> None:
        db = Database(url)
        async with db.unit_of_work() as session:
            session.add(model(id=str(uuid.uuid4()), name="fuzzer", scopes=scopes, key_hash=hash_key(key),
                              prefix=key[:8], created_at=datetime.now(timezone.utc)))
        await db.dispose()

    asyncio.run(add())
    return key


def fuzz(schema, headers: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> int:
    """Run every operation's generated cases; returns how many operations were fuzzed."""
    from hypothesis import given

    fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in skip:
            continue

        checks = READYZ_CHECKS if operation.path == "/readyz" else CHECKS

        @given(case=operation.as_strategy())
        @FUZZ
        def run(case) -> None:  # noqa: ANN001
            case.call_and_validate(headers=headers, checks=checks)  # noqa: B023 - run() is called at once

        run()
        fuzzed += 1
    return fuzzed


def test_capture_api(tmp_path_factory):
    app, _ = _app("capture", tmp_path_factory)
    assert fuzz(schemathesis.openapi.from_asgi("/openapi.json", app)) >= 3


def test_outreach_api(tmp_path_factory):
    app, urls = _app("outreach", tmp_path_factory)
    key = _key(urls["outreach"], "services.outreach.models.OutreachApiKey", "outreach")
    assert fuzz(schemathesis.openapi.from_asgi("/openapi.json", app), {"Authorization": f"Bearer {key}"}) >= 5


def test_pipeline_api(tmp_path_factory):
    app, urls = _app("pipeline", tmp_path_factory)
    key = _key(urls["pipeline"], "pipeline_store.models.PipelineApiKey", "pipeline subscriptions privacy")
    assert fuzz(schemathesis.openapi.from_asgi("/openapi.json", app), {"Authorization": f"Bearer {key}"}) >= 6


def test_qualification_api(tmp_path_factory):
    app, _ = _app("qualification", tmp_path_factory)
    assert fuzz(schemathesis.openapi.from_asgi("/openapi.json", app)) >= 2
