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
dlq_app = typer.Typer(help="Inspect and replay dead-letter topics.", no_args_is_help=True)
inbox_app = typer.Typer(help="Maintain consumers' inbox tables.", no_args_is_help=True)
sink_app = typer.Typer(help="Land events outside Kafka.", no_args_is_help=True)
dev_app = typer.Typer(help="A local PostgreSQL and Kafka-compatible broker, without Docker.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(db_app, name="db")
app.add_typer(outbox_app, name="outbox")
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")
app.add_typer(inbox_app, name="inbox")
app.add_typer(sink_app, name="sink")
app.add_typer(dev_app, name="dev")

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
    from bridge.avro import check_evolution

    incompatible = check_evolution(registry)
    out.print(f"Avro evolution (newest reader, older writers): {len(incompatible)} incompatible pair(s)")
    for item in incompatible:
        out.print(f"  - {item}", markup=False, highlight=False, soft_wrap=True)


@contracts_app.command("avro")
def contracts_avro(
    path: PathOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the .avsc files.")] = Path("avro"),
) -> None:
    """Write the Avro schema of every (event_type, schema_version), derived from the contracts."""
    from bridge.avro import write_schemas

    written = write_schemas(Registry.load(_contracts_dir(path)), out_dir)
    out.print(f"wrote {len(written)} Avro schemas to {out_dir}")


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
    consumer_role: Annotated[str | None, typer.Option(help="Role a consumer connects as (inbox).")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Run the GRANTs instead of printing them.")] = False,
) -> None:
    """Print (or apply) the least-privilege GRANTs for producer, relay and consumer roles."""
    from bridge.outbox import grant_statements

    settings = _settings()
    statements = grant_statements(
        settings.database.schema_name, producer_role=producer_role, relay_role=relay_role, consumer_role=consumer_role
    )
    if not statements:
        raise typer.BadParameter("give --producer-role, --relay-role and/or --consumer-role")
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
        signer=settings.signing.signer(),
        avro=_avro_codec(settings) if settings.value_format == "avro" else None,
    )
    metrics = RelayMetrics()
    if metrics_port is not None:
        serve_metrics(metrics.registry, metrics_port)
    worker = Relay(settings.database_url(), settings.kafka.client_config(), options, metrics=metrics)
    _stop_on_signals(worker.stop)
    worker.run()


def _avro_codec(settings: BridgeSettings):
    from bridge.avro import AvroCodec

    return AvroCodec(Registry.load(settings.contracts_path))


def _setup_logging(level: str) -> None:
    """Text logs, or one JSON object per line with BRIDGE_LOG_FORMAT=json."""
    import os

    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("BRIDGE_LOG_FORMAT", "text").lower() == "json":
        from bridge.observability import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)


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


# --- consumers ----------------------------------------------------------------------------------

MetricsPort = Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")]
LogLevel = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


def _policy(settings: BridgeSettings):
    from bridge.consumer import ErrorPolicy

    tuning = settings.consumer
    return ErrorPolicy(
        max_attempts=tuning.max_attempts,
        backoff_initial=tuning.backoff_initial,
        backoff_max=tuning.backoff_max,
        unknown=tuning.unknown,
    )


def _verifier(settings: BridgeSettings):
    verifier = settings.signing.verifier()
    return verifier.check_message if verifier is not None else None


def _run_consumer(consumer_app, settings: BridgeSettings, metrics_port: int | None) -> None:
    from bridge.consumer import ConsumerRunner
    from bridge.observability import ConsumerMetrics, serve_metrics

    metrics = ConsumerMetrics()
    if metrics_port is not None:
        serve_metrics(metrics.registry, metrics_port)
    runner = ConsumerRunner(
        consumer_app,
        settings.database_url(),
        settings.kafka.client_config(),
        topic_prefix=settings.topic_prefix,
        schema=settings.database.schema_name,
        batch_size=settings.consumer.batch_size,
        metrics=metrics,
        verifier=_verifier(settings),
    )
    _stop_on_signals(runner.stop)
    runner.run()


