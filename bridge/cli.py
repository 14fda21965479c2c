"""The ``bridge`` command line. It only wires settings and library calls together.

Exit codes: 0 success, 1 a checked failure (broken contracts, a rejected input), 2 bad usage or
settings.
"""

from __future__ import annotations

import json
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
app.add_typer(contracts_app, name="contracts")

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
