"""The registry: every service and every database of Leadstream, in one place.

A **service** has a name (``leadstream serve NAME``, ``LEADSTREAM_<NAME>_PORT``), a default
port, the database it uses, its app factory and its settings class (the spine's ``Settings``
and the fields that service alone reads, in its ``settings.py``). A **database** has a name
(``LEADSTREAM_<NAME>_DATABASE_URL``, ``<data dir>/<name>.db``, Alembic's
``alembic_version_<name>`` table) and the package that holds its ``models.py`` and its
Alembic ``migrations/``.

The spine runs what these entries describe without knowing them: ``shared.migrate.upgrade``
takes a migrations directory, ``Settings.database_url`` and ``Settings.port_of`` take a
name. Adding a service is one ``Service`` here (and a ``Database`` if it owns one).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings


@dataclass(frozen=True)
class Database:
    name: str
    package: str  # holds models.py (its tables) and migrations/ (Alembic)

    @property
    def models(self) -> str:
        return f"{self.package}.models"

    @property
    def migrations(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"database {self.name}: no package {self.package}")
        return Path(next(iter(spec.submodule_search_locations))) / "migrations"


@dataclass(frozen=True)
class Service:
    name: str
    port: int  # the default; LEADSTREAM_<NAME>_PORT overrides it
    database: str  # a key of DATABASES
    app: str  # "module:factory", a function returning the FastAPI app (uvicorn --factory)
    settings: str = "shared.settings:Settings"  # "module:class", the Settings subclass the app is built with

    @property
    def settings_class(self) -> type[Settings]:
        module, _, name = self.settings.partition(":")
        found = getattr(importlib.import_module(module), name)
        if not (isinstance(found, type) and issubclass(found, Settings)):
            raise TypeError(f"service {self.name}: {self.settings} is not a Settings class")
        return found


DATABASES: dict[str, Database] = {d.name: d for d in (
    Database("capture", "services.capture"),
    Database("outreach", "services.outreach"),
    Database("pipeline", "pipeline_store"),  # the pipeline store: qualification writes it, pipeline reads it
)}

SERVICES: dict[str, Service] = {s.name: s for s in (
    Service("capture", 8001, "capture", "services.capture.app:create_app",
            "services.capture.settings:CaptureSettings"),
    Service("outreach", 8002, "outreach", "services.outreach.app:create_app",
            "services.outreach.settings:OutreachSettings"),
    Service("qualification", 8003, "pipeline", "services.qualification.app:create_app",
            "services.qualification.settings:QualificationSettings"),
    Service("pipeline", 8004, "pipeline", "services.pipeline.app:create_app",
            "services.pipeline.settings:PipelineSettings"),
    # webhook delivery: a consumer group of its own, deliveries stored in the pipeline store
    Service("webhooks", 8005, "pipeline", "services.webhooks.app:create_app",
            "services.webhooks.settings:WebhooksSettings"),
)}


def settings_of(service: str, **values: object) -> Settings:
    """The settings ``service`` runs with: its own class, from the environment (``values`` win)."""
    return SERVICES[service].settings_class(**values)


def setting_names() -> set[str]:
    """Every setting a process of Leadstream reads (fields: ``LEADSTREAM_<NAME>`` upper-cased):
    the spine's and each service's, not the per-name ``<name>_port`` and ``<name>_database_url``."""
    names = set(Settings.model_fields)
    for service in SERVICES.values():
        names |= set(service.settings_class.model_fields)
    return names


def port_of(settings: Settings, service: str) -> int:
    """The port ``service`` listens on: ``LEADSTREAM_<SERVICE>_PORT``, else its default."""
    return settings.port_of(service, SERVICES[service].port)


def database_url(settings: Settings, service: str) -> str:
    """The URL of the database that ``service`` uses."""
    return settings.database_url(SERVICES[service].database)


def upgrade(database: str, url: str, revision: str = "head") -> None:
    """Migrate ``database`` (a name in ``DATABASES``) at ``url`` to ``revision`` (blocking)."""
    from shared import migrate  # Alembic: only the commands that migrate pay for its import

    migrate.upgrade(DATABASES[database].migrations, url, revision)


async def unmigrated(database: str, url: str) -> str | None:
    """Why ``database`` at ``url`` is not at its latest schema (``None``: it is); creates nothing."""
    from shared import migrate

    return await migrate.unmigrated(DATABASES[database].migrations, url, database)


async def aupgrade(database: str, url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database, url, revision)
