"""The ``bridge`` command line. It only wires settings and library calls together.

Exit codes: 0 success, 1 a checked failure (broken contracts, a rejected input), 2 bad usage or
settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bridge import __version__
from bridge.config import BridgeSettings, load_settings
from bridge.contracts import Registry, check_contracts, default_contracts_path
from bridge.errors import BridgeError, ConfigurationError
from bridge.topics import topic_name

__all__ = ["app", "main"]

app = typer.Typer(help="bridge: transactional outbox → Kafka → inbox, driven by event contracts.", no_args_is_help=True)
contracts_app = typer.Typer(help="Check and list the event contracts.", no_args_is_help=True)
db_app = typer.Typer(help="Migrations and grants of bridge's tables.", no_args_is_help=True)
outbox_app = typer.Typer(help="Inspect quarantined outbox rows and put them back in line.", no_args_is_help=True)
topics_app = typer.Typer(help="Provision topics from the catalog in topics/.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(db_app, name="db")
app.add_typer(outbox_app, name="outbox")
app.add_typer(topics_app, name="topics")

# Piped output (CI logs, grep) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="Contracts directory (default: BRIDGE_CONTRACTS_PATH, else the shipped contracts/)."),
]


def _settings() -> BridgeSettings:
    return load_settings()


def _contracts_dir(path: Path | None) -> Path:
    return path or _settings().contracts_path or default_contracts_path()


@app.command()
def version() -> None:
    """Print bridge's version."""
    out.print(__version__)


@contracts_app.command("check")
def contracts_check(path: PathOption = None) -> None:
    """Check the registry, the envelope schema and every payload schema; list every problem."""
    root = _contracts_dir(path)
    problems = check_contracts(root)
    if problems:
        err.print(f"[bold red]{len(problems)} problem(s)[/] in {root}:")
        for problem in problems:
            err.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    registry = Registry.load(root)
    versions = [v for e in registry.events.values() for v in e.versions.values()]
    schemas = sum(1 for v in versions if v.payload_schema)
    out.print(
        f"[green]contracts OK[/]: {len(registry.events)} event types, {len(versions)} schema versions, "
        f"{schemas} payload schemas, envelope v1 ({root})"
    )


@contracts_app.command("list")
def contracts_list(
    path: PathOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each event type: producer, consumers, versions with status, and its topic."""
    settings = _settings()
    registry = Registry.load(_contracts_dir(path))
    today = datetime.now(UTC).date()
    rows = []
    for name in sorted(registry.events):
        entry = registry.events[name]
        versions = []
        for number in sorted(entry.versions):
            v = entry.versions[number]
            status = "deprecated" if v.status == "active" and v.is_deprecated(today) else v.status
            if v.active_from and v.active_from > today:
                status += f" from {v.active_from}"
            versions.append({"version": number, "status": status, "payload_schema": v.payload_schema})
        rows.append(
            {
                "event_type": name,
                "producer": entry.producer,
                "consumers": list(entry.consumers),
                "versions": versions,
                "topic": topic_name(settings.topic_prefix, name),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} event types")
    for column in ("event type", "producer", "consumers", "versions", "topic"):
        table.add_column(column)
    for row in rows:
        versions = ", ".join(
            f"v{v['version']} {v['status']}" + ("" if v["payload_schema"] else " (no schema)") for v in row["versions"]
        )
        table.add_row(row["event_type"], row["producer"], ", ".join(row["consumers"]) or "-", versions, row["topic"])
    out.print(table)


# --- db -----------------------------------------------------------------------------------------


def _connect(settings: BridgeSettings, *, autocommit: bool = True):
    import psycopg

    return psycopg.connect(settings.database_url(), autocommit=autocommit, application_name="bridge-cli")


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade bridge's tables in BRIDGE_DATABASE__SCHEMA_NAME (safe to run concurrently)."""
    from bridge.outbox import migrate

    settings = _settings()
    with _connect(settings) as conn:
        applied = migrate(conn, settings.database.schema_name)
    schema = settings.database.schema_name
    out.print(f"applied {', '.join(map(str, applied))} in schema {schema}" if applied else f"schema {schema} is up to date")


@db_app.command("status")
def db_status() -> None:
    """Show the applied migration version."""
    from bridge.outbox import status

    settings = _settings()
    with _connect(settings) as conn:
        st = status(conn, settings.database.schema_name)
    pending = f", pending: {', '.join(map(str, st.pending))}" if st.pending else ""
    out.print(f"schema {st.schema}: version {st.current} of {st.latest}{pending}")
    if st.pending:
        raise typer.Exit(1)


@db_app.command("grants")
def db_grants(
    producer_role: Annotated[str | None, typer.Option(help="Role that emits (INSERT only).")] = None,
    relay_role: Annotated[str | None, typer.Option(help="Role the relay connects as.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Run the GRANTs instead of printing them.")] = False,
) -> None:
    """Print (or apply) the least-privilege GRANTs for a producer role and a relay role."""
    from bridge.outbox import grant_statements

    settings = _settings()
    statements = grant_statements(settings.database.schema_name, producer_role=producer_role, relay_role=relay_role)
    if not statements:
        raise typer.BadParameter("give --producer-role and/or --relay-role")
    if not apply:
        for statement in statements:
            print(statement.as_string() + ";")
        return
    with _connect(settings) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)
    out.print(f"applied {len(statements)} GRANT(s)")


