"""``bridge contracts``: check, list and export the event contracts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bridge.cli._common import EXIT_FAILED, err, out, settings
from bridge.contracts import Registry, check_contracts, resolve_contracts_path
from bridge.topics.naming import topic_name
from bridge.wiring import topic_prefix

app = typer.Typer(help="Check, list and export the event contracts.", no_args_is_help=True)

PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="Contracts directory (default: BRIDGE_CONTRACTS_PATH, else the shipped contracts)."),
]


def contracts_dir(path: Path | None) -> Path:
    return path if path is not None else resolve_contracts_path(settings().contracts_path)


@app.command("check")
def check(path: PathOption = None) -> None:
    """Check the registry, the envelope schema and every payload schema; list every problem."""
    root = contracts_dir(path)
    problems = check_contracts(root)
    if problems:
        err.print(f"[bold red]{len(problems)} problem(s)[/] in {root}:")
        for problem in problems:
            err.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
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


@app.command("avro")
def avro(
    path: PathOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the .avsc files.")] = Path("avro"),
) -> None:
    """Write the Avro schema of every (event_type, schema_version), derived from the contracts."""
    from bridge.avro import write_schemas

    written = write_schemas(Registry.load(contracts_dir(path)), out_dir)
    out.print(f"wrote {len(written)} Avro schemas to {out_dir}")


@app.command("list")
def list_(
    path: PathOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each event type: producer, consumers, versions with status, and its topic."""
    registry = Registry.load(contracts_dir(path))
    prefix = topic_prefix(settings(), registry)
    today = datetime.now(UTC).date()
    rows: list[dict[str, Any]] = []
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
                "topic": topic_name(prefix, name),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} event types")
    for column in ("event type", "producer", "consumers", "versions", "topic"):
        table.add_column(column)
    for row in rows:
        listed = ", ".join(
            f"v{v['version']} {v['status']}" + ("" if v["payload_schema"] else " (no schema)") for v in row["versions"]
        )
        table.add_row(row["event_type"], row["producer"], ", ".join(row["consumers"]) or "-", listed, row["topic"])
    out.print(table)


def init(
    directory: Annotated[Path, typer.Argument(help="Where to write contracts/ and topics/.")],
    domain: Annotated[
        list[str], typer.Option("--domain", help="A producing domain (repeat; the first emits the example).")
    ],
    prefix: Annotated[str, typer.Option("--prefix", help="Topic prefix of your organisation.")] = "events.",
    warehouse: Annotated[
        str, typer.Option("--warehouse", help="The consumer the warehouse sinks run as.")
    ] = "warehouse",
) -> None:
    """Scaffold a contracts set of your own (registry, envelope, one example type) and a topic catalog."""
    from bridge.contracts.scaffold import Scaffold, scaffold

    written = scaffold(directory, Scaffold(tuple(domain), warehouse=warehouse, topic_prefix=prefix))
    out.print(f"wrote {len(written)} files under {directory}:", highlight=False)
    for path in written:
        out.print(f"  {path}", highlight=False)
    out.print(
        f"next: export BRIDGE_CONTRACTS_PATH={(directory / 'contracts').resolve()} && bridge contracts check",
        highlight=False,
    )
