"""``leadstream api-keys`` and ``leadstream webhooks``: credentials of the authenticated APIs.

An API key is written, hashed, to every database that checks keys (the outreach database
and the pipeline store) with the same id, so a key of one scope used on the other service
is recognised and answered ``403``, not ``401``. Webhook secrets live in the outreach
database, encrypted with ``LEADSTREAM_SECRETS_KEY`` (verifying an HMAC needs the secret).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Annotated

import typer
from sqlalchemy import select, update

from shared.api_keys import hash_key, new_key
from shared.settings import Settings

# a key's scopes: the APIs that check keys (each key is stored in all their databases: _key_databases)
SCOPES = ("outreach", "pipeline", "subscriptions", "privacy")

api_keys_app = typer.Typer(help="API keys of the outreach and pipeline APIs (only hashes are stored).",
                           no_args_is_help=True)
webhooks_app = typer.Typer(help="Signing secrets of the sales tools that push webhooks to outreach.",
                           no_args_is_help=True)


def _key_databases(settings: Settings) -> dict[str, tuple[str, type]]:
    """database name -> (url, key model) of every database that checks API keys, migrated."""
    from leadstream.registry import upgrade
    from pipeline_store.models import PipelineApiKey
    from services.outreach.models import OutreachApiKey

    databases = {
        "outreach": (settings.database_url("outreach"), OutreachApiKey),
        "pipeline": (settings.database_url("pipeline"), PipelineApiKey),
    }
    for name, (url, _) in databases.items():
        upgrade(name, url)  # a no-op when already at head
    return databases


def _outreach_database(settings: Settings) -> str:
    from leadstream.registry import upgrade

    url = settings.database_url("outreach")
    upgrade("outreach", url)
    return url


async def _in_each(databases: dict[str, tuple[str, type]], work) -> dict[str, object]:  # noqa: ANN001
    from shared.db import Database

    results = {}
    for name, (url, model) in databases.items():
        db = Database(url, pool_size=1)
        try:
            async with db.unit_of_work() as session:
                results[name] = await work(session, model)
        finally:
            await db.dispose()
    return results


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


# ---- api-keys ---------------------------------------------------------------------------


def create_api_key(settings: Settings, name: str, scopes: list[str]) -> tuple[str, str]:
    """Store a new key's hash in every key database; returns ``(id, key)``."""
    key, key_id, now = new_key(), str(uuid.uuid4()), datetime.now(timezone.utc)

    async def _add(session, model) -> None:  # noqa: ANN001
        session.add(model(id=key_id, name=name, scopes=" ".join(scopes), key_hash=hash_key(key),
                          prefix=key[:11], created_at=now))

    asyncio.run(_in_each(_key_databases(settings), _add))
    return key_id, key


@api_keys_app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key (a tool, a team).")],
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="outreach, pipeline, subscriptions or privacy; repeat for several (default: outreach)."),
    ] = None,
) -> None:
    """Create an API key and print it alone on stdout, once (only its hash is stored)."""
    scopes = list(dict.fromkeys(scope or ["outreach"]))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise typer.BadParameter(f"unknown scope {unknown[0]!r}; one of {', '.join(SCOPES)}", param_hint="--scope")
    name = name.strip()
    if not name or len(name) > 200:
        raise typer.BadParameter("give a name of 1 to 200 characters", param_hint="--name")
    key_id, key = create_api_key(Settings(), name, scopes)
    typer.echo(key)
    typer.echo(f"created API key {key_id} ({name}, scopes: {' '.join(scopes)}); it is not shown again", err=True)


@api_keys_app.command("list")
def api_keys_list() -> None:
    """Every key: id, name, scopes, prefix, created, revoked (never the key)."""

    async def _rows(session, model):  # noqa: ANN001, ANN202
        return (await session.execute(select(model).order_by(model.created_at))).scalars().all()

    found = asyncio.run(_in_each(_key_databases(Settings()), _rows))
    keys: dict[str, list] = {}
    for rows in found.values():
        for row in rows:
            seen = keys.setdefault(row.id, [row.id, row.name, row.scopes.replace(" ", ","), row.prefix + "…",
                                            _when(row.created_at), _when(row.revoked_at)])
            if row.revoked_at is not None and seen[5] == "-":
                seen[5] = _when(row.revoked_at)  # revoked in one database counts as revoked
    _table(["ID", "NAME", "SCOPES", "PREFIX", "CREATED", "REVOKED"], list(keys.values()))


