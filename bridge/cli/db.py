"""``bridge db``: migrations and grants of bridge's tables."""

from __future__ import annotations

from typing import Annotated

import typer

from bridge.cli._common import EXIT_FAILED, out, settings
from bridge.outbox import grant_statements, migrate, status
from bridge.postgres import connect

app = typer.Typer(help="Migrations and grants of bridge's tables.", no_args_is_help=True)


@app.command("migrate")
def migrate_() -> None:
    """Create or upgrade bridge's tables in BRIDGE_DATABASE__SCHEMA_NAME (safe to run concurrently)."""
    config = settings()
    schema = config.database.schema_name
    with connect(
        config.database_url(), application_name="bridge-cli", connect_timeout=config.database.connect_timeout
    ) as conn:
        applied = migrate(conn, schema)
    out.print(
        f"applied {', '.join(map(str, applied))} in schema {schema}" if applied else f"schema {schema} is up to date"
    )


@app.command("status")
def status_() -> None:
    """Show the applied migration version (exit 1 while migrations are pending)."""
    config = settings()
    with connect(
        config.database_url(), application_name="bridge-cli", connect_timeout=config.database.connect_timeout
    ) as conn:
        st = status(conn, config.database.schema_name)
    pending = f", pending: {', '.join(map(str, st.pending))}" if st.pending else ""
    out.print(f"schema {st.schema}: version {st.current} of {st.latest}{pending}")
    if st.pending:
        raise typer.Exit(EXIT_FAILED)


@app.command("grants")
def grants(
    producer_role: Annotated[str | None, typer.Option(help="Role that emits (INSERT only).")] = None,
    relay_role: Annotated[str | None, typer.Option(help="Role the relay connects as.")] = None,
    consumer_role: Annotated[str | None, typer.Option(help="Role a consumer connects as (inbox).")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Run the GRANTs instead of printing them.")] = False,
) -> None:
    """Print (or apply) the least-privilege GRANTs for producer, relay and consumer roles."""
    config = settings()
    statements = grant_statements(
        config.database.schema_name, producer_role=producer_role, relay_role=relay_role, consumer_role=consumer_role
    )
    if not statements:
        raise typer.BadParameter("give --producer-role, --relay-role and/or --consumer-role")
    if not apply:
        for statement in statements:
            print(statement.as_string(None) + ";")
        return
    with connect(config.database_url(), application_name="bridge-cli") as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)
    out.print(f"applied {len(statements)} GRANT(s)")
