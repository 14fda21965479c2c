"""The ``bridge`` command line: one module per command group; it only wires settings to the library.

Every error is turned into a one-line message and an exit code (``bridge.cli._common``), never a
traceback, unless ``bridge --debug …``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated, Any

import psycopg
import typer
from rich.markup import escape
from typer.core import TyperGroup

from bridge import __version__
from bridge.cli import contracts, db, dev, dlq, maintenance, outbox, run, topics
from bridge.cli._common import EXIT_INTERRUPTED, CliOptions, err, exit_code_of, label_of, out
from bridge.errors import BridgeError
from bridge.postgres import classify_error

__all__ = ["app", "main"]


class _Commands(TyperGroup):
    """Every command's errors become a one-line message and an exit code (see ``_common``)."""

    def invoke(self, ctx: Any) -> Any:  # click.Context: typer vendors click, its class is private
        try:
            return super().invoke(ctx)
        except (BridgeError, psycopg.Error) as exc:
            error = classify_error(exc) if isinstance(exc, psycopg.Error) else exc
            options = ctx.find_object(CliOptions)
            logging.shutdown()
            if options is not None and options.debug:
                traceback.print_exc()
            err.print(f"[bold red]{label_of(error)}:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code_of(error)) from None


app = typer.Typer(
    cls=_Commands,
    help="bridge: transactional outbox → Kafka → inbox, driven by event contracts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    ctx.obj = CliOptions(debug=debug)


@app.command()
def version() -> None:
    """Print bridge's version."""
    out.print(__version__)


app.add_typer(contracts.app, name="contracts")
app.add_typer(db.app, name="db")
app.add_typer(outbox.app, name="outbox")
app.add_typer(topics.app, name="topics")
app.add_typer(dlq.app, name="dlq")
app.add_typer(maintenance.inbox_app, name="inbox")
app.add_typer(run.sink_app, name="sink")
app.add_typer(dev.app, name="dev")
app.command()(run.relay)
app.command()(run.consume)
app.command()(maintenance.status)
app.command()(maintenance.doctor)
app.command()(dev.demo)
app.command()(contracts.init)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="bridge")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
