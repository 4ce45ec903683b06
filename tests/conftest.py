from __future__ import annotations

import pytest

from shared.broker import EmbeddedBroker, free_port
from shared.migrate import aupgrade
from tests.support import create_postgres_database, drop_postgres_database, postgres_available


@pytest.fixture(scope="session")
async def broker():
    """One Tansu broker per test session, on a free port, with every topic created."""
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


class DatabaseFactory:
    """Migrated databases on one backend, built by Alembic; PostgreSQL ones dropped afterwards."""

    def __init__(self, backend: str, tmp_path) -> None:  # noqa: ANN001
        self.backend, self.tmp_path, self.made = backend, tmp_path, []

    async def __call__(self, database: str) -> str:
        if self.backend == "sqlite":
            url = f"sqlite+aiosqlite:///{self.tmp_path / f'{database}-{len(self.made)}.db'}"
        else:
            url = await create_postgres_database()
        self.made.append(url)
        await aupgrade(database, url)
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