# --- relay --------------------------------------------------------------------------------------


@app.command()
def relay(
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Publish the outbox to Kafka until SIGTERM/SIGINT (then finish in-flight work and exit 0)."""
    from bridge.observability import RelayMetrics, serve_metrics
    from bridge.relay import Relay, RelayOptions

    _setup_logging(log_level)
    settings = _settings()
    tuning = settings.relay
    options = RelayOptions(
        schema=settings.database.schema_name,
        topic_prefix=settings.topic_prefix,
        batch_size=tuning.batch_size,
        max_in_flight=tuning.max_in_flight,
        idle_interval=tuning.idle_interval,
        standby_interval=tuning.standby_interval,
        notify_channel=settings.notify_channel if tuning.notify else None,
        max_attempts=tuning.max_attempts,
        max_message_bytes=tuning.max_message_bytes,
        shutdown_timeout=tuning.shutdown_timeout,
    )
    metrics = RelayMetrics()
    if metrics_port is not None:
        serve_metrics(metrics.registry, metrics_port)
    worker = Relay(settings.database_url(), settings.kafka.client_config(), options, metrics=metrics)
    _stop_on_signals(worker.stop)
    worker.run()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _stop_on_signals(stop) -> None:
    def handler(signum, _frame) -> None:
        logging.getLogger("bridge").info("received %s: finishing in-flight work", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- outbox -------------------------------------------------------------------------------------


@outbox_app.command("failed")
def outbox_failed(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List quarantined outbox rows with their reasons."""
    from bridge.outbox import OutboxStore

    settings = _settings()
    with _connect(settings) as conn:
        rows = OutboxStore(conn, settings.database.schema_name).quarantined()
    if as_json:
        listing = [dataclasses.asdict(r) | {"failed_at": r.failed_at.isoformat()} for r in rows]
        print(json.dumps(listing, indent=2))
        return
    if not rows:
        out.print("no quarantined rows")
        return
    table = Table(title=f"{len(rows)} quarantined outbox row(s)")
    for column in ("id", "event id", "event type", "subject", "bytes", "failed at", "reason"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r.id), r.event_id, r.event_type, r.subject, str(r.size), r.failed_at.isoformat(timespec="seconds"), r.failure)
    out.print(table)


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox row ids (see bridge outbox failed).")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Re-queue every quarantined row.")] = False,
) -> None:
    """Put quarantined rows back in line; the relay sends them in their original order."""
    from bridge.outbox import OutboxStore

    if not ids and not all_rows:
        raise typer.BadParameter("give row ids or --all")
    settings = _settings()
    with _connect(settings) as conn:
        count = OutboxStore(conn, settings.database.schema_name).retry(None if all_rows else ids)
    out.print(f"re-queued {count} row(s)")


# --- topics -------------------------------------------------------------------------------------

CatalogOption = Annotated[Path | None, typer.Option("--catalog", help="Topic catalog (default: topics/catalog.toml).")]


def _plan(catalog_path: Path | None):
    from confluent_kafka.admin import AdminClient

    from bridge.topics import Catalog, desired_topics
    from bridge.topics.provisioning import plan_topics

    settings = _settings()
    registry = Registry.load(settings.contracts_path)
    wanted = desired_topics(Catalog.load(catalog_path), registry, settings.topic_prefix)
    admin = AdminClient(settings.kafka.client_config())
    return admin, plan_topics(admin, wanted), len(wanted)


def _print_plan(plan, total: int) -> None:
    for note in plan.notes:
        out.print(f"note: {note}")
    for change in plan.changes:
        out.print(str(change), markup=False, highlight=False, soft_wrap=True)
    if plan.empty:
        out.print(f"{total} topics match the catalog: nothing to do")


@topics_app.command("plan")
def topics_plan(catalog: CatalogOption = None) -> None:
    """Print how the cluster differs from the catalog."""
    _admin, plan, total = _plan(catalog)
    _print_plan(plan, total)


@topics_app.command("apply")
def topics_apply(
    catalog: CatalogOption = None,
    allow_destructive: Annotated[bool, typer.Option(help="Allow lowering retention or changing cleanup.policy.")] = False,
) -> None:
    """Create and alter topics to match the catalog (idempotent)."""
    from bridge.topics.provisioning import apply_plan

    admin, plan, total = _plan(catalog)
    _print_plan(plan, total)
    done = apply_plan(admin, plan, allow_destructive=allow_destructive)
    if done:
        out.print(f"applied {len(done)} change(s)")


def main() -> None:
    """Console-script entry point: run the app, turning bridge errors into a message and an exit code."""
    try:
        app()  # standalone mode: click handles usage errors and exit codes itself
    except ConfigurationError as exc:
        err.print(f"[bold red]configuration error:[/] {exc}", markup=True, highlight=False)
        sys.exit(2)
    except BridgeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)
