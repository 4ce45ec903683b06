"""Test helpers: real broker, real databases, real processes; every process stopped on every exit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.broker import _die_with_parent, free_port
from shared.events import CloudEvent, parse_event
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("LEADSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


async def postgres_connect(url: str):  # noqa: ANN201
    """A plain asyncpg connection to the database of ``url`` (any SQLAlchemy PostgreSQL URL)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database=u.database)


async def create_postgres_database(template: str | None = None) -> str:
    """A fresh database on the test server (a copy of database ``template`` if given); returns
    its asyncpg URL."""
    from sqlalchemy.engine import make_url

    base = make_url(POSTGRES_URL)
    name = f"ls_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:12]}"
    conn = await postgres_connect(POSTGRES_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return base.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    from sqlalchemy.engine import make_url

    target = make_url(url)
    conn = await postgres_connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def migrated_store(database_factory, database: str):  # noqa: ANN001, ANN201
    """A service's database (``database_factory`` migrates it), opened as the service opens it."""
    from shared.db import Database

    db = Database(await database_factory(database))
    try:
        yield db
    finally:
        await db.dispose()


def make_settings(bootstrap: str, data_dir: Path, *, service: str | None = None, **overrides) -> Settings:  # noqa: ANN003
    """A test's own settings: the spine's ``Settings``, or with ``service`` that service's class
    from the registry (its own fields too). An override the class does not declare is an error,
    where the class itself would ignore it (as it ignores other services' variables)."""
    from leadstream.registry import SERVICES
    from shared.settings import PER_NAME

    cls = SERVICES[service].settings_class if service else Settings
    unknown = sorted(k for k in overrides if k not in cls.model_fields and not PER_NAME.fullmatch(k))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)} (pass service=…?)")
    defaults = dict(
        kafka_bootstrap_servers=bootstrap,
        data_dir=data_dir,
        config_dir=ROOT / "deploy" / "config",
        capture_rate_limit="off",
        capture_form_rate_limit="off",
        api_rate_limit="off",
        outbox_poll_interval_s=0.05,
        kafka_request_timeout_ms=3000,
        log_json=False,
        gc_freeze=False,  # apps built inside the test process: never freeze its heap
    )
    values = {k: v for k, v in defaults.items() if k in cls.model_fields}
    values.update(overrides)
    return cls(**values)


@asynccontextmanager
async def serve_app(app) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    """Run an app's lifespan and talk to it in-process (no port needed)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@asynccontextmanager
async def served_service(create_app, service: str, broker, database_factory, data_dir: Path,  # noqa: ANN001
                         add_key) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    """``service``'s app on a database of its own (``database_factory(service)``), served
    in-process; the client carries the app's runtime (``client.runtime``), the database's URL
    (``client.url``) and, as its bearer token, the key ``add_key(db)`` stores (``client.key``)."""
    url = await database_factory(service)
    app = create_app(make_settings(broker.bootstrap, data_dir, service=service, **{f"{service}_database_url": url}))
    async with serve_app(app) as client:
        client.runtime, client.url = app.state.runtime, url
        client.key = await add_key(client.runtime.db)
        client.headers["Authorization"] = f"Bearer {client.key}"
        yield client


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 20.0, settle: float = 0.5
) -> list[CloudEvent]:
    """Read a topic from the beginning until ``expect`` messages arrived (and ``settle`` s more)."""
    return [
        parse_event(m.value) for m in await read_raw(bootstrap, topic, expect=expect, timeout=timeout, settle=settle)
    ]


@asynccontextmanager
async def from_the_beginning(bootstrap: str, topic: str):  # noqa: ANN201
    """A consumer of no group, assigned every partition of ``topic`` at its first offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = await consumer._client.fetch_all_metadata()  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in parts.partitions_for_topic(topic) or []]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        yield consumer, tps
    finally:
        await consumer.stop()


async def read_raw(bootstrap: str, topic: str, *, expect: int, timeout: float = 20.0, settle: float = 0.5):  # noqa: ANN201
    async with from_the_beginning(bootstrap, topic) as (consumer, _):
        out = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
            if len(out) >= expect:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
        if not topic.endswith(".dlq"):  # a dead-letter topic holds what broke the contract, by design
            for record in out:
                assert_matches_contract(topic, record)
        return out


