"""``bridge contracts``: check (and gate changes to), list, export and generate code from the event contracts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bridge.cli._common import EXIT_FAILED, err, fail, out, settings
from bridge.contracts import Registry, check_contracts, resolve_contracts_path
from bridge.errors import ConfigurationError, Problem
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
def check(
    path: PathOption = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="REF|DIR",
            help="Also compare with a baseline (a git ref such as HEAD or origin/main, or a contracts directory): "
            "fail on published versions edited in place, removed types or versions, and new versions that break "
            "the compatibility mode.",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="Compatibility mode for --against: backward, forward, full (each optionally -transitive) or none "
            "(default: compatibility in contracts.toml).",
        ),
    ] = None,
    registry_url: Annotated[
        str | None,
        typer.Option(
            "--registry",
            metavar="URL",
            help="Also ask this Schema Registry whether each version is compatible with its subject "
            "(subject naming, format and auth from BRIDGE_SCHEMA_REGISTRY__*).",
        ),
    ] = None,
) -> None:
    """Check the registry, the envelope schema and every payload schema; list every problem.

    With --against, also the compatibility gate (for CI and pre-commit); with --registry, the Schema
    Registry's verdict. Exit 1 listing every problem as file#pointer: message.
    """
    root = contracts_dir(path)
    problems = check_contracts(root)
    if problems:
        _print_problems(f"{len(problems)} problem(s) in {root}", problems)
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
    failed = False
    if mode is not None and against is None:
        raise ConfigurationError("--mode applies to --against: give a baseline to compare with")
    if against is not None:
        failed |= _gate(registry, root, against, mode)
    if registry_url is not None:
        failed |= _registry_check(registry, registry_url)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _print_problems(title: str, problems: list[Problem]) -> None:
    err.print(f"[bold red]{title}[/]:")
    for problem in problems:
        err.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)


def _gate(registry: Registry, root: Path, against: str, mode: str | None) -> bool:
    from bridge.contracts.compatibility import MODES, baseline_contracts, check_compatibility

    if mode is not None and mode not in MODES:
        raise ConfigurationError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    with baseline_contracts(against, root) as (baseline, label):
        report = check_compatibility(registry, baseline, mode=mode, baseline_label=label)
    judged = ", ".join(f"{t} v{v} (against v{'/v'.join(str(o) for o in old)})" for t, v, old in report.judged)
    if report.problems:
        _print_problems(
            f"{len(report.problems)} incompatible change(s) against {label} (mode {report.mode})", report.problems
        )
        return True
    baseline_text = label if baseline is not None else f"{label} (no contracts there yet)"
    out.print(
        f"[green]compatible with {baseline_text}[/] (mode {report.mode}): "
        + (f"judged {judged}" if judged else "no new versions to judge"),
        highlight=False,
    )
    return False


def _registry_check(registry: Registry, url: str) -> bool:
    from bridge.schema_registry import check_registry, client_for

    configured = settings()
    registry_settings = configured.schema_registry
    report = check_registry(
        registry,
        client_for(registry_settings, url=url),
        topic_prefix=topic_prefix(configured, registry),
        strategy=registry_settings.subject_strategy,
        fmt=registry_settings.format,
        url=url,
    )
    for note in report.notes:
        out.print(f"  - {note}", markup=False, highlight=False, soft_wrap=True)
    if report.problems:
        _print_problems(f"{len(report.problems)} problem(s) against the Schema Registry {url}", report.problems)
        return True
    out.print(
        f"[green]Schema Registry {url}[/]: {len(report.registered)} version(s) registered as they are, "
        f"{len(report.new)} on subjects it does not have yet, none incompatible",
        highlight=False,
    )
    return False


@app.command("codegen")
def codegen(
    out_file: Annotated[
        Path, typer.Option("--out", help="The module to write (a .py file, or a directory for events.py).")
    ],
    path: PathOption = None,
    check_only: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the module is missing or out of date (CI).")
    ] = False,
) -> None:
    """Generate typed pydantic payload models: one per (event_type, schema_version)."""
    from bridge.contracts.codegen import module_source, write_models

    registry = Registry.load(contracts_dir(path))
    if check_only:
        target, wanted = module_source(registry, out_file)
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current != wanted:
            state = "missing" if current is None else "out of date"
            fail(f"{target} is {state}: run bridge contracts codegen --out {out_file}")
        out.print(f"{target} is up to date", highlight=False)
        return
    written = write_models(registry, out_file)
    out.print(f"wrote the payload models to {written}", highlight=False)


@app.command("asyncapi")
def asyncapi(
    path: PathOption = None,
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the document (.json, or .yaml with PyYAML).")
    ] = Path("asyncapi.json"),
    server: Annotated[
        list[str] | None,
        typer.Option("--server", metavar="NAME=HOST:PORT", help="A Kafka server to list (repeat)."),
    ] = None,
    value_format: Annotated[
        str | None,
        typer.Option(
            "--value-format",
            help="json, avro, registry-avro or registry-json (default: what the relay's settings write).",
        ),
    ] = None,
) -> None:
    """Write an AsyncAPI 3.0 document of every topic: a channel per event type with a message per
    version, the Kafka bindings, the consumers' group ids, the DLQ and replay channels."""
    from bridge.contracts.asyncapi import asyncapi_document, write_asyncapi
    from bridge.wiring import topic_catalog

    configured = settings()
    registry = Registry.load(contracts_dir(path))
    if value_format is None:
        registry_settings = configured.schema_registry
        value_format = f"registry-{registry_settings.format}" if registry_settings.url else configured.value_format
    if value_format not in ("json", "avro", "registry-avro", "registry-json"):
        raise ConfigurationError(f"--value-format {value_format!r}: json, avro, registry-avro or registry-json")
    servers = {}
    for item in server or []:
        name, sep, host = item.partition("=")
        if not sep or not name or not host:
            raise ConfigurationError(f"--server {item!r}: use NAME=HOST:PORT")
        servers[name] = host
    document = asyncapi_document(
        registry,
        topic_catalog(configured, registry),
        prefix=topic_prefix(configured, registry),
        value_format=value_format,  # type: ignore[arg-type]  # checked against the Literal above; mypy does not narrow a str by "in"
        servers=servers,
    )
    written = write_asyncapi(document, out_file)
    out.print(
        f"wrote AsyncAPI {document['asyncapi']} with {len(document['channels'])} channels and "
        f"{len(document['operations'])} operations to {written}",
        highlight=False,
    )


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
