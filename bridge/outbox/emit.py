"""emit: write events to the outbox inside the caller's transaction.

    outbox = Outbox.from_settings(load_settings())          # BRIDGE_PRODUCER, the schema, the contracts
    with session.begin():                                   # SQLAlchemy, Django, psycopg, asyncpg…
        session.add(order)
        outbox.emit(session, "order.placed", 1, subject=order.id, tenant_id=t, payload={...})

The event commits or rolls back with the domain write that caused it. Before writing, emit applies
the registry's rules and validates envelope and payload, so nothing invalid ever reaches the outbox.

Per-subject order: emit takes a transaction-scoped advisory lock on each subject *before* the outbox
row gets its id, and holds it until commit. Two transactions emitting for one subject are therefore
serialized, and for each subject outbox id order equals commit order, which the relay relies on.

No skipped late commits: emit makes the transaction take its id (``pg_current_xact_id()``) before
any outbox id is drawn, so a relay that starts while it runs knows to watch it (see
:mod:`bridge.outbox.source`). Which connections emit can write through: :mod:`bridge.outbox.drivers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self, TypeAlias

from bridge.config import BridgeSettings, setting_name
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import ConfigurationError, ValidationError, Violation
from bridge.ids import new_event_id
from bridge.outbox.drivers import OutboxWrite, async_writer, sync_writer
from bridge.outbox.migrations import check_schema_name

__all__ = ["AsyncOutbox", "EventSpec", "Outbox", "Payload"]


class _Model(Protocol):
    """A typed payload model (``bridge contracts codegen`` makes pydantic ones)."""

    def model_dump(self, *, mode: str, exclude_none: bool, by_alias: bool) -> dict[str, Any]: ...


#: A payload: a JSON-ready mapping, or a model whose ``model_dump(mode="json")`` is one (so a
#: ``datetime`` or ``Decimal`` field is serialised the way its schema says).
Payload: TypeAlias = Mapping[str, Any] | _Model


@dataclass(frozen=True)
class EventSpec:
    """One event to emit, for :meth:`Outbox.emit_batch`."""

    event_type: str
    schema_version: int
    subject: str
    tenant_id: str
    payload: Payload
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
        self._lock_namespace = f"bridge.outbox:{schema}"

    @classmethod
    def from_settings(cls, settings: BridgeSettings, *, contracts: Contracts | None = None) -> Self:
        """The outbox ``BRIDGE_PRODUCER`` emits into: its schema, contracts and NOTIFY setting."""
        if not settings.producer:
            raise ConfigurationError(f"{setting_name('producer')} is not set: name the domain this process emits as")
        loaded = contracts or Contracts.load(settings.contracts_path)
        if settings.producer not in loaded.registry.domains:
            raise ConfigurationError(
                f"{setting_name('producer')}={settings.producer!r} is not a domain of the contracts "
                f"({', '.join(sorted(loaded.registry.domains))})"
            )
        return cls(
            loaded,
            settings.producer,
            schema=settings.database.schema_name,
            notify_channel=settings.notify_channel if settings.relay.notify else None,
        )

    def prepare(self, specs: Sequence[EventSpec]) -> tuple[list[Envelope], OutboxWrite]:
        """Check and encode every event (nothing is written): the envelopes and what to write."""
        recorded_at = datetime.now(UTC)
        headers = json.dumps(_trace_headers())
        envelopes, values = [], []
        for spec in specs:
            self.contracts.check_emit(spec.event_type, spec.schema_version, self.producer, today=recorded_at.date())
            envelope = Envelope(
                event_id=new_event_id(),
                event_type=spec.event_type,
                schema_version=spec.schema_version,
                producer=self.producer,
                tenant_id=spec.tenant_id,
                subject=spec.subject,
                occurred_at=spec.occurred_at or recorded_at,
                recorded_at=recorded_at,
                payload=_payload(spec),
                correlation_id=spec.correlation_id,
                causation_id=spec.causation_id,
            )
            value = envelope.to_json()  # encoded once: validated, then stored as is
            self.contracts.validate_envelope(json.loads(value))
            envelopes.append(envelope)
            values.append(value)
        write = OutboxWrite(
            schema=self.schema,
            lock_namespace=self._lock_namespace,
            subjects=sorted({e.subject for e in envelopes}),  # one lock order for all: no deadlocks
            event_ids=[e.event_id for e in envelopes],
            event_types=[e.event_type for e in envelopes],
            schema_versions=[e.schema_version for e in envelopes],
            row_subjects=[e.subject for e in envelopes],
            tenant_ids=[e.tenant_id for e in envelopes],
            producers=[e.producer for e in envelopes],
            values=values,
            headers=[headers] * len(envelopes),
            recorded_at=[e.recorded_at for e in envelopes],
            notify_channel=self.notify_channel,
        )
        return envelopes, write


class Outbox(_OutboxBase):
    """Emits events into the outbox through the caller's synchronous connection: psycopg 3,
    psycopg2, a SQLAlchemy ``Session``/``Connection`` or Django's connection."""

    def emit(
        self,
        conn: object,
        event_type: str,
        schema_version: int,
        subject: str,
        tenant_id: str,
        payload: Payload,
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

    def emit_batch(self, conn: object, specs: Sequence[EventSpec]) -> list[Envelope]:
        """Validate every event first, then write them all (one round trip on psycopg), or none."""
        writer = sync_writer(conn)
        if not specs:
            return []
        envelopes, write = self.prepare(specs)
        writer.write(write)
        return envelopes


class AsyncOutbox(_OutboxBase):
    """Emits events through the caller's asyncio connection: psycopg 3 ``AsyncConnection``,
    asyncpg, or SQLAlchemy's ``AsyncSession``/``AsyncConnection``."""

    async def emit(
        self,
        conn: object,
        event_type: str,
        schema_version: int,
        subject: str,
        tenant_id: str,
        payload: Payload,
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

    async def emit_batch(self, conn: object, specs: Sequence[EventSpec]) -> list[Envelope]:
        """Validate every event first, then write them all, or none."""
        writer = async_writer(conn)
        if not specs:
            return []
        envelopes, write = self.prepare(specs)
        await writer.write(write)
        return envelopes


def _payload(spec: EventSpec) -> dict[str, Any]:
    """The payload as a JSON-ready dict: a mapping, or a model (pydantic) turned into one."""
    payload: object = spec.payload
    dump = getattr(payload, "model_dump", None)
    if callable(dump):
        dumped = dump(mode="json", exclude_none=False, by_alias=True)
        if isinstance(dumped, dict):
            return dumped
    if isinstance(payload, Mapping):
        return dict(payload)
    # Checked, not trusted: a caller without a type checker can pass a list or a string.
    raise ValidationError(
        f"{spec.event_type} v{spec.schema_version} payload",
        [Violation("/payload", f"must be an object, got {type(payload).__name__}")],
    )


def _trace_headers() -> dict[str, str]:
    """The current W3C trace context (traceparent, tracestate), when OpenTelemetry has one."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return {}
    if not trace.get_current_span().get_span_context().is_valid:
        return {}  # no trace here: the propagators would inject nothing, slowly
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {key: carrier[key] for key in ("traceparent", "tracestate") if key in carrier}