def assert_matches_contract(topic: str, record) -> None:  # noqa: ANN001
    """An event read from ``topic`` is one that docs/events/asyncapi.yaml describes there."""
    import orjson

    from shared.asyncapi import event_validator
    from shared.events import CONTENT_TYPE, EVENT_TYPES

    assert ("content-type", CONTENT_TYPE.encode()) in list(record.headers or ()), record.headers
    event = orjson.loads(record.value)
    assert EVENT_TYPES[event["type"]][0] == topic, f"{event['type']} on {topic}"
    errors = list(event_validator(event["type"]).iter_errors(event))
    assert not errors, (f"{topic} event {event.get('id')} breaks the contract: "
                        f"{[(list(e.absolute_path), e.message) for e in errors[:3]]}")


async def read_until_idle(bootstrap: str, topic: str, *, idle: float = 3.0, timeout: float = 120.0,  # noqa: ANN201
                          check_contract: bool = True):
    """Every record of ``topic`` from the beginning: read until nothing new has come for ``idle`` s
    and every partition's position has reached the high watermark of its last fetch (the broker's
    ``end_offsets`` can be too low, see BROKER.md), or ``timeout``. Each record must match the
    events contract (as ``read_raw``), unless the topic is a DLQ or ``check_contract`` is off (a
    test that wrote something else there on purpose)."""
    async with from_the_beginning(bootstrap, topic) as (consumer, tps):
        out = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
            if batch:
                last_new = time.monotonic()
                continue
            # a partition no fetch has answered yet has no high watermark: not caught up (under
            # load the first fetches can take longer than ``idle``; a big topic then read as empty)
            caught_up = True
            for tp in tps:
                high = consumer.highwater(tp)
                caught_up = caught_up and high is not None and high <= await consumer.position(tp)
            if caught_up and time.monotonic() - last_new >= idle:
                break
        if check_contract and not topic.endswith(".dlq"):
            for record in out:
                assert_matches_contract(topic, record)
        return out


@dataclass(frozen=True)
class TopicCount:
    """What a downstream reader of a topic saw: ``repeats`` are messages whose event id came
    before; ``stepped_back`` those of them that arrived after a newer event of their key
    (a reader keeping the latest state per key would step back), in ``keys_stepped_back`` keys."""

    messages: int
    distinct: int
    repeats: int
    stepped_back: int
    keys_stepped_back: int
    # the newest few repeats, each "id key=… p<partition> @<first offset> again @<offset>": to
    # tell which publisher sent them (not compared: a count is the fact)
    repeated: tuple[str, ...] = field(default=(), compare=False)
    # per partition, the offset after the last record read: a repeat below the end an earlier
    # read saw was missed by that read, not published since
    ends: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return (f"messages={self.messages} distinct_ids={self.distinct} repeats={self.repeats} "
                f"stepped_back={self.stepped_back} (keys {self.keys_stepped_back})")


def event_id_of(value: bytes | None) -> str:
    """A record's CloudEvent id (a value that is no event, e.g. poison in a DLQ, is its own id)."""
    import orjson

    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("id"), str):
        return event["id"]
    return repr(value)


def count_topic(records) -> TopicCount:  # noqa: ANN001 - records with partition, offset, key, value
    """Messages, distinct event ids and repeats of one topic's records, read in partition order."""
    first_seen: dict[bytes | None, dict[str, int]] = {}
    newest: dict[bytes | None, int] = {}
    offsets: dict[tuple[bytes | None, str], tuple[int, int]] = {}
    repeats = stepped_back = 0
    keys_back: set[bytes | None] = set()
    repeated: deque[str] = deque(maxlen=5)
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    for record in ordered:
        event_id = event_id_of(record.value)
        seen = first_seen.setdefault(record.key, {})
        if event_id not in seen:
            seen[event_id] = newest[record.key] = len(seen)
            offsets[record.key, event_id] = (record.partition, record.offset)
            continue
        repeats += 1
        partition, first = offsets[record.key, event_id]
        repeated.append(f"{event_id} key={record.key!r} p{partition} @{first} again p{record.partition} "
                        f"@{record.offset}")
        if seen[event_id] < newest[record.key]:
            stepped_back += 1
            keys_back.add(record.key)
    distinct = len({event_id_of(r.value) for r in ordered})
    ends: dict[int, int] = {}
    for record in ordered:
        ends[record.partition] = record.offset + 1
    return TopicCount(len(ordered), distinct, repeats, stepped_back, len(keys_back), tuple(repeated),
                      tuple(sorted(ends.items())))


