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
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="webhooks", **(values | overrides)))
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


async def test_retries_honour_retry_after_then_dead_then_redrive(broker, pipeline_store, tmp_path):
    from services.pipeline.app import create_app as pipeline_app
    from tests.integration.test_pipeline_api import add_key

    db = pipeline_store
    state = {"answer": Answer(500, body=b"down")}
    flaky = Receiver(lambda _: state["answer"])
    polite = Receiver(lambda _: Answer(429, headers={"Retry-After": "120"}, body=b"slow down"))
    async with flaky, polite:
        flaky_id, _ = await add_subscription(db, flaky.url)
        polite_id, _ = await add_subscription(db, polite.url)
        events = [stage_event(f"r{i}-{uuid.uuid4().hex[:6]}@example.com", 0) for i in range(3)]
        # a window of 3 s: a few attempts, then dead
        async with webhooks(broker, db.url, tmp_path, webhooks_retry_hours=3 / 3600,
                            webhooks_backoff_initial_s=0.2) as runtime:
            await publish(broker, events)
            await eventually(lambda: _all_in(db, flaky_id, "dead", len(events)), timeout=60)
            await eventually(lambda: _attempted(db, polite_id, 1), timeout=30)
            polite_rows = await rows(db, polite_id)
            # Retry-After 120 s is past the 3 s window: no attempt is made that soon, the delivery is dead
            assert {r.status for r in polite_rows} == {"dead"} and all(r.attempts == 1 for r in polite_rows)
            assert polite_rows[0].last_status == 429
            dead = await rows(db, flaky_id)
            assert all(r.attempts >= 2 and r.last_status == 500 and r.last_error == "HTTP 500: down" for r in dead)
            # counted once its outcome is stored: the last count may follow the rows read above
            counted = f'leadstream_webhook_dead_total{{subscription="{flaky_id}"}} 3.0'

            async def dead_counted() -> bool:
                return counted in (await runtime.client.get("/metrics")).text

            await eventually(dead_counted, timeout=10)

            # listed as dead, then redriven through the API once the receiver is fixed
            app = pipeline_app(make_settings(broker.bootstrap, tmp_path, service="pipeline",
                                             pipeline_database_url=db.url))
            async with serve_app(app) as api:
                api.headers["Authorization"] = "Bearer " + await add_key(app.state.runtime.db, "ops", "subscriptions")
                listed = (await api.get(f"/v1/subscriptions/{flaky_id}/deliveries", params={"status": "dead"})).json()
                assert {d["event_id"] for d in listed["items"]} == {e.id for e in events}
                state["answer"] = Answer(204, body=b"")
                one = listed["items"][0]
                answer = await api.post(f"/v1/subscriptions/{flaky_id}/deliveries/{one['id']}/retry")
                assert answer.status_code == 202
                await eventually(lambda: _all_in(db, flaky_id, "delivered", 1), timeout=30)
                assert (await api.post(f"/v1/subscriptions/{flaky_id}/redrive")).json() == {"requeued": 2}
                await eventually(lambda: _all_in(db, flaky_id, "delivered", len(events)), timeout=30)


async def test_hostile_receivers_redirects_floods_and_inside_addresses(broker, pipeline_store, tmp_path):
    db = pipeline_store
    target = Receiver()
    redirecting = Receiver(lambda _: Answer(302, headers={"Location": target.url}, body=b""))
    flooding = Receiver(lambda _: Answer(200, flood=64 * 1024 * 1024))
    async with target, redirecting, flooding:
        redirect_id, _ = await add_subscription(db, redirecting.url)
        flood_id, _ = await add_subscription(db, flooding.url)
        events = [stage_event(f"h-{uuid.uuid4().hex[:6]}@example.com", 0)]
        async with webhooks(broker, db.url, tmp_path) as _runtime:
            await publish(broker, events)
            await eventually(lambda: _all_in(db, flood_id, "delivered", 1), timeout=60)
            await eventually(lambda: _attempted(db, redirect_id, 1), timeout=30)
        redirected = (await rows(db, redirect_id))[0]
        assert redirected.status == "pending" and redirected.last_status == 302
        assert "not followed" in redirected.last_error
        assert target.received == []  # the redirect's target never heard of it
        # 64 MiB offered, a few read (64 KiB, plus what the sockets' buffers took) before closing
        assert flooding.flood_sent < 16 * 1024 * 1024

    # a subscription whose URL is an inside address (stored before the rule, or a name that
    # later resolves inside) is refused at delivery when private targets are not allowed
    inside = Receiver()
    async with inside:
        inside_id, _ = await add_subscription(db, inside.url)
        # the same receiver named through NAT64's prefix, which a translator would carry to 127.0.0.1
        nat64_id, _ = await add_subscription(db, inside.url.replace("127.0.0.1", "[64:ff9b::7f00:1]"))
        events = [stage_event(f"p-{uuid.uuid4().hex[:6]}@example.com", 0)]
        async with webhooks(broker, db.url, tmp_path, webhooks_allow_private=False):
            await publish(broker, events)
            await eventually(lambda: _attempted(db, inside_id, 1), timeout=60)
            await eventually(lambda: _attempted(db, nat64_id, 1), timeout=60)
        refused = (await rows(db, inside_id))[0]
        assert refused.status == "pending" and refused.last_status is None
        assert refused.last_error.startswith("target refused") and "127.0.0.1" in refused.last_error
        via_nat64 = (await rows(db, nat64_id))[0]
        assert via_nat64.status == "pending" and via_nat64.last_status is None
        assert via_nat64.last_error.startswith("target refused") and "embeds 127.0.0.1" in via_nat64.last_error
        assert inside.received == []


async def test_a_restart_loses_nothing(broker, pipeline_store, tmp_path):
    db = pipeline_store
    receiver = Receiver()
    async with receiver:
        sub_id, _ = await add_subscription(db, receiver.url)
        group = f"test-webhooks-{uuid.uuid4().hex[:8]}"
        first = [stage_event(f"s{i}-{uuid.uuid4().hex[:6]}@example.com", 0) for i in range(10)]
        async with webhooks(broker, db.url, tmp_path, webhooks_consumer_group=group):
            await publish(broker, first)
            await eventually(lambda: _has(receiver, {e.id for e in first}), timeout=60)
        # published while no webhooks process runs: the group's committed offsets bring them
        second = [stage_event(f"t{i}-{uuid.uuid4().hex[:6]}@example.com", 0) for i in range(10)]
        await publish(broker, second)
        async with webhooks(broker, db.url, tmp_path, webhooks_consumer_group=group):
            await eventually(lambda: _has(receiver, {e.id for e in second}), timeout=60)
            await eventually(lambda: _all_in(db, sub_id, "delivered", 20), timeout=30)
    mine = {e.id for e in first + second}
    got = [i for i in ids_of(receiver) if i in mine]
    assert sorted(got) == sorted(mine)  # each once: the first ten were not sent again


async def _all_in(db, sub_id: str, status: str, n: int) -> bool:  # noqa: ANN001
    found = await rows(db, sub_id)
    return sum(r.status == status for r in found) >= n
