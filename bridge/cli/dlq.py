"""``bridge dlq``: how deep the DLQ topics are, what is in them, and replaying it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bridge.cli._common import out, settings
from bridge.dlq import dlq_depths, read_dlq, replay
from bridge.envelope import parse_timestamp
from bridge.errors import ConfigurationError
from bridge.wiring import contracts_of, kafka_clients, topic_prefix

app = typer.Typer(help="Inspect and replay dead-letter topics.", no_args_is_help=True)

TopicArgument = Annotated[str, typer.Argument(help="A DLQ topic ({topic}.dlq.{consumer}).")]


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list empty DLQ topics.")] = False,
) -> None:
    """Show how many records each DLQ topic holds (empty ones only with --all)."""
    config = settings()
    prefix = topic_prefix(config, contracts_of(config).registry)
    depths = dlq_depths(kafka_clients(config), prefix=prefix, timeout=config.kafka.request_timeout)
    shown = depths if show_all else {t: d for t, d in depths.items() if d}
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    hidden = len(depths) - len(shown)
    table = Table(
        title=f"{len(shown)} DLQ topic(s) with records" + (f" ({hidden} empty, --all shows them)" if hidden else "")
    )
    table.add_column("topic")
    table.add_column("records", justify="right")
    for topic, depth in shown.items():
        table.add_row(topic, str(depth))
    out.print(table)


@app.command("show")
def show(
    topic: TopicArgument,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 20,
    event_type: Annotated[str | None, typer.Option(help="Only this event type.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this dlq.reason (decode, invalid, unhandled, …).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show DLQ records decoded, with their error headers (and stack traces)."""
    shown = 0
    for record in read_dlq(kafka_clients(settings()), topic):
        if (event_type and record.event_type != event_type) or (reason and record.reason != reason):
            continue
        summary = record.summary()
        if as_json:
            print(json.dumps(summary))
        else:
            out.print(
                f"[bold]{summary['dlq']}[/] event {summary['event_id']} ({summary['event_type']})", highlight=False
            )
            for key in (
                "original",
                "consumer",
                "reason",
                "error_class",
                "error_message",
                "attempts",
                "failed_at",
                "key",
                "value",
                "stacktrace",
            ):
                if summary[key] is not None:
                    out.print(f"  {key}: {summary[key]}", markup=False, highlight=False, soft_wrap=True)
        shown += 1
        if shown >= limit:
            break
    if not as_json:
        out.print(f"{shown} record(s)")


@app.command("replay")
def replay_(
    topic: TopicArgument,
    event_id: Annotated[list[str] | None, typer.Option("--event-id", help="Only these event ids (repeatable).")] = None,
    reason: Annotated[
        list[str] | None, typer.Option("--reason", help="Only these dlq.reason values (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only records dead-lettered at or after this RFC 3339 time.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be replayed (event ids and reasons).")
    ] = False,
    rate: Annotated[float | None, typer.Option(help="At most this many records per second.")] = None,
    to_source: Annotated[
        bool, typer.Option("--to-source", help="Republish to the original topic: every group sees it again.")
    ] = False,
) -> None:
    """Send DLQ records back to the consumer that dead-lettered them (its replay topic, which no other
    group reads), or with --to-source to their original topic. Replaying twice is harmless (inbox)."""
    config = settings()
    try:
        cutoff = parse_timestamp(since) if since else None
    except ValueError as exc:
        raise ConfigurationError(f"--since: {exc}") from None
    report = replay(
        kafka_clients(config),
        topic,
        topic_prefix=topic_prefix(config, contracts_of(config).registry),
        event_ids=set(event_id) if event_id else None,
        reasons=set(reason) if reason else None,
        since=cutoff,
        dry_run=dry_run,
        rate=rate,
        to_source=to_source,
    )
    verb = "would replay" if report.dry_run else "replayed"
    out.print(f"{verb} {len(report.replayed)} record(s) to {report.target}, skipped {report.skipped}")
    for name, why in report.replayed:
        out.print(f"  {name}  ({why})", highlight=False)
