"""emit: write events to the outbox inside the caller's transaction.

The event commits or rolls back with the domain write that caused it. Before writing, emit applies
the registry's rules and validates envelope and payload, so nothing invalid ever reaches the outbox.

Per-subject order: emit takes a transaction-scoped advisory lock on each subject *before* the outbox
row gets its id, and holds it until commit. Two transactions emitting for one subject are therefore
serialized, and for each subject outbox id order equals commit order, which the relay relies on.

No skipped late commits: emit makes the transaction take its id (``pg_current_xact_id()``) before
any outbox id is drawn, so a relay read that passes over a not-yet-committed row always sees its
transaction in progress (see :mod:`bridge.outbox.source`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from psycopg.abc import Params

from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import OutboxError, ValidationError, Violation
from bridge.ids import new_event_id
from bridge.outbox.migrations import check_schema_name

__all__ = ["AsyncOutbox", "EventSpec", "Outbox"]

_TAKE_XID = sql.SQL("SELECT pg_current_xact_id()")

# psycopg's Query also admits t-string templates, which take no separate parameters.
_Statement: TypeAlias = tuple[sql.SQL | sql.Composed | str, Params]


@dataclass(frozen=True)
class EventSpec:
    """One event to emit, for :meth:`Outbox.emit_batch`."""

    event_type: str
    schema_version: int
    subject: str
    tenant_id: str
    payload: Mapping[str, Any]
    occurred_at: datetime | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class _OutboxBase:
    def __init__(
        self,
        contracts: Contracts,
        producer: str,
        *,
        schema: str = "bridge",
        notify_channel: str | None = None,
    ) -> None:
        """``producer`` is the domain emitting (from configuration, ``BRIDGE_PRODUCER``).

        ``notify_channel``: also ``NOTIFY`` the relay on commit. Off by default: NOTIFY takes a
        global lock at commit, which serializes the commits of every emitting transaction.
        """
        self.contracts = contracts
        self.producer = producer
        self.schema = check_schema_name(schema)
        self.notify_channel = notify_channel
        ident = sql.Identifier(schema)
        self._lock_sql = sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(s)) FROM unnest(%b::text[]) AS s")
        self._insert_sql = sql.SQL(
            "INSERT INTO {}.outbox "
            "(event_id, event_type, schema_version, subject, tenant_id, producer, value, headers, recorded_at) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], "
            "%b::bytea[], %b::jsonb[], %b::timestamptz[])"
        ).format(ident)
        self._lock_namespace = f"bridge.outbox:{schema}"

    def _prepare(self, specs: Sequence[EventSpec]) -> tuple[list[Envelope], list[_Statement]]:
        """Check and encode every event; return the envelopes and the statements that write them."""
        if not specs:
            return [], []
        recorded_at = datetime.now(UTC)
        headers = json.dumps(_trace_headers())
        envelopes, values = [], []
        for spec in specs:
            self.contracts.check_emit(spec.event_type, spec.schema_version, self.producer, today=recorded_at.date())
            # Checked, not trusted: a caller without a type checker can pass a list or a string.
            payload: object = spec.payload
            if not isinstance(payload, Mapping):
                kind = type(payload).__name__
                raise ValidationError(f"{spec.event_type} v{spec.schema_version} payload",
                                      [Violation("/payload", f"must be an object, got {kind}")])
            envelope = Envelope(
                event_id=new_event_id(),
                event_type=spec.event_type,
                schema_version=spec.schema_version,
                producer=self.producer,
                tenant_id=spec.tenant_id,
                subject=spec.subject,
                occurred_at=spec.occurred_at or recorded_at,
                recorded_at=recorded_at,
                payload=dict(spec.payload),
                correlation_id=spec.correlation_id,
                causation_id=spec.causation_id,
            )
            value = envelope.to_json()  # encoded once: validated, then stored as is
            self.contracts.validate_envelope(json.loads(value))
            envelopes.append(envelope)
            values.append(value)
        subjects = sorted({e.subject for e in envelopes})  # one lock order for all: no deadlocks
        columns = (
            [e.event_id for e in envelopes],
            [e.event_type for e in envelopes],
            [e.schema_version for e in envelopes],
            [e.subject for e in envelopes],
            [e.tenant_id for e in envelopes],
            [e.producer for e in envelopes],
            values,
            [headers] * len(envelopes),
            [e.recorded_at for e in envelopes],
        )
        statements: list[_Statement] = [
            (_TAKE_XID, ()),
            (self._lock_sql, (self._lock_namespace, subjects)),
            (self._insert_sql, columns),
        ]
        if self.notify_channel:
            statements.append(("SELECT pg_notify(%s, '')", (self.notify_channel,)))
        return envelopes, statements

    def _refuse_autocommit(self, autocommit: bool) -> None:
        if autocommit:
            raise OutboxError(
                "emit needs the caller's transaction, but the connection is in autocommit mode: the event "
                "would commit apart from the write that caused it. Use a non-autocommit connection "
                "(or `with conn.transaction():`)"
            )


class Outbox(_OutboxBase):
    """Emits events into the outbox through a synchronous psycopg connection."""

    def emit(
        self,
        conn: psycopg.Connection[Any],
        event_type: str,
        schema_version: int,
        subject: str,
        tenant_id: str,
        payload: Mapping[str, Any],
        *,
        occurred_at: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope:
        """Validate and write one event in ``conn``'s current transaction; return its envelope."""
        spec = EventSpec(
            event_type, schema_version, subject, tenant_id, payload, occurred_at, correlation_id, causation_id
        )
        return self.emit_batch(conn, [spec])[0]

    def emit_batch(self, conn: psycopg.Connection[Any], specs: Sequence[EventSpec]) -> list[Envelope]:
        """Validate every event first, then write them all in one round trip (or none)."""
        self._refuse_autocommit(conn.autocommit)
        envelopes, statements = self._prepare(specs)
        with conn.pipeline(), conn.cursor() as cur:
            for query, params in statements:
                cur.execute(query, params)
        return envelopes


class AsyncOutbox(_OutboxBase):
    """Emits events into the outbox through an asyncio psycopg connection."""

    async def emit(
        self,
        conn: psycopg.AsyncConnection[Any],
        event_type: str,
        schema_version: int,
        subject: str,
        tenant_id: str,
        payload: Mapping[str, Any],
        *,
        occurred_at: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope:
        """Validate and write one event in ``conn``'s current transaction; return its envelope."""
        spec = EventSpec(
            event_type, schema_version, subject, tenant_id, payload, occurred_at, correlation_id, causation_id
        )
        return (await self.emit_batch(conn, [spec]))[0]

    async def emit_batch(self, conn: psycopg.AsyncConnection[Any], specs: Sequence[EventSpec]) -> list[Envelope]:
        """Validate every event first, then write them all in one round trip (or none)."""
        self._refuse_autocommit(conn.autocommit)
        envelopes, statements = self._prepare(specs)
        async with conn.pipeline(), conn.cursor() as cur:
            for query, params in statements:
                await cur.execute(query, params)
        return envelopes


def _trace_headers() -> dict[str, str]:
    """The current W3C trace context (traceparent, tracestate), when OpenTelemetry has one."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {key: carrier[key] for key in ("traceparent", "tracestate") if key in carrier}
