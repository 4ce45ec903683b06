"""Webhook delivery (services/webhooks) with the real broker, a real pipeline store on both
backends and local receivers on free ports: signed CloudEvents, order per key, isolation
of a broken receiver, retries, dead deliveries and redrive, hostile receivers."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import select

from services.webhooks.app import create_app
from shared.events import OPPORTUNITY_QUALIFIED, STAGE_CHANGED, make_event
from shared.kafka import KafkaGateway
from shared.secrets import DEVELOPMENT_KEY, SecretBox
from shared.signatures import SIGNATURE_HEADER, new_webhook_secret, verify
from pipeline_store.models import WebhookDelivery, WebhookSubscription
from shared.webhooks import SUBSCRIBABLE_TYPES
from tests.receiver import Answer, Receiver
from tests.support import eventually, make_settings, serve_app

BOX = SecretBox(DEVELOPMENT_KEY)


async def add_subscription(db, url: str, types=SUBSCRIBABLE_TYPES) -> tuple[str, str]:  # noqa: ANN001
    """A subscription stored as the API stores it (secret encrypted); ``(id, secret)``."""
    sub_id, secret, now = str(uuid.uuid4()), new_webhook_secret(), datetime.now(timezone.utc) - timedelta(seconds=1)
    async with db.unit_of_work() as s:
        s.add(WebhookSubscription(id=sub_id, url=url, event_types=list(types), description=None, status="active",
                                  secret=BOX.encrypt(secret), created_by="test", created_at=now, updated_at=now))
    return sub_id, secret


def stage_event(email: str, n: int):  # noqa: ANN201
    return make_event(STAGE_CHANGED, {
        "contact_id": f"c-{email}", "email": email, "from_stage": None, "to_stage": "lead",
        "changed_by": "qualification", "reason": f"step {n}", "changed_at": datetime.now(timezone.utc).isoformat(),
    }, source="/test", subject=email)


def qualified_event(email: str):  # noqa: ANN201
    now = datetime.now(timezone.utc).isoformat()
    score = {"score": 50.0, "reasons": []}
    return make_event(OPPORTUNITY_QUALIFIED, {
        "opportunity_id": str(uuid.uuid4()), "motion": "inbound", "fit": score, "engagement": score,
        "policy_version": "test", "qualified_at": now,
        "contact": {"id": f"c-{email}", "email": email}, "account": {"domain": None},
    }, source="/test", subject=email)


async def publish(broker, events) -> None:  # noqa: ANN001
    gateway = KafkaGateway(make_settings(broker.bootstrap, "/tmp"), client_id="test-webhooks-producer")
    await gateway.start()
    try:
        acked = await gateway.send_many([(e.topic, e.subject.encode(), e.to_bytes(),
                                          [("content-type", b"application/cloudevents+json")]) for e in events])
        assert all(acked)
    finally:
        await gateway.stop()


@asynccontextmanager
async def webhooks(broker, store_url: str, tmp_path, **overrides):  # noqa: ANN001, ANN003, ANN201
    values = dict(pipeline_database_url=store_url, webhooks_allow_http=True, webhooks_allow_private=True,
                  webhooks_consumer_group=f"test-webhooks-{uuid.uuid4().hex[:8]}", webhooks_backoff_initial_s=0.2,
                  webhooks_poll_interval_s=0.2)
    app = create_app(make_settings(broker.bootstrap, tmp_path, **(values | overrides)))
    async with serve_app(app) as client:
        runtime = app.state.runtime
        await runtime.consumer.wait_assigned(60)
        runtime.client = client
        yield runtime


async def rows(db, sub_id: str) -> list[WebhookDelivery]:  # noqa: ANN001
    async with db.reader() as s:
        return list((await s.execute(select(WebhookDelivery).where(WebhookDelivery.subscription_id == sub_id)
                                     .order_by(WebhookDelivery.id))).scalars())


def ids_of(receiver: Receiver) -> list[str]:
    return [orjson.loads(r.body)["id"] for r in receiver.received]


async def test_signed_in_order_and_a_broken_receiver_delays_no_other(broker, pipeline_store, tmp_path):
    db = pipeline_store
    healthy, hanging = Receiver(), Receiver(lambda _: Answer(hang=True))
    failing = Receiver(lambda _: Answer(500, body=b"upstream exploded"))
    async with healthy, hanging, failing:
        healthy_id, healthy_secret = await add_subscription(db, healthy.url)
        stage_only_id, _ = await add_subscription(db, hanging.url, [STAGE_CHANGED])
        failing_id, _ = await add_subscription(db, failing.url)
        keys = [f"k{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(4)]
        events = [stage_event(k, n) for n in range(5) for k in keys] + [qualified_event(keys[0])]
        async with webhooks(broker, db.url, tmp_path) as runtime:
            await publish(broker, events)
            await eventually(lambda: _has(healthy, {e.id for e in events}), timeout=60)
            # every healthy delivery completed while each of the hanging receiver's requests was
            # still unanswered (its timeout is 10 s): nothing of it stood in the healthy one's way
            assert hanging.hanging == len(keys)
            # one request per key at the hanging receiver: a key's next event waits for its first
            assert sorted(orjson.loads(r.body)["data"]["email"] for r in hanging.received) == sorted(keys)
            assert all(orjson.loads(r.body)["type"] == STAGE_CHANGED for r in hanging.received)
            await eventually(lambda: _attempted(db, failing_id, 2), timeout=30)
            status = (await runtime.client.get("/v1/status")).json()
            assert set(status["dispatcher"]["workers"]) == {healthy_id, stage_only_id, failing_id}
            delivered = f'leadstream_webhook_delivered_total{{subscription="{healthy_id}"}} {float(len(events))}'
            # counted once the outcome is stored, just after the receiver has the request
            metrics = await eventually(lambda: _metrics_with(runtime.client, delivered), timeout=30)
            assert f'leadstream_webhook_retried_total{{subscription="{failing_id}"}}' in metrics
            assert f'leadstream_webhook_delivery_latency_seconds_count{{subscription="{healthy_id}"}}' in metrics

    mine = {e.id: e for e in events}
    got = [r for r in healthy.received if orjson.loads(r.body)["id"] in mine]
    assert len(got) == len(events)  # each once
    for request in got:
        event = mine[orjson.loads(request.body)["id"]]
        assert request.body == event.to_bytes()  # the CloudEvent as published
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert verify(request.headers[SIGNATURE_HEADER.lower()], request.body, [healthy_secret], now=request.at)
        assert request.headers["leadstream-event-id"] == event.id
    for key in keys:  # in order per key (of a topic: Kafka orders nothing across topics)
        sent = [e.id for e in events if e.subject == key and e.type == STAGE_CHANGED]
        assert [i for i in ids_of(healthy) if i in sent] == sent
    healthy_rows = await rows(db, healthy_id)
    assert {r.status for r in healthy_rows} == {"delivered"} and all(r.attempts == 1 for r in healthy_rows)
    failing_rows = await rows(db, failing_id)
    assert all(r.status == "pending" for r in failing_rows)
    assert max(r.attempts for r in failing_rows) >= 2 and "HTTP 500: upstream exploded" in failing_rows[0].last_error
    latencies = [(r.delivered_at - r.published_at).total_seconds() for r in healthy_rows]
    print(f"healthy deliveries beside a hanging and a failing receiver: {len(latencies)}, "
          f"max from publication to 2xx {max(latencies):.3f} s")


async def _metrics_with(client, line: str) -> str | None:  # noqa: ANN001
    text = (await client.get("/metrics")).text
    return text if line in text else None


async def _has(receiver: Receiver, ids: set[str]) -> bool:
    return ids <= set(ids_of(receiver))


async def _attempted(db, sub_id: str, attempts: int) -> bool:  # noqa: ANN001
    found = await rows(db, sub_id)
    return bool(found) and max(r.attempts for r in found) >= attempts
