"""The inbox: which events a consumer has applied. Written in the handler's transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from bridge.consumer.app import Delivery
from bridge.contracts import Registry
from bridge.outbox.migrations import check_schema_name
from bridge.topics.catalog import Catalog

__all__ = ["Inbox", "minimum_retention"]


class Inbox:
    """Claims events for a consumer (``INSERT … ON CONFLICT DO NOTHING``) and prunes old rows.

    Array parameters go in binary (``%b``): in text format every element costs a regex escape.
    """

    def __init__(self, schema: str, consumer: str) -> None:
        self.schema = check_schema_name(schema)
        self.consumer = consumer
        table = sql.Identifier(schema, "inbox")
        claim = (
            'INSERT INTO {} (consumer, event_id, event_type, topic, "partition", "offset") '
            "SELECT %s, * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::bigint[]) "
            "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
        )
        self._claim = sql.SQL(claim).format(table)
        #: The same statement as text with ``%s`` placeholders, for other drivers (Django's cursor).
        self.claim_text = sql.SQL(claim.replace("%b", "%s")).format(table).as_string()
        # By primary key, not ctid: the consumer role may SELECT only the key and processed_at.
        self._prune = sql.SQL(
            "DELETE FROM {t} WHERE consumer = %s AND event_id IN "
            "(SELECT event_id FROM {t} WHERE consumer = %s AND processed_at < %s LIMIT %s)"
        ).format(t=table)

    def claim(self, conn: psycopg.Connection[Any], deliveries: Sequence[Delivery]) -> set[str]:
        """Record the deliveries in the current transaction; return the event ids seen for the first time."""
        if not deliveries:
            return set()
        return {row[0] for row in conn.execute(self._claim, self.parameters(deliveries)).fetchall()}

    async def claim_async(self, conn: psycopg.AsyncConnection[Any], deliveries: Sequence[Delivery]) -> set[str]:
        """:meth:`claim` on an asyncio connection."""
        if not deliveries:
            return set()
        cursor = await conn.execute(self._claim, self.parameters(deliveries))
        return {row[0] for row in await cursor.fetchall()}

    def parameters(self, deliveries: Sequence[Delivery]) -> tuple[Any, ...]:
        """The claim statement's parameters for ``deliveries`` (one array per column)."""
        return (
            self.consumer,
            [d.envelope.event_id for d in deliveries],
            [d.envelope.event_type for d in deliveries],
            [d.topic for d in deliveries],
            [d.partition for d in deliveries],
            [d.offset for d in deliveries],
        )

    def prune(
        self, conn: psycopg.Connection[Any], older_than: datetime, *, batch: int = 5000, pause: float = 0.0
    ) -> int:
        """Delete rows processed before ``older_than``, ``batch`` rows per short transaction.

        Each batch locks only the rows it deletes, so concurrent inserts never wait on it.
        """
        total = 0
        while True:
            with conn.transaction():
                deleted = conn.execute(self._prune, (self.consumer, self.consumer, older_than, batch)).rowcount
            total += deleted
            if deleted < batch:
                return total
            if pause:
                time.sleep(pause)


def minimum_retention(catalog: Catalog, registry: Registry, consumer: str) -> timedelta:
    """The shortest safe inbox retention for ``consumer`` (README, "Inbox retention"): an event can
    come back as long as a topic it reads keeps it, or its DLQ does (a replay)."""
    kept = [catalog.spec_for(t).retention_ms for t in registry.subscriptions(consumer)] + [catalog.dlq.retention_ms]
    if any(ms < 0 for ms in kept):
        return timedelta.max
    return timedelta(milliseconds=max(kept))
