"""The ``leadstream`` command: every service and database of the registry, run and administered."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer

from leadstream.registry import DATABASES, SERVICES, port_of, settings_of
from shared import tracing
from shared.settings import get_settings

app = typer.Typer(help="Leadstream: one qualified pipeline from inbound and outbound.", no_args_is_help=True)


@app.command()
def migrate() -> None:
    """Migrate every service's database to the latest schema."""
    from leadstream.registry import upgrade

    settings = get_settings()
    for db in DATABASES:
        url = settings.database_url(db)
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


def _wait_for_signal(until=lambda: False) -> bool:  # noqa: ANN001
    """Block until Ctrl-C / SIGTERM (or ``until()`` is true); whether a signal came."""
    stop = {"now": False}

    def _handler(*_):  # noqa: ANN002
        stop["now"] = True

    previous = signal.signal(signal.SIGINT, _handler), signal.signal(signal.SIGTERM, _handler)
    try:
        while not stop["now"] and not until():
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    return stop["now"]


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="capture, outreach, qualification, pipeline or webhooks")],
    port: Annotated[int | None, typer.Option(help="defaults to LEADSTREAM_<SERVICE>_PORT")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run one service (scale by running more processes)."""
    import uvicorn

    from shared.observability import configure_logging

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    settings = settings_of(service)  # its own class: a bad value of one of its settings stops it here
    configure_logging(settings.log_level, settings.log_json, service=service)
    tracing.configure(service)
    uvicorn.run(
        SERVICES[service].app,
        factory=True,
        host=host or settings.host,
        port=port or port_of(settings, service),
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **settings.proxy_headers(),
    )


@app.command()
def run() -> None:
    """Everything on one machine: migrate, the embedded broker (unless Kafka is external), every service."""
    from shared.broker import EmbeddedBroker, _die_with_parent

    settings = get_settings()
    migrate()
    embedded = None
    if settings.embedded_broker:
        embedded = EmbeddedBroker("127.0.0.1", 9092, log_file=sys.stderr)
        embedded.start(settings)
        typer.echo(f"embedded broker on {embedded.bootstrap} with topics created", err=True)
    else:
        typer.echo(f"using external Kafka at {settings.kafka_bootstrap_servers}; no broker started", err=True)
    procs: dict[str, subprocess.Popen] = {}
    code = 1  # a service that does not start is a failure too
    try:
        for service in SERVICES:
            procs[service] = subprocess.Popen([sys.executable, "-m", "leadstream.cli", "serve", service],
                                              env=os.environ.copy(), preexec_fn=_die_with_parent)
            typer.echo(f"{service} on http://{settings.host}:{port_of(settings, service)} (docs at /docs)", err=True)
        code = supervise(procs)
    finally:
        _stop_all(procs.values())
        if embedded:
            embedded.stop()
        typer.echo("stopped", err=True)
    if code:
        raise typer.Exit(code)


def supervise(procs: dict[str, subprocess.Popen], wait=_wait_for_signal) -> int:  # noqa: ANN001
    """Wait for Ctrl-C / SIGTERM or for one of the services (by name) to exit; the exit code of
    ``leadstream run``: 0 when stopped by a signal, 1 when a service exited by itself (a bad
    configuration it refused, a crash), so a supervisor or a script sees the failure."""
    signalled = wait(until=lambda: any(p.poll() is not None for p in procs.values()))
    if signalled:  # Ctrl-C reaches the services too: their exits then are the stop asked for
        return 0
    exited = ", ".join(f"{name} (exit code {p.returncode})" for name, p in procs.items() if p.poll() is not None)
    typer.echo(f"a service exited: {exited}; stopping everything", err=True)
    return 1


def _stop_all(procs) -> None:  # noqa: ANN001
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# credentials of the authenticated APIs (API keys, webhook secrets): see leadstream/admin.py
from leadstream.admin import api_keys_app, webhooks_app  # noqa: E402

app.add_typer(api_keys_app, name="api-keys")
app.add_typer(webhooks_app, name="webhooks")

# data protection requests (access, erasure): see leadstream/privacy.py
from leadstream.privacy import privacy_app  # noqa: E402

app.add_typer(privacy_app, name="privacy")

secrets_app = typer.Typer(help="LEADSTREAM_SECRETS_KEY: the key that encrypts stored signing secrets.",
                          no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for LEADSTREAM_SECRETS_KEY (to rotate: put it first, keep the old one after a comma)."""
    from shared.secrets import new_key

    typer.echo(new_key())


events_app = typer.Typer(help="The events contract downstream teams build on.")
app.add_typer(events_app, name="events")


@events_app.command("asyncapi")
def events_asyncapi() -> None:
    """Print the AsyncAPI 3.0 document of every topic and event type (docs/events/asyncapi.yaml)."""
    from shared.asyncapi import render

    typer.echo(render(), nl=False)


topics_app = typer.Typer(help="Kafka topics: create them with the configured partitions, replication and "
                               "retention; read their last messages.")
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create(
    wait: Annotated[float, typer.Option(help="seconds to keep retrying while Kafka is not reachable yet")] = 60.0,
) -> None:
    """Create every topic and its DLQ (idempotent); print each topic's partitions and replicas.

    Run it once before the services start (the compose ``topics`` service, the k8s ``topics`` Job):
    a client that meets a missing topic would have the broker auto-create it with its defaults.
    """
    from shared.kafka import describe_topics, ensure_topics, topic_configs

    settings = get_settings()

    async def _create() -> dict[str, dict[str, int]]:
        deadline = time.monotonic() + wait
        while True:
            try:
                await ensure_topics(settings)
                return await describe_topics(settings)
            except Exception as exc:  # noqa: BLE001 - the broker may still be starting
                if time.monotonic() >= deadline:
                    raise
                typer.echo(f"Kafka at {settings.kafka_bootstrap_servers} not ready ({exc!r}); retrying", err=True)
                await asyncio.sleep(2)

    try:
        layout = asyncio.run(_create())
    except Exception as exc:  # noqa: BLE001
        typer.echo(f"could not create topics on {settings.kafka_bootstrap_servers}: {exc!r}", err=True)
        raise typer.Exit(1) from exc
    short = False
    for name, shape in sorted(layout.items()):
        configs = topic_configs(settings, name)
        typer.echo(
            f"{name}: partitions={shape['partitions']} replicas={shape['replicas']} "
            f"retention.ms={configs['retention.ms']} cleanup.policy={configs['cleanup.policy']}"
        )
        if shape["partitions"] < settings.kafka_partitions:
            short = True
            typer.echo(
                f"warning: {name} exists with {shape['partitions']} partitions, fewer than "
                f"LEADSTREAM_KAFKA_PARTITIONS={settings.kafka_partitions}; existing topics are not changed",
                err=True,
            )
    from shared.events import ALL_TOPICS

    missing = sorted(set(ALL_TOPICS) - set(layout))
    if missing:
        typer.echo(f"topics missing after creation: {', '.join(missing)}", err=True)
        raise typer.Exit(1)
    if short:
        typer.echo("(more partitions need `kafka-topics.sh --alter`; per-contact order moves with the keys)", err=True)



@topics_app.command("read")
def topics_read(
    topic: Annotated[str, typer.Argument(help="leads.captured, outreach.touches, opportunities.qualified, "
                                              "pipeline.changes, or one of their .dlq")],
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="the last N messages")] = 10,
    timeout: Annotated[float, typer.Option(help="seconds to give up after")] = 30.0,
) -> None:
    """Print the last messages of a topic, oldest first: partition/offset, key, then the CloudEvent.

    Reads without a consumer group, so no consumer's position moves.
    """
    from shared.events import ALL_TOPICS
    from shared.kafka import read_latest

    if topic not in ALL_TOPICS:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of {', '.join(ALL_TOPICS)}", param_hint="TOPIC")
    settings = get_settings()
    try:
        records = asyncio.run(read_latest(settings, topic, limit, timeout=timeout))
    except Exception as exc:  # noqa: BLE001 - unreachable broker, timeout: say so, exit 1
        typer.echo(f"could not read {topic} from {settings.kafka_bootstrap_servers}: {exc!r}", err=True)
        raise typer.Exit(1) from exc
    for r in records:
        key = r.key.decode(errors="replace") if r.key is not None else ""
        value = r.value.decode(errors="replace") if r.value is not None else ""
        typer.echo(f"{r.partition}/{r.offset} {key} {value}")
    if not records:
        typer.echo(f"{topic} is empty", err=True)