@api_keys_app.command("revoke")
def api_keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see 'list').")]) -> None:
    """Revoke a key in every database (running services stop accepting it within seconds)."""
    now = datetime.now(timezone.utc)

    async def _revoke(session, model):  # noqa: ANN001, ANN202
        exists = (await session.execute(select(model.revoked_at).where(model.id == key_id))).first()
        if exists is None:
            return "missing"
        await session.execute(
            update(model).where(model.id == key_id, model.revoked_at.is_(None)).values(revoked_at=now)
        )
        return "revoked" if exists.revoked_at is None else "already"

    results = asyncio.run(_in_each(_key_databases(Settings()), _revoke))
    if all(r == "missing" for r in results.values()):
        typer.echo(f"no API key with id {key_id}", err=True)
        raise typer.Exit(1)
    state = "revoked" if "revoked" in results.values() else "was already revoked"
    typer.echo(f"API key {key_id} {state}", err=True)


# ---- webhooks ---------------------------------------------------------------------------


def create_webhook_secret(settings: Settings, integration: str) -> tuple[str, str]:
    """A new active signing secret for the integration; returns ``(id, secret)``."""
    from services.outreach.models import OutreachWebhookSecret
    from services.outreach.signatures import new_webhook_secret

    from shared.secrets import SecretBox

    secret, secret_id = new_webhook_secret(), str(uuid.uuid4())
    stored = SecretBox(settings.secrets_key).encrypt(secret)

    async def _add(session, model) -> None:  # noqa: ANN001
        session.add(model(id=secret_id, integration=integration, secret=stored, created_at=datetime.now(timezone.utc)))

    url = _outreach_database(settings)
    asyncio.run(_in_each({"outreach": (url, OutreachWebhookSecret)}, _add))
    return secret_id, secret


@webhooks_app.command("create-secret")
def webhooks_create_secret(
    integration: Annotated[str, typer.Option("--integration", help="The tool's name in the URL: /v1/webhooks/NAME.")],
) -> None:
    """Create a signing secret and print it alone on stdout, once. Earlier secrets of the
    integration stay valid until revoked (rotation without downtime)."""
    from services.outreach.signatures import INTEGRATION_NAME

    if not INTEGRATION_NAME.match(integration):
        raise typer.BadParameter("use 1 to 64 lower-case letters, digits, '-' or '_'", param_hint="--integration")
    secret_id, secret = create_webhook_secret(Settings(), integration)
    typer.echo(secret)
    typer.echo(f"created webhook secret {secret_id} for {integration}: POST /v1/webhooks/{integration}", err=True)


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Every webhook secret: id, integration, created, revoked (never the secret)."""
    from services.outreach.models import OutreachWebhookSecret

    async def _rows(session, model):  # noqa: ANN001, ANN202
        return (await session.execute(select(model).order_by(model.integration, model.created_at))).scalars().all()

    url = _outreach_database(Settings())
    rows = asyncio.run(_in_each({"outreach": (url, OutreachWebhookSecret)}, _rows))["outreach"]
    _table(["ID", "INTEGRATION", "CREATED", "REVOKED"],
           [[r.id, r.integration, _when(r.created_at), _when(r.revoked_at)] for r in rows])


@webhooks_app.command("revoke-secret")
def webhooks_revoke_secret(secret_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a webhook secret: signatures made with it are refused at once."""
    from services.outreach.models import OutreachWebhookSecret

    async def _revoke(session, model):  # noqa: ANN001, ANN202
        result = await session.execute(
            update(model)
            .where(model.id == secret_id, model.revoked_at.is_(None))
            .values(revoked_at=datetime.now(timezone.utc))
        )
        return result.rowcount

    url = _outreach_database(Settings())
    if not asyncio.run(_in_each({"outreach": (url, OutreachWebhookSecret)}, _revoke))["outreach"]:
        typer.echo(f"no active webhook secret with id {secret_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"webhook secret {secret_id} revoked", err=True)
