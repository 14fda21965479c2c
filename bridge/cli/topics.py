"""``bridge topics``: provision the topics the catalog declares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bridge.cli._common import EXIT_FAILED, out, settings
from bridge.topics import desired_topics
from bridge.topics.catalog import Catalog
from bridge.topics.provisioning import Plan, apply_plan, plan_topics
from bridge.wiring import contracts_of, kafka_clients, topic_catalog, topic_prefix

app = typer.Typer(help="Provision topics from the topic catalog.", no_args_is_help=True)

CatalogOption = Annotated[
    Path | None,
    typer.Option("--catalog", help="Topic catalog (default: BRIDGE_TOPIC_CATALOG, else the contracts' one)."),
]


FitOption = Annotated[
    bool,
    typer.Option(
        "--fit-replication",
        help="Lower replication to the brokers the cluster has (single-node development clusters only; "
        "BRIDGE_TOPIC_FIT_REPLICATION). Without it, a catalog asking for more replicas than brokers is refused.",
    ),
]


def _print_plan(plan: Plan, total: int) -> None:
    for note in plan.notes:
        out.print(f"note: {note}")
    for change in plan.changes:
        out.print(str(change), markup=False, highlight=False, soft_wrap=True)
    if plan.empty:
        out.print(f"{total} topics match the catalog: nothing to do")


@app.command("plan")
def plan(
    catalog: CatalogOption = None,
    fit_replication: FitOption = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when changes are pending (for scripts and init containers).")
    ] = False,
) -> None:
    """Print how the cluster differs from the catalog."""
    config = settings()
    registry = contracts_of(config).registry
    loaded = Catalog.load(catalog) if catalog is not None else topic_catalog(config, registry)
    wanted = desired_topics(loaded, registry, topic_prefix(config, registry))
    admin = kafka_clients(config).admin()
    try:
        changes = plan_topics(
            admin,
            wanted,
            timeout=config.kafka.request_timeout,
            fit_replication=fit_replication or config.topic_fit_replication,
        )
    finally:
        admin.close()
    _print_plan(changes, len(wanted))
    if check and not changes.empty:
        raise typer.Exit(EXIT_FAILED)


@app.command("apply")
def apply(
    catalog: CatalogOption = None,
    fit_replication: FitOption = False,
    allow_destructive: Annotated[
        bool, typer.Option(help="Allow lowering retention or changing cleanup.policy.")
    ] = False,
) -> None:
    """Create and alter topics to match the catalog (idempotent)."""
    config = settings()
    registry = contracts_of(config).registry
    loaded = Catalog.load(catalog) if catalog is not None else topic_catalog(config, registry)
    wanted = desired_topics(loaded, registry, topic_prefix(config, registry))
    admin = kafka_clients(config).admin()
    try:
        changes = plan_topics(
            admin,
            wanted,
            timeout=config.kafka.request_timeout,
            fit_replication=fit_replication or config.topic_fit_replication,
        )
        _print_plan(changes, len(wanted))
        done = apply_plan(admin, changes, allow_destructive=allow_destructive)
    finally:
        admin.close()
    if done:
        out.print(f"applied {len(done)} change(s)")