class ServiceProcess:
    """``leadstream serve SERVICE`` as a real process on a free port."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.service, self.env, self.port = service, env, port or free_port()
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "leadstream.cli", "serve", self.service, "--port", str(self.port)],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        # a start imports the service, migrates and reaches the broker: seconds on a quiet machine,
        # more than 30 s when 4 workers share 2 cores with other runs (seen in CI at load 11)
        # one client for the whole wait: ``httpx.get`` builds a client, and with it an SSL context
        # that loads the CA bundle (~20 ms of CPU), on every poll
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=0.5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.service} exited: {self.log_path.read_text()[-3000:]}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.service} not healthy: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def eventually(check, timeout: float = 20.0, interval: float = 0.1):  # noqa: ANN001, ANN201
    """Poll an async ``check`` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def read_until_ids(bootstrap: str, topic: str, ids: set[str], *, timeout: float = 60.0) -> list[CloudEvent]:
    """Read a topic from the beginning until every id in ``ids`` has arrived (or the timeout)."""
    deadline = time.monotonic() + timeout
    events: list[CloudEvent] = []
    while time.monotonic() < deadline:
        events = await read_topic(
            bootstrap, topic, expect=len(ids), timeout=max(1.0, deadline - time.monotonic()), settle=0.5
        )
        if ids <= {e.id for e in events}:
            break
        await asyncio.sleep(0.5)
    return events


@contextmanager
def selects_on(engine, table: str) -> Iterator[list[str]]:  # noqa: ANN001
    """The SELECT statements reading ``table`` that ``engine`` (async) runs inside the block."""
    from sqlalchemy import event as sa_event

    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001, ANN002
        if statement.lstrip().upper().startswith("SELECT") and table in statement:
            seen.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", record)


@asynccontextmanager
async def serve_over_http(app, settings: Settings):  # noqa: ANN001, ANN201
    """Run ``app`` in uvicorn on a free port with the options ``leadstream serve`` gives it
    (forwarded headers believed as ``settings`` say); yields ``client(host)``, which opens a
    client of it connecting from ``host`` (any 127/8 address on Linux)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            **settings.proxy_headers())
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    clients: list[httpx.AsyncClient] = []

    def client(host: str = "127.0.0.1") -> httpx.AsyncClient:
        made = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=host),
                                 base_url=f"http://127.0.0.1:{port}", timeout=30)
        clients.append(made)
        return made

    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield client
    finally:
        for made in clients:
            await made.aclose()
        server.should_exit = True
        await task


def leadstream_app(env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    """The ``leadstream`` command's own app run in this process with ``env`` set for the call
    (``None`` unsets a variable), by typer's ``CliRunner``: (exit code, stdout, stderr), as
    ``run_leadstream`` gives them. Call it outside the event loop (its commands call
    ``asyncio.run``). A command process costs ~2 s of CPU to start: a test runs its first call
    as the real command and the rest here."""
    from typer.testing import CliRunner

    from leadstream.cli import app
    from shared.settings import get_settings

    get_settings.cache_clear()  # a process reads its settings once; each call here is a new run
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def leadstream_in_process(env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    """``leadstream_app`` in a thread."""
    return await asyncio.to_thread(leadstream_app, env, *args)


async def run_leadstream(env: dict[str, str], *args: str, timeout: float = 120.0) -> tuple[int, str, str]:
    """The real ``leadstream`` command with ``env`` added: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leadstream.cli", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()
