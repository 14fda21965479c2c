"""``bridge outbox``: quarantined outbox rows, and putting them back in line."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.table import Table

from bridge.cli._common import out, settings
from bridge.outbox import OutboxStore
from bridge.postgres import connect

app = typer.Typer(help="Inspect quarantined outbox rows and put them back in line.", no_args_is_help=True)


@app.command("failed")
def failed(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List quarantined outbox rows with their reasons."""
    config = settings()
    with connect(config.database_url(), application_name="bridge-cli") as conn:
        rows = OutboxStore(conn, config.database.schema_name).quarantined()
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
        table.add_row(
            str(r.id),
            r.event_id,
            r.event_type,
            r.subject,
            str(r.size),
            r.failed_at.isoformat(timespec="seconds"),
            r.failure,
        )
    out.print(table)


@app.command("retry")
def retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox row ids (see bridge outbox failed).")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Re-queue every quarantined row.")] = False,
) -> None:
    """Put quarantined rows back in line; the relay sends them in their original order."""
    if not ids and not all_rows:
        raise typer.BadParameter("give row ids or --all")
    config = settings()
    with connect(config.database_url(), application_name="bridge-cli") as conn:
        count = OutboxStore(conn, config.database.schema_name).retry(None if all_rows else ids)
    out.print(f"re-queued {count} row(s)")
