"""``bridge inbox``, ``bridge status``: looking after a running pipeline."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bridge.cli._common import out, settings
from bridge.consumer.inbox import Inbox, minimum_retention
from bridge.errors import ConfigurationError
from bridge.postgres import connect
from bridge.status import collect_status
from bridge.wiring import contracts_of, kafka_clients, topic_catalog, topic_prefix

__all__ = ["doctor", "inbox_app", "status"]

inbox_app = typer.Typer(help="Maintain consumers' inbox tables.", no_args_is_help=True)

_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def _age(text: str) -> timedelta:
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise typer.BadParameter("use a number and a unit: 14d, 36h, 90m, 30s")
    return timedelta(**{_UNITS[text[-1]]: int(text[:-1])})


@inbox_app.command("prune")
def prune(
    consumer: Annotated[str, typer.Option(help="Consumer name whose inbox rows to prune.")],
    older_than: Annotated[str, typer.Option(help="Age, e.g. 30d, 36h, 90m.")],
    batch: Annotated[int, typer.Option(help="Rows deleted per transaction.")] = 5000,
    force: Annotated[bool, typer.Option("--force", help="Prune below the safe minimum retention anyway.")] = False,
) -> None:
    """Delete inbox rows older than a retention, in small batches that never block inserts.

    Refuses a window shorter than the safe minimum (the longest time an event can come back: its
    topics' and its DLQ's retention, from the topic catalog) unless --force."""
    config = settings()
    registry = contracts_of(config).registry
    registry.check_consumer(consumer)
    window = _age(older_than)
    minimum = minimum_retention(topic_catalog(config, registry), registry, consumer)
    if window < minimum and not force:
        raise ConfigurationError(
            f"--older-than {older_than} is shorter than the safe minimum for {consumer} ({minimum.days} days: the "
            "longest its topics or DLQ keep an event that could come back and be applied twice); use a longer "
            "window, or --force if you accept that"
        )
    cutoff = datetime.now(UTC) - window
    with connect(config.database_url(), application_name="bridge-cli") as conn:
        deleted = Inbox(config.database.schema_name, consumer).prune(conn, cutoff, batch=batch)
    out.print(f"pruned {deleted} inbox row(s) of {consumer} processed before {cutoff.isoformat(timespec='seconds')}")


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also show rows that are zero.")] = False,
) -> None:
    """Outbox backlog and age, consumer lag per group and topic, DLQ depth, inbox size, replication."""
    config = settings()
    registry = contracts_of(config).registry
    prefix = topic_prefix(config, registry)
    report = collect_status(
        config.database_url(),
        config.database.schema_name,
        kafka_clients(config),
        prefix,
        registry,
        timeout=config.kafka.request_timeout,
    )
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(
        title=f"bridge status (schema {config.database.schema_name}, prefix {prefix}, {report.brokers} broker(s))"
    )
    table.add_column("what")
    table.add_column("where")
    table.add_column("value", justify="right")
    hidden = 0

    def row(what: str, where: str, value: int | float, text: str | None = None) -> None:
        nonlocal hidden
        if value or show_all:
            table.add_row(what, where, text if text is not None else str(value))
        else:
            hidden += 1

    if report.outbox_backlog is not None:
        table.add_row("outbox backlog", "", str(report.outbox_backlog))
        table.add_row("oldest unpublished", "", f"{report.outbox_oldest_age_seconds or 0:.1f} s")
        row("quarantined", "", report.outbox_quarantined or 0)
    for group, topics in report.consumer_lag.items():
        for topic, lag in sorted(topics.items()):
            row("consumer lag", f"{group} · {topic}", lag)
    for topic, depth in report.dlq_depth.items():
        row("DLQ depth", topic, depth)
    for consumer, size in report.inbox_size.items():
        row("inbox rows", consumer, size)
    for where, problem in sorted(report.replication_problems.items()):
        table.add_row("replication", where, problem)
    out.print(table)
    if hidden:
        out.print(f"({hidden} zero row(s) hidden; --all shows them)")


def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check the settings, database, broker, topics and groups, and say what to fix.

    Contracts, migrations, topics against the catalog and consumer groups too. Exit 1 when a check
    fails."""
    from bridge.doctor import run_checks

    checks = run_checks(kafka_clients)
    if as_json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        marks = {"ok": "[green]  ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}
        for check in checks:
            out.print(f"{marks[check.verdict]}  {check.name}: {escape(check.detail)}", highlight=False, soft_wrap=True)
            if check.fix and check.verdict in ("fail", "warn"):
                out.print(f"       → {escape(check.fix)}", highlight=False, soft_wrap=True)
    if any(c.verdict == "fail" for c in checks):
        raise typer.Exit(1)
