"""Issue 26.8: outreach's webhook secrets encrypted at rest; existing rows migrate; a copy
of the database no longer holds the secret; signed webhooks are still verified."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.outreach.app import create_app
from shared.db import Database
from leadstream.registry import DATABASES, aupgrade
from shared.migrate import alembic_config
from shared.secrets import DEVELOPMENT_KEY, SecretBox, new_key
from tests.integration.test_outreach_api import add_key, deliver, webhook
from tests.support import create_postgres_database, drop_postgres_database, make_settings, serve_app

PLAIN = "whsec_" + "plain-text-secret-" + uuid.uuid4().hex


@pytest.fixture
async def outreach_url(backend, tmp_path):
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'outreach.db'}"
        return
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


def database_files(url: str) -> bytes:
    """Everything a copy of a SQLite database takes: the file and its log."""
    path = Path(make_url(url).database)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


async def test_existing_secrets_are_encrypted_by_the_migration_and_still_verify(outreach_url, broker, tmp_path):
    await aupgrade("outreach", outreach_url, "0001")  # the schema that stored secrets in clear
    db = Database(outreach_url)
    try:
        async with db.unit_of_work() as s:
            await s.execute(text("INSERT INTO outreach_webhook_secrets (id, integration, secret, created_at) "
                                 "VALUES (:id, 'salesloft', :secret, :at)"),
                            {"id": str(uuid.uuid4()), "secret": PLAIN, "at": datetime.now(timezone.utc)})
    finally:
        await db.dispose()

    await aupgrade("outreach", outreach_url)

    db = Database(outreach_url)
    try:
        async with db.reader() as s:
            stored = (await s.execute(text("SELECT secret FROM outreach_webhook_secrets"))).scalar_one()
        assert stored != PLAIN and SecretBox(DEVELOPMENT_KEY).decrypt(stored) == PLAIN
        if db.sqlite:
            assert PLAIN.encode() not in database_files(outreach_url)
        else:
            async with db.reader() as s:
                dump = (await s.execute(text("SELECT t::text FROM outreach_webhook_secrets t"))).scalars().all()
            assert not any(PLAIN in row for row in dump)
    finally:
        await db.dispose()

    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=outreach_url))
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        client.headers["Authorization"] = f"Bearer {await add_key(client.runtime.db)}"
        assert (await deliver(client, "salesloft", webhook("evt_at_rest"), PLAIN)).status_code == 202
        assert (await deliver(client, "salesloft", webhook("evt_forged"), "whsec_guess")).status_code == 401

    # and back: the downgrade decrypts
    await asyncio.to_thread(command.downgrade, alembic_config(DATABASES["outreach"].migrations, outreach_url), "0001")
    db = Database(outreach_url)
    try:
        async with db.reader() as s:
            assert (await s.execute(text("SELECT secret FROM outreach_webhook_secrets"))).scalar_one() == PLAIN
    finally:
        await db.dispose()


async def test_a_secret_under_an_unknown_key_is_refused_not_an_error(outreach_url, broker, tmp_path):
    await aupgrade("outreach", outreach_url)
    db = Database(outreach_url)
    try:
        async with db.unit_of_work() as s:
            await s.execute(text("INSERT INTO outreach_webhook_secrets (id, integration, secret, created_at) "
                                 "VALUES (:id, 'salesloft', :secret, :at)"),
                            {"id": str(uuid.uuid4()), "secret": SecretBox(new_key()).encrypt(PLAIN),
                             "at": datetime.now(timezone.utc)})
    finally:
        await db.dispose()
    app = create_app(make_settings(broker.bootstrap, tmp_path, service="outreach", outreach_database_url=outreach_url))
    async with serve_app(app) as client:
        client.runtime = app.state.runtime
        answer = await deliver(client, "salesloft", webhook("evt_other_key"), PLAIN)
        # as if it had no secret (the log names the unreadable row), never a 500
        assert answer.status_code == 404 and PLAIN not in answer.text
