"""The warehouse sink: every event the registry gives ``platform-warehouse``, landed once.

One table, ``{schema}.warehouse_events`` (created by ``bridge db migrate``): the envelope's columns,
the payload as ``jsonb``, and where the record was read (topic, partition, offset). One table rather
than one per type, so a new event type or version needs no migration; per-type views are a
``WHERE event_type = …`` away, and ``(event_type, occurred_at)`` is indexed.

Each poll lands in two statements: ``COPY`` into a temporary staging table (no WAL, no index),
then ``INSERT … SELECT … ON CONFLICT (event_id) DO NOTHING``: redelivered events are absorbed by
the primary key, so the sink needs no inbox.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from bridge.config import ErrorPolicy
from bridge.consumer.app import ConsumerApp, Delivery
from bridge.contracts import Contracts
from bridge.outbox.migrations import check_schema_name

__all__ = ["warehouse_app"]


def warehouse_app(*, contracts: Contracts, schema: str, policy: ErrorPolicy | None = None) -> ConsumerApp:
    """A :class:`ConsumerApp` for the contracts' warehouse consumer (``warehouse_consumer`` in
    ``contracts.toml``) that lands events in ``{schema}.warehouse_events``."""
    check_schema_name(schema)
    app = ConsumerApp(contracts.registry.warehouse_consumer, contracts=contracts, policy=policy, dedupe=False)
    app.schema_tables = ("warehouse_events",)  # made by bridge db migrate: checked at start
    table = sql.Identifier(schema, "warehouse_events")
    staging = sql.Identifier("bridge_warehouse_staging")
    create_staging = sql.SQL(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(staging, table)
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(staging, sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)))
    land_staged = sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT (event_id) DO NOTHING").format(table, staging)
    #: Connections whose session has the staging table (temporary tables live as long as the session).
    staged_on: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    @app.batch_handler
    def land(deliveries: Sequence[Delivery], conn: psycopg.Connection[Any]) -> None:
        if conn not in staged_on:
            conn.execute(create_staging)
            staged_on.add(conn)
        with conn.cursor().copy(copy) as rows:
            write = rows.write_row
            for d in deliveries:
                e = d.envelope
                write(
                    (
                        e.event_id,
                        e.event_type,
                        e.schema_version,
                        e.producer,
                        e.tenant_id,
                        e.subject,
                        e.occurred_at,
                        e.recorded_at,
                        e.correlation_id,
                        e.causation_id,
                        _json(e.payload),
                        d.topic,
                        d.partition,
                        d.offset,
                    )
                )
        conn.execute(land_staged)

    return app


_COLUMNS = (
    "event_id",
    "event_type",
    "schema_version",
    "producer",
    "tenant_id",
    "subject",
    "occurred_at",
    "recorded_at",
    "correlation_id",
    "causation_id",
    "payload",
    "topic",
    "partition",
    "offset",
)


def _json(payload: Any) -> str:
    return msgspec.json.encode(payload).decode()
