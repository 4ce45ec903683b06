"""Alembic: upgrade a database from a migrations directory (one per database).

Which databases exist and where their migrations live is the composition root's registry
(``leadstream.registry.upgrade(database, url)``); the spine only runs a directory it is given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.ext.asyncio import async_engine_from_config


def alembic_config(migrations: Path, url: str) -> Config:
    """The Alembic configuration of the migrations directory ``migrations`` (with its env.py)."""
    migrations = Path(migrations)
    if not (migrations / "env.py").is_file():
        raise ValueError(f"{migrations} is not a migrations directory (no env.py); "
                         "to migrate a database by its name use leadstream.registry.upgrade")
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(migrations: Path, url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` with the migrations in ``migrations`` to ``revision``
    (blocking; call from a thread inside a loop)."""
    command.upgrade(alembic_config(migrations, url), revision)


async def aupgrade(migrations: Path, url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, migrations, url, revision)


async def unmigrated(migrations: Path, url: str, database: str) -> str | None:
    """Why the database ``database`` at ``url`` is not at the head of ``migrations``, in a few
    words (``None``: it is). Creates nothing: a SQLite file that is not there "does not
    exist", it is not made an empty database."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.db.engine import sqlite_file

    path = sqlite_file(url)
    if path is not None and not Path(path).is_file():
        return "does not exist"
    head = ScriptDirectory.from_config(alembic_config(migrations, url)).get_current_head()
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(lambda sync: MigrationContext.configure(
                sync, opts={"version_table": f"alembic_version_{database}"}).get_current_revision())
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, not a database: said in one line
        return f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    finally:
        await engine.dispose()
    if current is None:
        return "is not migrated"
    if current != head:
        return f"is at migration {current}, not {head}"
    return None


def run_migrations(metadata: MetaData, database: str) -> None:
    """Body of every ``migrations/env.py``: online migrations over the async engine (the
    version table is ``alembic_version_<database>``, so databases may share one PostgreSQL
    database)."""
    config = context.config
    version_table = f"alembic_version_{database}"

    def _run(connection) -> None:  # noqa: ANN001
        if connection.dialect.name == "sqlite":
            # WAL is a property of the file: set it once here, so the first connections of a
            # service (writer and reader engines at once) never race to switch the journal
            # mode, which fails at once with "database is locked" instead of waiting.
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                          version_table=version_table, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return

    async def _online() -> None:
        from shared.db import is_sqlite

        url = config.get_main_option("sqlalchemy.url")
        if is_sqlite(url):
            from sqlalchemy.engine import make_url

            path = make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = async_engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
        async with engine.begin() as conn:  # commits what the migrations wrote, version stamp included
            await conn.run_sync(_run)
        if is_sqlite(url):
            # copy the log into the file and empty it: a migration that rewrote values (secrets
            # encrypted at rest) leaves no earlier page images behind in the -wal file
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        await engine.dispose()

    asyncio.run(_online())