# ---- replay and rescore (qualification) ------------------------------------------------


def _outbox_models(database: str) -> list[type]:
    """The outbox tables of one database (found in its models module)."""
    from shared.outbox import OutboxMixin

    module = importlib.import_module(DATABASES[database].models)
    return [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, OutboxMixin) and obj is not OutboxMixin
        and getattr(obj, "__tablename__", None)
    ]


@app.command()
def replay(
    hours: Annotated[float | None, typer.Option(help="only events created in the last N hours "
                                                        "(default: the outbox retention window)")] = None,
) -> None:
    """Re-publish the retained outbox events of every database (consumers deduplicate by id).

    Marks the rows pending again; each service's relay publishes them (run it while the
    services run, or they publish at their next start).
    """
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from shared.db import Database
    from shared.outbox import ERASED

    settings = get_settings()
    window = settings.outbox_retention_hours if hours is None else hours
    since = datetime.now(timezone.utc) - timedelta(hours=window)

    async def _replay() -> int:
        total = 0
        for database in DATABASES:
            db = Database(settings.database_url(database), pool_size=1)
            try:
                for model in _outbox_models(database):
                    try:
                        async with db.unit_of_work() as session:
                            result = await session.execute(
                                update(model)
                                .where(model.published_at.is_not(None), model.created_at >= since,
                                       model.published_cluster.is_distinct_from(ERASED))  # never erased rows
                                .values(published_at=None, published_cluster=None)
                            )
                    except Exception as exc:  # noqa: BLE001 - e.g. a database not migrated yet
                        typer.echo(f"{database}.{model.__tablename__}: skipped ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200]})", err=True)
                        continue
                    count = result.rowcount or 0
                    total += count
                    typer.echo(f"{database}.{model.__tablename__}: {count} events queued for re-publishing")
            finally:
                await db.dispose()
        return total

    total = asyncio.run(_replay())
    typer.echo(f"{total} events will be re-published by the services' relays (last {window:g} h)", err=True)


