"""``bridge dev``: a local PostgreSQL and Kafka-compatible broker, without Docker; and ``bridge demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bridge.cli._common import EXIT_FAILED, out
from bridge.observability import setup_logging

__all__ = ["app", "demo"]

app = typer.Typer(help="A local PostgreSQL and Kafka-compatible broker, without Docker.", no_args_is_help=True)

StackDir = Annotated[Path, typer.Option("--dir", help="Where the stack keeps its state and data.")]


@app.command("up")
def up(
    directory: StackDir = Path(".bridge-dev"),
    broker: Annotated[str | None, typer.Option(help="tansu (default, no Java) or kafka (BRIDGE_DEV_BROKER).")] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Kafka nodes: 1 (default), or 3 for a cluster of combined broker+controller nodes (BRIDGE_DEV_NODES).",
        ),
    ] = None,
) -> None:
    """Start PostgreSQL and a broker (or a Kafka cluster) in the background, or whichever of them died,
    and write .env."""
    from bridge.devstack.stack import DevStack

    state, started = DevStack(directory).up(broker, nodes)
    what = ", ".join(started) if started else "nothing: everything already running"
    out.print(
        f"started {what}: PostgreSQL {state.database_url}, {state.broker} {state.bootstrap_servers}; settings in .env",
        highlight=False,
    )


@app.command("down")
def down(directory: StackDir = Path(".bridge-dev")) -> None:
    """Stop the services (every node of a Kafka cluster) and delete their data."""
    from bridge.devstack.stack import DevStack

    stopped = DevStack(directory).down()
    out.print(f"stopped {', '.join(stopped)} and deleted the data" if stopped else "nothing running")


@app.command("status")
def status(directory: StackDir = Path(".bridge-dev")) -> None:
    """Show each service of the dev stack: running or not, and where (exit 1 unless all run)."""
    from bridge.devstack.stack import DevStack

    report = DevStack(directory).status()
    if report is None:
        out.print("not set up (bridge dev up starts it)")
        raise typer.Exit(EXIT_FAILED)
    for name, running, where in report.services():
        out.print(f"{name}: {'running' if running else 'NOT running'} ({where})", highlight=False)
    if not report.all_running:
        raise typer.Exit(EXIT_FAILED)


def demo(
    events: Annotated[int, typer.Option(help="How many events the generator emits.")] = 1500,
    broker: Annotated[str | None, typer.Option(help="tansu (default) or kafka.")] = None,
) -> None:
    """Run the whole pipeline end to end on a throwaway local stack, then clean up."""
    from bridge.demo import run_demo

    setup_logging("ERROR")
    result = run_demo(events, console=out, broker=broker)
    if not result.complete:
        raise typer.Exit(EXIT_FAILED)
