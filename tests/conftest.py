from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
import structlog
from _pytest.nodeid import NodeId
from sqlalchemy.engine import make_url

from leadstream.registry import aupgrade
from shared.broker import PORT_RANGE_VARIABLE, EmbeddedBroker, free_port
from shared.kafka import ensure_topics
from shared.settings import Settings
from tests.support import (
    POSTGRES_URL, create_postgres_database, drop_postgres_database, migrated_store, postgres_available,
)


class _CurrentStderr:
    """``sys.stderr`` as it is when a line is written (pytest's capture swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# Apps served in the test process log through structlog's defaults, which print to stdout: on
# stderr instead, as the services' own logging does, so a command run in process
# (``tests.support.leadstream_app``) prints on stdout only what the command prints.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()))

# the services that store personal data refuse to start without it (the processes tests start inherit it)
os.environ.setdefault("LEADSTREAM_PRIVACY_SECRET", "test-privacy-secret")


def pytest_configure(config) -> None:  # noqa: ANN001
    """Each parallel worker (pytest-xdist) hands out ports from a range of its own.

    The parallel run hands tests out one at a time to whichever worker is free (xdist's
    ``--maxschedchunk 1``): by default its first hand-out is a block of a sixteenth of the
    suite per worker, so the long tests sorted first all went to one worker, which ran them
    one after the other for minutes after the others had finished."""
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    low = PORTS_LOW + (index % PORT_RANGES) * PORTS_PER_WORKER
    os.environ[PORT_RANGE_VARIABLE] = f"{low}-{low + PORTS_PER_WORKER - 1}"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """The longest tests first: handed out one at a time (``pytest_configure``), each goes to the
    next free worker, so the run ends with short tests on every worker, not a queue of long ones.

    Tests marked ``xdist_group(name)`` share a costly module fixture: under ``--dist loadgroup``
    xdist hands them to one worker as a unit by the ``@name`` suffix of their node ids. xdist
    3.8 writes that suffix to ``item._nodeid``, which pytest 9 no longer reads (its node ids are
    ``NodeId`` objects), so it is written here the way pytest 9 reads it."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1 if "/e2e/" in item.nodeid else 2)
    if not getattr(config.option, "loadgroup", False):  # set on the workers of a --dist loadgroup run
        return
    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid.rpartition("]")[2]:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")  # noqa: SLF001


# Below the kernel's ephemeral ports (32768-60999), so no outgoing connection takes one first.
PORTS_LOW, PORTS_PER_WORKER, PORT_RANGES = 12000, 2500, 8


# Point the suite at an external Kafka (e.g. deploy/compose.yaml's, localhost:19092) instead of
# the embedded broker; PLAINTEXT, a dedicated cluster whose topics hold nothing of value.
EXTERNAL_KAFKA = os.environ.get("LEADSTREAM_TEST_KAFKA_BOOTSTRAP", "").strip()


class ExternalKafka:
    """The external cluster as the ``broker`` fixture: same ``bootstrap``; not ours to stop."""

    cluster_id = ""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def stop(self, graceful: bool = False) -> None:  # noqa: ARG002
        """Nothing: the suite never stops a cluster it did not start."""


@pytest.fixture(scope="session")
async def broker():
    """One Tansu broker per test session, on a free port, with every topic created.

    With ``LEADSTREAM_TEST_KAFKA_BOOTSTRAP`` set: that cluster instead, its topics ensured.
    """
    if EXTERNAL_KAFKA:
        await ensure_topics(Settings(kafka_bootstrap_servers=EXTERNAL_KAFKA))
        yield ExternalKafka(EXTERNAL_KAFKA)
        return
    embedded = EmbeddedBroker(port=free_port())
    try:
        await embedded.astart()
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL is not answering")
    return request.param


class MigratedTemplates:
    """One database per backend and service per worker, built by Alembic to head once; each
    test's database is a copy of it (the SQLite file, or PostgreSQL's ``CREATE DATABASE …
    TEMPLATE``): the same schema the migrations make, without running ten migrations per test
    (0.3 s on SQLite, 0.8 s on PostgreSQL, for most of the suite's tests)."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], str] = {}
        self.directory: Path | None = None

    async def get(self, backend: str, database: str) -> str:
        """The template's SQLite path or PostgreSQL database name."""
        key = (backend, database)
        if key not in self.made:
            if backend == "sqlite":
                if self.directory is None:
                    self.directory = Path(tempfile.mkdtemp(prefix="leadstream-templates-"))
                path = self.directory / f"{database}.db"
                await aupgrade(database, f"sqlite+aiosqlite:///{path}")
                with sqlite3.connect(path) as conn:  # everything in the main file before it is copied
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.made[key] = str(path)
            else:
                url = await create_postgres_database()
                await aupgrade(database, url)
                self.made[key] = make_url(url).database
        return self.made[key]

    async def drop(self) -> None:
        for (backend, _), made in self.made.items():
            if backend == "postgres":
                await drop_postgres_database(make_url(POSTGRES_URL).set(database=made).render_as_string(False))
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.made.clear()


TEMPLATES = MigratedTemplates()


@pytest.fixture(scope="session", autouse=True)
async def _drop_templates():
    yield
    await TEMPLATES.drop()


class DatabaseFactory:
    """Migrated databases on one backend, built by Alembic; PostgreSQL ones dropped afterwards."""

    def __init__(self, backend: str, tmp_path) -> None:  # noqa: ANN001
        self.backend, self.tmp_path, self.made = backend, tmp_path, []

    async def __call__(self, database: str) -> str:
        template = await TEMPLATES.get(self.backend, database)
        if self.backend == "sqlite":
            path = self.tmp_path / f"{database}-{len(self.made)}.db"
            shutil.copyfile(template, path)
            url = f"sqlite+aiosqlite:///{path}"
        else:
            url = await create_postgres_database(template=template)
        self.made.append(url)
        return url

    async def drop(self) -> None:
        for url in self.made:
            if url.startswith("postgresql"):
                await drop_postgres_database(url)


@pytest.fixture
async def database_factory(backend, tmp_path):
    factory = DatabaseFactory(backend, tmp_path)
    try:
        yield factory
    finally:
        await factory.drop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_backend(request):
    """``backend`` for a module's shared fixtures: one app and store per module and backend, for
    tests that change nothing another test reads (an app built per test is a new database, on
    PostgreSQL a ``CREATE DATABASE`` and a ``DROP``, about 0.7 s)."""
    if request.param == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL is not answering")
    return request.param


@pytest.fixture(scope="module")
async def module_database_factory(module_backend, tmp_path_factory):
    """``database_factory`` on ``module_backend``, its databases kept for the module."""
    factory = DatabaseFactory(module_backend, tmp_path_factory.mktemp(f"module-{module_backend}"))
    try:
        yield factory
    finally:
        await factory.drop()


@pytest.fixture
async def pipeline_store(database_factory):
    """A migrated pipeline store on the test's backend, opened as its services open it."""
    async with migrated_store(database_factory, "pipeline") as db:
        yield db