@app.command()
def rescore(
    policy: Annotated[str | None, typer.Option(help="the scoring policy file (YAML) to apply")] = None,
    channels: Annotated[str | None, typer.Option(help="the channel rules file (YAML) to reclassify under")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would change; change nothing")] = False,
) -> None:
    """Re-score every contact's stored history under another policy version, and/or
    reclassify its inbound touches under other channel rules.

    --channels prints, per channel, the contacts and opportunities (by first and last touch)
    before and after; --policy how many contacts change grade or stage, by motion. Without
    --dry-run the new channels (and their rules' version) are stored (a reclassification
    publishes no event), and the new scores and forward stage moves with their events; the
    attribution credits and the sources rollups follow. With both, the channels are
    reclassified first.
    """
    from pathlib import Path

    from leadstream.registry import unmigrated
    from pipeline_store import DATABASE
    from services.qualification.domain.channels import ChannelRulesError, load_channel_rules
    from services.qualification.reclassify import RulesVersionConflict, reclassify_all
    from services.qualification.rescore import rescore_all
    from services.qualification.service import PolicyFileError, load_qualifier
    from shared.db import Database
    from shared.db.engine import sqlite_file

    if policy is None and channels is None:
        typer.echo("give --policy PATH, --channels PATH or both", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    try:
        rules = load_channel_rules(Path(channels)) if channels else None
        qualifier = load_qualifier(Path(policy), Path(channels) if channels else None) if policy else None
    except (PolicyFileError, ChannelRulesError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    url = settings.database_url(DATABASE)
    problem = asyncio.run(unmigrated(DATABASE, url))
    if problem:  # rescore reads history: an empty store made here would only hide the mistake
        typer.echo(f"the pipeline store at {sqlite_file(url) or url.split('@')[-1]} {problem}: set "
                   "LEADSTREAM_PIPELINE_DATABASE_URL to the store's URL, or run `leadstream migrate`", err=True)
        raise typer.Exit(1)

    async def run():  # noqa: ANN202
        db = Database(url, pool_size=2)
        try:
            reports = []
            if rules is not None:
                reports.append(await reclassify_all(db, rules, apply=not dry_run))
            if qualifier is not None:
                reports.append(await rescore_all(db, qualifier, apply=not dry_run))
            return reports
        finally:
            await db.dispose()

    try:
        reports = asyncio.run(run())
    except RulesVersionConflict as exc:  # checked before anything is read or changed
        typer.echo(f"{channels}: {exc}", err=True)
        raise typer.Exit(2) from None
    for report in reports:
        for line in report.lines():
            typer.echo(line)
    typer.echo("dry run: nothing changed" if dry_run else "applied", err=True)


channels_app = typer.Typer(help="Channel rules (channels.yaml): check a file before rolling it out.",
                           no_args_is_help=True)
app.add_typer(channels_app, name="channels")


@channels_app.command("check")
def channels_check(
    path: Annotated[str, typer.Argument(help="the channel rules file (YAML)")],
) -> None:
    """Load a channel rules file as qualification would at start: print its version and how
    many rules and lists it has (exit 0), or every problem (exit 2). Reads no database."""
    from services.qualification.domain.channels import ChannelRulesError, load_channel_rules

    try:
        rules = load_channel_rules(path)
    except ChannelRulesError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    rule_set = rules.rule_set
    typer.echo(f"{path}: channel rules {rules.version}: {len(rule_set.rules)} rules, {len(rule_set.lists)} lists, "
               f"default {rule_set.default}")


BALANCE_LINES = [  # (figure, label, how to show it)
    ("entrants", "entrants", "count"),
    ("fit_share", "fit share (A/B)", "percent"),
    ("qualified_opportunities", "qualified opportunities", "count"),
    ("share", "share of qualified pipeline", "percent"),
    ("pipeline_amount", "pipeline amount", "amount"),
    ("won", "won", "count"),
    ("won_amount", "won amount", "amount"),
    ("entrant_to_sql", "entrant -> sql", "percent"),
    ("sql_to_customer", "sql -> customer", "percent"),
    ("median_days_to_sql", "median days to sql", "number"),
    ("effort_per_sql", "effort per opportunity", "number"),
    ("recent_share", "share, last 28 days", "percent"),
    ("prior_share", "share, 28 days before", "percent"),
    ("share_change_pp", "change (points)", "signed"),
    ("assisted_share", "assisted by the other motion", "percent"),
]


def _shown(value: object, how: str) -> str:
    if value is None:
        return "-"
    if how == "percent":
        return f"{value * 100:.1f} %"
    if how == "amount":
        return f"{value:,.0f}"
    if how == "signed":
        return f"{value:+g}"
    if how == "number":
        return f"{value:g}"
    return f"{value:,}"


def balance_table(report: dict) -> str:
    """The balance answer as the terminal shows it: one column per motion, the diagnoses below."""
    rows = report["rows"]
    names = [r["motion"] + (" (apart)" if r["motion"] == "blended" else "") for r in rows]
    lines = [("", names)]
    for key, label, how in BALANCE_LINES:
        lines.append((label, [_shown(r[key], how) for r in rows]))
    efforts = [f"({r['effort_kind'].replace('_', ' ')})" if r["effort_kind"] else "" for r in rows]
    lines.insert(12, ("", efforts))
    width = max(len(label) for label, _ in lines)
    cells = [max(len(values[i]) for _, values in lines) for i in range(len(rows))]
    out = [f"Motion balance, first touch {report['from'] or 'from the start'} to {report['to'] or 'today'} "
           f"(trend: {report['trend']['prior']['from']} to {report['trend']['recent']['to']})", ""]
    for label, values in lines:
        out.append("  ".join([label.ljust(width), *(v.rjust(cells[i]) for i, v in enumerate(values))]).rstrip())
    out += ["", "Diagnoses:" if report["diagnoses"] else "Diagnoses: none"]
    out += [f"- {d['rule']}: {d['sentence']}" for d in report["diagnoses"]]
    return "\n".join(out)


@app.command()
def balance(
    from_: Annotated[str | None, typer.Option("--from", help="first touch on or after this day (2026-09-01)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="first touch on or before this day; the trend ends here")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="the API's JSON answer instead of the table")] = False,
) -> None:
    """Which motion the business needs more of: GET /v1/analytics/balance's answer as a table,
    read from the pipeline store (LEADSTREAM_PIPELINE_DATABASE_URL)."""
    import json

    from pydantic import ValidationError

    from pipeline_store import DATABASE
    from services.pipeline.app import balance_thresholds, dependency_thresholds
    from services.pipeline.schemas import BalanceQuery
    from services.pipeline.settings import PipelineSettings
    from services.pipeline.service import balance_analytics
    from shared.db import Database
    from shared.errors import ProblemError

    settings = PipelineSettings()
    try:
        query = BalanceQuery.model_validate({k: v for k, v in (("from", from_), ("to", to)) if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"--{error['loc'][0]}: {error['msg']}", err=True)
        raise typer.Exit(2) from None

    async def run() -> dict:
        db = Database(settings.database_url(DATABASE), pool_size=1)
        try:
            async with db.reader() as session:
                return await balance_analytics(session, query, dependency_thresholds(settings),
                                               balance_thresholds(settings))
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except ProblemError as exc:
        for error in exc.errors or []:
            typer.echo(f"--{error['field']}: {error['message']}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report, indent=2) if as_json else balance_table(report))


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="same seed, same history")] = 7,
    contacts: Annotated[int, typer.Option(help="how many people")] = 2000,
    api_key: Annotated[
        str | None, typer.Option(help="a key with outreach and pipeline scopes; created if absent")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    balanced: Annotated[bool, typer.Option("--balanced", help="both motions alike: no balance diagnosis fires")]
    = False,
) -> None:
    """Seed a realistic 90-day history through the public APIs (the services must be running).

    By default it leans on inbound and paid search while sales prospects a target list, so the
    balance diagnoses weak_control and the sources answer warns; --balanced seeds one where
    no balance diagnosis fires."""
    from leadstream.demo import plan, seed as seed_history

    settings = get_settings()
    if api_key is None:
        created = subprocess.run(
            [sys.executable, "-m", "leadstream.cli", "api-keys", "create", "--name", f"demo-seed-{seed}",
             "--scope", "outreach", "--scope", "pipeline"], capture_output=True, text=True, check=True,
        )
        api_key = created.stdout.strip()
    urls = {s: f"http://{host}:{port_of(settings, s)}" for s in ("capture", "outreach", "pipeline")}
    preview = plan(seed, contacts, __import__("datetime").datetime.now(__import__("datetime").timezone.utc),
                   balanced=balanced)
    total = len(preview.leads) + len(preview.prospects) + len(preview.touches)
    with typer.progressbar(length=total, label="seeding through the APIs", file=sys.stderr) as bar:
        result = asyncio.run(seed_history(
            capture_url=urls["capture"], outreach_url=urls["outreach"], pipeline_url=urls["pipeline"],
            api_key=api_key, seed_value=seed, contacts=contacts, progress=bar.update, balanced=balanced,
        ))
    typer.echo(", ".join(f"{k}: {v}" for k, v in result.items()), err=True)
    typer.echo(f"open http://{host}:{port_of(settings, 'pipeline')}/dashboard (sign in with the key above)", err=True)
    typer.echo(api_key)


if __name__ == "__main__":
    app()
