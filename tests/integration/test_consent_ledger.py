"""The consent ledger end to end, in process: capture's form posts and outreach's touches go
through their outboxes and the real broker to qualification, which keeps the ledger in the
pipeline store (SQLite and PostgreSQL, built by Alembic); the pipeline API shows it and
``opportunity.qualified`` carries it.

One person grants marketing on a form, opts out on another, opts in again and unsubscribes
from a sequence; a fact delivered twice records once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from pipeline_store.models import ConsentEntry, ProcessedEvent
from services.capture.app import create_app as capture_app
from services.outreach.app import create_app as outreach_app
from services.pipeline.app import create_app as pipeline_app
from services.qualification.app import create_app as qualification_app
from shared.broker import EmbeddedBroker, free_port
from shared.events import CONTENT_TYPE, LEADS_CAPTURED, OPPORTUNITIES_QUALIFIED
from shared.kafka import KafkaGateway
from tests.integration.test_outreach_api import add_key as outreach_key
from tests.integration.test_pipeline_api import add_key as pipeline_key
from tests.support import eventually, make_settings, read_topic, serve_app

pytestmark = pytest.mark.timeout(180)

EMAIL = "jo.lovelace@analytical.co.uk"
CONSENT_TEXT = "I agree to receive product news. Unsubscribe any time."


class Stack:
    """Capture, outreach, qualification and pipeline in this process, on a broker of their own."""

    def __init__(self) -> None:
        self.clients: dict[str, object] = {}
        self.contexts: list = []

    async def start(self, broker: EmbeddedBroker, database_factory, tmp_path) -> None:  # noqa: ANN001
        self.broker = broker
        urls = {f"{name}_database_url": await database_factory(name) for name in ("capture", "outreach", "pipeline")}
        self.settings = make_settings(broker.bootstrap, tmp_path, **urls)
        own = {"qualification": {"kafka_consumer_group": f"qual-{uuid.uuid4().hex[:8]}"}}
        for name, factory in (("qualification", qualification_app), ("capture", capture_app),
                              ("outreach", outreach_app), ("pipeline", pipeline_app)):
            app = factory(make_settings(broker.bootstrap, tmp_path, service=name, **urls, **own.get(name, {})))
            ctx = serve_app(app)
            client = await ctx.__aenter__()
            self.contexts.append(ctx)
            client.runtime = app.state.runtime
            self.clients[name] = client
        await self.qualification.runtime.consumer.wait_assigned()
        self.outreach.headers["Authorization"] = f"Bearer {await outreach_key(self.outreach.runtime.db)}"
        key = await pipeline_key(self.pipeline.runtime.db, "dpo", "pipeline privacy")
        self.pipeline.headers["Authorization"] = f"Bearer {key}"

    async def stop(self) -> None:
        for ctx in reversed(self.contexts):
            await ctx.__aexit__(None, None, None)

    def __getattr__(self, name: str):  # noqa: ANN204
        try:
            return self.__dict__["clients"][name]
        except KeyError:
            raise AttributeError(name) from None

    async def count(self, model, *where) -> int:  # noqa: ANN001
        async with self.pipeline.runtime.db.reader() as s:
            return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()

    async def ledger_holds(self, entries: int) -> None:
        """Wait until qualification has recorded ``entries`` consent entries."""
        async def enough() -> bool:
            return await self.count(ConsentEntry) >= entries
        await eventually(enough, timeout=60)


@pytest.fixture
async def stack(database_factory, tmp_path):
    broker = EmbeddedBroker(port=free_port())
    await broker.astart()
    s = Stack()
    try:
        await s.start(broker, database_factory, tmp_path)
        yield s
    finally:
        await s.stop()
        broker.stop()


def when(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


START = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


async def test_form_consent_opt_out_and_unsubscribe_make_one_ledger_once(stack):
    # 1. a demo request from a business address, marketing ticked: granted (and it qualifies)
    demo = await stack.capture.post("/v1/forms/demo-request/submissions", headers={"accept": "application/json"}, data={
        "email": "Jo.Lovelace@Analytical.co.uk", "first_name": "Jo", "company": "Analytical Engines",
        "title": "VP Engineering", "employees": "250", "consent_marketing": "on", "consent_text": CONSENT_TEXT,
        "occurred_at": when(0)})
    assert demo.status_code == 202, demo.text
    granted_id = demo.json()["event_id"]
    await stack.ledger_holds(1)
    # 2. the newsletter form's opt-out: withdrawn
    opt_out = await stack.capture.post("/v1/forms/newsletter/submissions", headers={"accept": "application/json"},
                                       data={"email": EMAIL, "consent_marketing": "no", "occurred_at": when(10)})
    assert opt_out.status_code == 202, opt_out.text
    await stack.ledger_holds(2)
    # 3. a new opt-in through the JSON API: granted again
    opt_in = await stack.capture.post("/v1/leads", json={
        "email": EMAIL, "form_type": "webinar", "consent": {"marketing": True, "text": "Yes, webinars too."},
        "occurred_at": when(20)})
    assert opt_in.status_code == 202, opt_in.text
    await stack.ledger_holds(3)
    # 4. an unsubscribe from a sales sequence: withdrawn; and a reply that says nothing of consent
    unsubscribed = await stack.outreach.post("/v1/touches", json={
        "email": EMAIL, "channel": "cold_email", "outcome": "unsubscribed", "sequence": "q4", "occurred_at": when(30)})
    assert unsubscribed.status_code == 202, unsubscribed.text
    replied = await stack.outreach.post("/v1/touches", json={
        "email": EMAIL, "channel": "cold_email", "outcome": "replied", "sequence": "q4", "occurred_at": when(31)})
    assert replied.status_code == 202, replied.text
    await stack.ledger_holds(4)
    await eventually(lambda: _applied(stack, 5), timeout=60)

    # the same lead delivered again (a relay's repeat after a crash): the ledger records it once
    (first,) = [e for e in await read_topic(stack.broker.bootstrap, LEADS_CAPTURED, expect=3) if e.id == granted_id]
    gateway = KafkaGateway(stack.settings, "repeat")
    await gateway.start()
    try:
        assert all(await gateway.send_many([(LEADS_CAPTURED, first.subject.encode(), first.to_bytes(),
                                             [("content-type", CONTENT_TYPE.encode())])]))
    finally:
        await gateway.stop()
    duplicates = stack.qualification.runtime.consumer
    await eventually(lambda: _seen_duplicate(duplicates), timeout=60)
    assert await stack.count(ConsentEntry) == 4

    contact_id = (await stack.pipeline.get("/v1/contacts", params={"email": EMAIL})).json()["items"][0]["id"]
    detail = (await stack.pipeline.get(f"/v1/contacts/{contact_id}")).json()
    ledger = [(c["status"], c["source"], c["text"], c["occurred_at"]) for c in detail["consents"]]
    assert ledger == [
        ("granted", "form:demo-request", CONSENT_TEXT, when(0).replace("+00:00", "Z")),
        ("withdrawn", "form:newsletter", None, when(10).replace("+00:00", "Z")),
        ("granted", "form", "Yes, webinars too.", when(20).replace("+00:00", "Z")),
        ("withdrawn", "outreach:cold_email", None, when(30).replace("+00:00", "Z")),
    ]
    assert detail["consents"][0]["cause_event_id"] == granted_id
    assert detail["consents"][3]["cause_event_id"] == unsubscribed.json()["event_id"]
    assert detail["consent_state"] == {"marketing": {"status": "withdrawn", "since": when(30).replace("+00:00", "Z"),
                                                     "source": "outreach:cold_email"}}
    assert detail["unsubscribed"] is True
    # the access export carries the same ledger
    export = (await stack.pipeline.get("/v1/privacy/exports", params={"email": EMAIL})).json()
    assert export["consents"] == detail["consents"] and export["consent_state"] == detail["consent_state"]

    # opportunity.qualified carries the ledger as it stood when the contact qualified
    (qualified,) = await read_topic(stack.broker.bootstrap, OPPORTUNITIES_QUALIFIED, expect=1, settle=0.5)
    assert qualified.data["consents"] == [{
        "purpose": "marketing", "status": "granted", "text": CONSENT_TEXT, "source": "form:demo-request",
        "occurred_at": when(0).replace("+00:00", "Z"), "cause_event_id": granted_id}]
    assert qualified.data["consent_state"] == {"marketing": {
        "status": "granted", "since": when(0).replace("+00:00", "Z"), "source": "form:demo-request"}}


async def _applied(stack: Stack, count: int) -> bool:
    return await stack.count(ProcessedEvent) >= count


async def _seen_duplicate(consumer) -> bool:  # noqa: ANN001
    return consumer.duplicates >= 1
