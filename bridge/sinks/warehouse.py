"""The warehouse sink: every event the registry gives ``platform-warehouse``, landed once.

One table, ``{schema}.warehouse_events`` (created by ``bridge db migrate``): the envelope's columns,
the payload as ``jsonb``, and where the record was read (topic, partition, offset). One table rather
than one per type, so a new event type or version needs no migration; per-type views are a
``WHERE event_type = …`` away, and ``(event_type, occurred_at)`` is indexed.

Each poll lands as one multi-row ``INSERT … ON CONFLICT (event_id) DO NOTHING``: redelivered events
are absorbed by the primary key, so the sink needs no inbox.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
    insert = sql.SQL(
        "INSERT INTO {}.warehouse_events (event_id, event_type, schema_version, producer, tenant_id, subject, "
        'occurred_at, recorded_at, correlation_id, causation_id, payload, topic, "partition", "offset") '
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], "
        "%b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[], %b::jsonb[], %b::text[], %b::int[], "
        "%b::bigint[]) "
        "ON CONFLICT (event_id) DO NOTHING"
    ).format(sql.Identifier(schema))

    @app.batch_handler
    def land(deliveries: Sequence[Delivery], conn: psycopg.Connection[Any]) -> None:
        envelopes = [d.envelope for d in deliveries]
        conn.execute(
            insert,
            (
                [e.event_id for e in envelopes],
                [e.event_type for e in envelopes],
                [e.schema_version for e in envelopes],
                [e.producer for e in envelopes],
                [e.tenant_id for e in envelopes],
                [e.subject for e in envelopes],
                [e.occurred_at for e in envelopes],
                [e.recorded_at for e in envelopes],
                [e.correlation_id for e in envelopes],
                [e.causation_id for e in envelopes],
                [json.dumps(e.payload, separators=(",", ":")) for e in envelopes],
                [d.topic for d in deliveries],
                [d.partition for d in deliveries],
                [d.offset for d in deliveries],
            ),
        )

    return app
