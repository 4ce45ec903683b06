"""``leadstream privacy``: the data protection requests from the command line.

``export EMAIL`` prints what ``GET /v1/privacy/exports?email=`` answers; ``erase EMAIL`` asks
for an erasure as ``POST /v1/privacy/erasures`` does (written to the pipeline store, published
by a running pipeline service's or qualification worker's relay); both are audited as
``cli <user>``. ``status ID`` prints what ``GET /v1/privacy/erasures/{id}`` answers. Each
command is one function here over the service's own use case, so the API and the command
cannot disagree.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer

from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.db import Database

T = TypeVar("T")

privacy_app = typer.Typer(help="Data protection requests about one person: access (export), erasure.",
                          no_args_is_help=True)

EmailArgument = Annotated[str, typer.Argument(metavar="EMAIL", help="The person's email address (any form of it).")]


def checked_email(email: str) -> str:
    """The address as typed if it is one (``typer.BadParameter`` naming the problem: exit 2)."""
    from shared.identity import check_email

    try:
        return check_email(email)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="EMAIL") from None


def pipeline_store_url(settings: Settings) -> str:
    """The pipeline store's URL, migrated first (a no-op at head; blocking: call it outside a loop)."""
    from leadstream.registry import upgrade
    from pipeline_store import DATABASE

    url = settings.database_url(DATABASE)
    upgrade(DATABASE, url)
    return url


def with_pipeline_store(settings: Settings, use: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``use`` once over the (migrated) pipeline store: the command's own small engine,
    disposed after."""
    from shared.db import Database

    url = pipeline_store_url(settings)

    async def _run() -> T:
        db = Database(url, pool_size=1)
        try:
            return await use(db)
        finally:
            await db.dispose()

    return asyncio.run(_run())


def in_pipeline_store(settings: Settings, use: Callable[[AsyncSession], Awaitable[T]], *, write: bool = False) -> T:
    """Run ``use`` once in a session of the (migrated) pipeline store: a reader, or a unit of
    work with ``write``."""

    async def _use(db: Database) -> T:
        async with (db.unit_of_work() if write else db.reader()) as session:
            return await use(session)

    return with_pipeline_store(settings, _use)


def export_document(settings: Settings, email: str) -> dict:
    """The export of ``email`` as the API answers it (``ProblemError`` 404 when unknown),
    audited as ``cli <user>``'s access request."""
    from services.pipeline.privacy.service import audited_export

    async def _export(db: Database) -> dict:
        return (await audited_export(db, email, _actor())).model_dump(mode="json")

    return with_pipeline_store(settings, _export)


@privacy_app.command("export")
def privacy_export(email: EmailArgument) -> None:
    """Print everything the pipeline store holds about a person as one JSON document (exit 1 if unknown)."""
    from shared.errors import ProblemError

    try:
        document = export_document(Settings(), checked_email(email))
    except ProblemError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _actor() -> str:
    """Who asks, for the audit: the CLI's user."""
    try:
        return f"cli {getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "cli"


def request_erasure(settings: Settings, email: str) -> str:
    """Ask every store to erase the person of ``email``; the erasure's id."""
    from services.pipeline.privacy.erasures import request_erasure as request
    from shared.privacy import privacy_key

    privacy = privacy_key(settings)

    async def _request(session: AsyncSession) -> str:
        return (await request(session, privacy, email, _actor())).erasure_id

    return in_pipeline_store(settings, _request, write=True)


def erasure_document(settings: Settings, erasure_id: str) -> dict:
    """An erasure's progress as the API answers it (``ProblemError`` 404 when unknown)."""
    from services.pipeline.privacy.erasures import erasure_status

    async def _status(session: AsyncSession) -> dict:
        return (await erasure_status(session, erasure_id)).model_dump(mode="json")

    return in_pipeline_store(settings, _status)


@privacy_app.command("erase")
def privacy_erase(email: EmailArgument) -> None:
    """Erase a person from every store; prints the erasure's id (follow it with `privacy status ID`)."""
    from shared.privacy import MissingPrivacySecret

    try:
        typer.echo(request_erasure(Settings(), checked_email(email)))
    except MissingPrivacySecret as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@privacy_app.command("status")
def privacy_status(erasure_id: Annotated[str, typer.Argument(metavar="ID", help="The id `privacy erase` printed.")]
                   ) -> None:
    """An erasure's progress, store by store, as JSON (exit 1 if unknown)."""
    from shared.errors import ProblemError

    try:
        document = erasure_document(Settings(), erasure_id)
    except ProblemError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