@app.command()
def consume(
    target: Annotated[str, typer.Argument(help="module:attribute of a ConsumerApp (or a function returning one).")],
    metrics_port: MetricsPort = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run a consumer application with configuration from the environment, until SIGTERM/SIGINT."""
    import importlib

    from bridge.consumer import ConsumerApp

    _setup_logging(log_level)
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter("expected module:attribute, e.g. myapp.consumers:app")
    sys.path.insert(0, ".")
    consumer_app = getattr(importlib.import_module(module_name), attribute)
    if callable(consumer_app) and not isinstance(consumer_app, ConsumerApp):
        consumer_app = consumer_app()
    if not isinstance(consumer_app, ConsumerApp):
        raise typer.BadParameter(f"{target} is not a ConsumerApp")
    _run_consumer(consumer_app, _settings(), metrics_port)


@sink_app.command("warehouse")
def sink_warehouse(metrics_port: MetricsPort = None, log_level: LogLevel = "INFO") -> None:
    """Land every event the registry gives platform-warehouse in <schema>.warehouse_events."""
    from bridge.contracts import Contracts
    from bridge.sinks import warehouse_app

    _setup_logging(log_level)
    settings = _settings()
    consumer_app = warehouse_app(
        contracts=Contracts.load(settings.contracts_path), schema=settings.database.schema_name, policy=_policy(settings)
    )
    _run_consumer(consumer_app, settings, metrics_port)


@sink_app.command("files")
def sink_files(
    directory: Annotated[Path, typer.Option("--dir", help="Where the files go.")],
    fmt: Annotated[str, typer.Option("--format", help="avro (object container files) or jsonl.")] = "avro",
    max_bytes: Annotated[int, typer.Option(help="Roll a file at this size.")] = 64 * 1024 * 1024,
    max_seconds: Annotated[float, typer.Option(help="Roll files at this age.")] = 60.0,
    log_level: LogLevel = "INFO",
) -> None:
    """Land the warehouse's events as files, one stream per event type and version; offsets are
    committed only once the files holding the records are durable."""
    from bridge.contracts import Contracts
    from bridge.sinks import FileSink

    _setup_logging(log_level)
    if fmt not in ("avro", "jsonl"):
        raise typer.BadParameter("--format is avro or jsonl")
    settings = _settings()
    sink = FileSink(Contracts.load(settings.contracts_path), settings.kafka.client_config(), directory, fmt=fmt,
                    topic_prefix=settings.topic_prefix, max_bytes=max_bytes, max_seconds=max_seconds)
    _stop_on_signals(sink.stop)
    sink.run()


@inbox_app.command("prune")
def inbox_prune(
    consumer: Annotated[str, typer.Option(help="Consumer name whose inbox rows to prune.")],
    older_than: Annotated[str, typer.Option(help="Age, e.g. 14d, 36h, 90m.")],
    batch: Annotated[int, typer.Option(help="Rows deleted per transaction.")] = 5000,
) -> None:
    """Delete inbox rows older than a retention, in small batches that never block inserts."""
    from datetime import timedelta

    from bridge.consumer import Inbox

    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    if len(older_than) < 2 or older_than[-1] not in units or not older_than[:-1].isdigit():
        raise typer.BadParameter("use a number and a unit: 14d, 36h, 90m, 30s")
    cutoff = datetime.now(UTC) - timedelta(**{units[older_than[-1]]: int(older_than[:-1])})
    settings = _settings()
    with _connect(settings) as conn:
        deleted = Inbox(settings.database.schema_name, consumer).prune(conn, cutoff, batch=batch)
    out.print(f"pruned {deleted} inbox row(s) of {consumer} processed before {cutoff.isoformat(timespec='seconds')}")


# --- dlq ----------------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show how many records each DLQ topic holds."""
    from bridge.dlq import dlq_depths

    depths = dlq_depths(_settings().kafka.client_config())
    if as_json:
        print(json.dumps(depths, indent=2))
        return
    table = Table(title=f"{len(depths)} DLQ topic(s)")
    table.add_column("topic")
    table.add_column("records", justify="right")
    for topic, depth in depths.items():
        table.add_row(topic, str(depth))
    out.print(table)


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="A DLQ topic ({topic}.dlq.{consumer}).")],
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 20,
    event_type: Annotated[str | None, typer.Option(help="Only this event type.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show DLQ records decoded, with their error headers."""
    from bridge.dlq import read_dlq

    shown = 0
    for record in read_dlq(_settings().kafka.client_config(), topic):
        if event_type and record.event_type != event_type:
            continue
        summary = record.summary()
        if as_json:
            print(json.dumps(summary))
        else:
            out.print(f"[bold]{summary['dlq']}[/] event {summary['event_id']} ({summary['event_type']})", highlight=False)
            for key in ("original", "consumer", "error_class", "error_message", "attempts", "failed_at", "key", "value"):
                out.print(f"  {key}: {summary[key]}", markup=False, highlight=False, soft_wrap=True)
        shown += 1
        if shown >= limit:
            break
    if not as_json:
        out.print(f"{shown} record(s)")


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="A DLQ topic ({topic}.dlq.{consumer}).")],
    event_id: Annotated[list[str] | None, typer.Option("--event-id", help="Only these event ids (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(help="Only records dead-lettered at or after this RFC 3339 time.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be replayed.")] = False,
    rate: Annotated[float | None, typer.Option(help="At most this many records per second.")] = None,
) -> None:
    """Republish DLQ records to their original topic. Replaying twice is harmless (inbox)."""
    from bridge.dlq import replay
    from bridge.envelope import parse_timestamp

    cutoff = parse_timestamp(since) if since else None
    report = replay(
        _settings().kafka.client_config(), topic, event_ids=set(event_id) if event_id else None,
        since=cutoff, dry_run=dry_run, rate=rate,
    )
    verb = "would replay" if report.dry_run else "replayed"
    out.print(f"{verb} {len(report.replayed)} record(s), skipped {report.skipped}")
    for name in report.replayed:
        out.print(f"  {name}", highlight=False)


# --- dev stack ----------------------------------------------------------------------------------

StackDir = Annotated[Path, typer.Option("--dir", help="Where the stack keeps its state and data.")]


@dev_app.command("up")
def dev_up(
    directory: StackDir = Path(".bridge-dev"),
    broker: Annotated[str | None, typer.Option(help="tansu (default, no Java) or kafka (BRIDGE_DEV_BROKER).")] = None,
) -> None:
    """Start PostgreSQL and a broker in the background and write .env with the BRIDGE_* settings."""
    from bridge.devstack.stack import DevStack

    state, started = DevStack(directory).up(broker)
    out.print(("started" if started else "already running") + f": PostgreSQL {state.database_url}, "
              f"{state.broker} {state.bootstrap_servers}; settings in .env", highlight=False)


@dev_app.command("down")
def dev_down(directory: StackDir = Path(".bridge-dev")) -> None:
    """Stop the services and delete their data."""
    from bridge.devstack.stack import DevStack

    out.print("stopped" if DevStack(directory).down() else "nothing running")


@dev_app.command("status")
def dev_status(directory: StackDir = Path(".bridge-dev")) -> None:
    """Show whether the dev stack runs, and where."""
    from bridge.devstack.stack import DevStack

    state = DevStack(directory).status()
    if state is None:
        out.print("not running")
        raise typer.Exit(1)
    out.print(f"running: PostgreSQL {state.database_url}, {state.broker} {state.bootstrap_servers}", highlight=False)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Outbox backlog and age, consumer lag per group and topic, DLQ depth, inbox size."""
    from bridge.status import collect_status

    settings = _settings()
    report = collect_status(settings.database_url(), settings.database.schema_name, settings.kafka.client_config(),
                            settings.topic_prefix, Registry.load(settings.contracts_path))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(title=f"bridge status (schema {settings.database.schema_name}, prefix {settings.topic_prefix})")
    table.add_column("what")
    table.add_column("where")
    table.add_column("value", justify="right")
    if report.outbox_backlog is not None:
        table.add_row("outbox backlog", "", str(report.outbox_backlog))
        table.add_row("oldest unpublished", "", f"{report.outbox_oldest_age_seconds:.1f} s")
        table.add_row("quarantined", "", str(report.outbox_quarantined))
    for group, topics in report.consumer_lag.items():
        for topic, lag in sorted(topics.items()):
            table.add_row("consumer lag", f"{group} · {topic}", str(lag))
    for topic, depth in report.dlq_depth.items():
        table.add_row("DLQ depth", topic, str(depth))
    for consumer, size in report.inbox_size.items():
        table.add_row("inbox rows", consumer, str(size))
    out.print(table)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="How many events the generator emits.")] = 1500,
    broker: Annotated[str | None, typer.Option(help="tansu (default) or kafka.")] = None,
) -> None:
    """Run the whole pipeline end to end on a throwaway local stack, then clean up."""
    from bridge.demo import run_demo

    _setup_logging("ERROR")
    result = run_demo(events, console=out, broker=broker)
    if not result.complete:
        raise typer.Exit(1)


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
