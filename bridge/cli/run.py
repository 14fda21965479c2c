"""``bridge relay``, ``bridge consume`` and ``bridge sink``: the long-running services."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer

from bridge.cli._common import settings
from bridge.cli._service import run_service
from bridge.consumer import ConsumerApp
from bridge.errors import ConfigurationError
from bridge.observability import ConsumerMetrics, RelayMetrics, setup_logging
from bridge.wiring import (
    build_consumer,
    build_file_sink,
    build_relay,
    build_warehouse_sink,
    contracts_of,
    kafka_clients,
)

__all__ = ["consume", "load_app", "relay", "sink_app"]

MetricsPort = Annotated[int | None, typer.Option(help="Serve /metrics, /healthz and /readyz on this port.")]
MetricsHost = Annotated[str | None, typer.Option(help="Address the probe server binds (default 127.0.0.1).")]
LogLevel = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]

sink_app = typer.Typer(help="Land events outside Kafka.", no_args_is_help=True)


def relay(metrics_port: MetricsPort = None, metrics_host: MetricsHost = None, log_level: LogLevel = "INFO") -> None:
    """Publish the outbox to Kafka until SIGTERM/SIGINT (then let in-flight work land, within
    BRIDGE_RELAY__SHUTDOWN_TIMEOUT, and exit: 0, or 1 when events were left unconfirmed)."""
    config = settings()
    setup_logging(log_level, config.log_format)
    clients = kafka_clients(config)
    metrics = RelayMetrics()
    service = build_relay(config, clients=clients, metrics=metrics)
    run_service(
        service,
        config,
        registry=metrics.registry,
        clients=clients,
        shutdown_timeout=config.relay.shutdown_timeout,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    if service.unconfirmed_at_stop:
        raise typer.Exit(1)


def load_app(target: str) -> ConsumerApp:
    """``module:attribute`` → a ConsumerApp (the attribute, or what a no-argument factory returns)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{target!r}: expected module:attribute, e.g. myapp.consumers:app")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"{target!r}: cannot import {module_name!r} ({exc}); run from the directory that holds it or install it"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        public = ", ".join(n for n in dir(module) if not n.startswith("_")) or "nothing"
        raise ConfigurationError(f"{target!r}: module {module_name} has no {attribute!r} (it has: {public})") from None
    if isinstance(found, ConsumerApp):
        return found
    if callable(found):
        required = [
            p.name
            for p in inspect.signature(found).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if required:
            raise ConfigurationError(
                f"{target!r} is a function that needs argument(s) {', '.join(required)}: point at a ConsumerApp, "
                "or at a factory that takes no arguments"
            )
        made = found()
        if isinstance(made, ConsumerApp):
            return made
        raise ConfigurationError(f"{target!r} returned {type(made).__name__}, not a ConsumerApp")
    raise ConfigurationError(f"{target!r} is a {type(found).__name__}, not a ConsumerApp")


def consume(
    target: Annotated[str, typer.Argument(help="module:attribute of a ConsumerApp (or a function returning one).")],
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run a consumer application with configuration from the environment, until SIGTERM/SIGINT."""
    config = settings()
    setup_logging(log_level, config.log_format)
    app = load_app(target)
    clients = kafka_clients(config)
    metrics = ConsumerMetrics()
    runner = build_consumer(app, config, clients=clients, metrics=metrics)
    run_service(
        runner,
        config,
        registry=metrics.registry,
        clients=clients,
        shutdown_timeout=config.consumer.shutdown_timeout,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


@sink_app.command("warehouse")
def sink_warehouse(
    metrics_port: MetricsPort = None, metrics_host: MetricsHost = None, log_level: LogLevel = "INFO"
) -> None:
    """Land every event of the warehouse consumer in <schema>.warehouse_events."""
    config = settings()
    setup_logging(log_level, config.log_format)
    clients = kafka_clients(config)
    metrics = ConsumerMetrics()
    runner = build_warehouse_sink(config, clients=clients, metrics=metrics)
    run_service(
        runner,
        config,
        registry=metrics.registry,
        clients=clients,
        shutdown_timeout=config.consumer.shutdown_timeout,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


@sink_app.command("files")
def sink_files(
    directory: Annotated[Path, typer.Option("--dir", help="Where the files go.")],
    fmt: Annotated[str, typer.Option("--format", help="avro (object container files) or jsonl.")] = "avro",
    max_bytes: Annotated[int, typer.Option(help="Roll a file at this size.")] = 64 * 1024 * 1024,
    max_seconds: Annotated[float, typer.Option(help="Roll files at this age.")] = 60.0,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Land the warehouse's events as files, one stream per event type and version; offsets are
    committed only once the files holding the records are durable."""
    if fmt not in ("avro", "jsonl"):
        raise typer.BadParameter("--format is avro or jsonl")
    config = settings()
    setup_logging(log_level, config.log_format)
    clients = kafka_clients(config)
    sink = build_file_sink(
        config,
        directory,
        fmt=fmt,
        max_bytes=max_bytes,
        max_seconds=max_seconds,
        clients=clients,
        contracts=contracts_of(config),
    )
    from prometheus_client import CollectorRegistry

    run_service(
        sink,
        config,
        registry=CollectorRegistry(),
        clients=clients,
        shutdown_timeout=config.consumer.shutdown_timeout,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
