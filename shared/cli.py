"""The ``leadstream`` command."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Optional

import typer

from shared.settings import SERVICE_DATABASE, SERVICE_PORTS, Settings, get_settings

app = typer.Typer(help="Leadstream: one qualified pipeline from inbound and outbound.", no_args_is_help=True)

SERVICES = ("capture", "outreach", "qualification", "pipeline")


def available_services() -> list[str]:
    """The services whose package has an ``app.create_app``."""
    found = []
    for name in SERVICES:
        try:
            module = importlib.import_module(f"services.{name}.app")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "create_app"):
            found.append(name)
    return found


def _databases(settings: Settings) -> dict[str, str]:
    urls: dict[str, str] = {}
    from shared.migrate import MIGRATIONS

    for service in available_services():
        db = SERVICE_DATABASE[service]
        if db in MIGRATIONS and MIGRATIONS[db].exists():
            urls[db] = settings.database_url(service)
    return urls


@app.command()
def migrate() -> None:
    """Migrate every service's database to the latest schema."""
    from shared.migrate import upgrade

    settings = get_settings()
    for db, url in _databases(settings).items():
        upgrade(db, url)
        typer.echo(f"migrated {db}: {url.split('@')[-1]}", err=True)


@app.command()
def broker() -> None:
    """Run the embedded broker alone (Tansu, memory only) with every topic created."""
    from shared.broker import EmbeddedBroker

    settings = get_settings()
    host, _, port = settings.kafka_bootstrap_servers.rpartition(":")
    embedded = EmbeddedBroker(host or "127.0.0.1", int(port), log_file=sys.stderr)
    embedded.start(settings)
    typer.echo(f"embedded broker on {embedded.bootstrap} (cluster {embedded.cluster_id}); Ctrl-C stops it", err=True)
    _wait_for_signal()
    embedded.stop(graceful=False)


def _wait_for_signal() -> None:
    stop = {"now": False}

    def _handler(*_):  # noqa: ANN002
        stop["now"] = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    while not stop["now"]:
        time.sleep(0.2)


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="capture, outreach, qualification or pipeline")],
    port: Annotated[Optional[int], typer.Option(help="defaults to LEADSTREAM_<SERVICE>_PORT")] = None,
    host: Annotated[Optional[str], typer.Option()] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run one service (scale by running more processes)."""
    import uvicorn

    from shared.observability import configure_logging

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json, service=service)
    uvicorn.run(
        f"services.{service}.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port_of(service),
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@app.command()
def run() -> None:
    """Everything on one machine: migrate, the embedded broker (unless Kafka is external), every service."""
    from shared.broker import EmbeddedBroker

    settings = get_settings()
    migrate()
    embedded = None
    if settings.embedded_broker:
        embedded = EmbeddedBroker("127.0.0.1", 9092, log_file=sys.stderr)
        embedded.start(settings)
        typer.echo(f"embedded broker on {embedded.bootstrap} with topics created", err=True)
    else:
        typer.echo(f"using external Kafka at {settings.kafka_bootstrap_servers}; no broker started", err=True)
    procs: list[subprocess.Popen] = []
    try:
        for service in available_services():
            procs.append(subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", service], env=os.environ.copy()))
            typer.echo(f"{service} on http://{settings.host}:{settings.port_of(service)} (docs at /docs)", err=True)
        stop = {"now": False}

        def _handler(*_):  # noqa: ANN002
            stop["now"] = True

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        while not stop["now"]:
            if any(p.poll() is not None for p in procs):
                typer.echo("a service exited; stopping everything", err=True)
                break
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if embedded:
            embedded.stop()
        typer.echo("stopped", err=True)


if __name__ == "__main__":
    app()
