"""A consumer application: the handlers of one consuming domain.

Pure: knows the contracts, not Kafka or a running database.

    app = ConsumerApp("sales")

    @app.handler("credit.released", version=2)
    def on_released(event: Envelope, conn: psycopg.Connection) -> None:
        conn.execute("UPDATE leads SET … WHERE …", (...))   # commits with the inbox row

The group id is ``{topic_prefix}{consumer}``; the topics are those whose registry entry lists the
consumer. A handler receives the validated envelope and the consumer's connection, inside the
transaction that also writes the inbox row.

Every subscribed event is handled, skipped on purpose (:meth:`ConsumerApp.skip`) or, when no
handler knows its type or version (a rolling deploy, a new version), kept: dead-lettered with the
reason ``unhandled`` so ``bridge dlq replay --reason unhandled`` brings it back after an upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bridge.config import ErrorPolicy
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import ConfigurationError

__all__ = ["BatchHandler", "ConsumerApp", "Delivery", "Handler"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event, where it was read from, and the W3C trace context it carried (if any)."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    trace: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


Handler = Callable[[Envelope, "psycopg.Connection[Any]"], object]
BatchHandler = Callable[[Sequence[Delivery], "psycopg.Connection[Any]"], object]


class ConsumerApp:
    """The handlers of one consumer (a domain, or the warehouse loader)."""

    def __init__(
        self,
        consumer: str,
        *,
        contracts: Contracts | None = None,
        policy: ErrorPolicy | None = None,
        dedupe: bool = True,
    ) -> None:
        """``contracts``: default ``BRIDGE_CONTRACTS_PATH``, else the shipped ones. ``policy``:
        default the runner's settings (``BRIDGE_CONSUMER__*``). ``dedupe=False`` skips the inbox:
        only for handlers that are idempotent on their own (the warehouse sink's
        ``ON CONFLICT DO NOTHING`` on event_id)."""
        self.contracts = contracts or Contracts.load()
        self.consumer = self.contracts.registry.check_consumer(consumer)
        self.policy = policy
        self.dedupe = dedupe
        #: Handlers may run in psycopg pipeline mode (statements sent without waiting for results).
        self.pipeline = True
        self._handlers: dict[tuple[str, int | None], Handler] = {}
        self._skipped: dict[tuple[str, int | None], str] = {}
        self._batch_handler: BatchHandler | None = None

    @property
    def subscriptions(self) -> list[str]:
        """The event types the registry gives this consumer."""
        return self.contracts.registry.subscriptions(self.consumer)

    def _check_subscribed(self, event_type: str, version: int | None) -> None:
        if event_type not in self.subscriptions:
            raise ConfigurationError(
                f"the registry does not list {self.consumer!r} as a consumer of {event_type!r}; "
                f"its subscriptions: {', '.join(self.subscriptions) or 'none'}"
            )
        if version is not None and self.contracts.registry.lookup(event_type, version) is None:
            raise ConfigurationError(f"{event_type!r} has no registered version {version}")

    def handler(self, event_type: str, version: int | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for an event type (every version, or one)."""
        self._check_subscribed(event_type, version)

        def register(function: Handler) -> Handler:
            key = (event_type, version)
            if key in self._handlers:
                label = f" v{version}" if version else ""
                raise ConfigurationError(f"a handler for {event_type}{label} exists")
            self._handlers[key] = function
            return function

        return register

    def skip(self, event_type: str, version: int | None = None, *, reason: str = "not needed") -> None:
        """Acknowledge events of this type (every version, or one) without applying them: an
        explicit choice, logged and counted for every event skipped."""
        self._check_subscribed(event_type, version)
        self._skipped[(event_type, version)] = reason

    def batch_handler(self, function: BatchHandler) -> BatchHandler:
        """Register one handler for every subscribed event, called with a batch of deliveries."""
        self._batch_handler = function
        return function

    def resolve(self, event_type: str, version: int) -> Handler | None:
        """The handler for an event, the version-specific one first."""
        return self._handlers.get((event_type, version)) or self._handlers.get((event_type, None))

    def skip_reason(self, event_type: str, version: int) -> str | None:
        """Why events of this type and version are skipped on purpose, or ``None``."""
        return self._skipped.get((event_type, version)) or self._skipped.get((event_type, None))

    @property
    def batch(self) -> BatchHandler | None:
        return self._batch_handler

    def handles(self, event_type: str, version: int) -> bool:
        return self._batch_handler is not None or self.resolve(event_type, version) is not None

    def unhandled(self) -> list[tuple[str, int]]:
        """Registered (type, version) pairs of the subscriptions that no handler takes and no
        :meth:`skip` covers: their events will be dead-lettered as ``unhandled`` (or skipped, if
        the policy says so)."""
        registry = self.contracts.registry
        return [
            (event_type, version)
            for event_type in self.subscriptions
            for version in sorted(registry.events[event_type].versions)
            if not self.handles(event_type, version) and self.skip_reason(event_type, version) is None
        ]

    def check_ready(self) -> None:
        """Refuse to run an application with nothing to do."""
        if self._batch_handler is None and not self._handlers:
            raise ConfigurationError(
                f"consumer {self.consumer!r} has no handlers: register some with @app.handler(...) "
                f"(subscriptions: {', '.join(self.subscriptions) or 'none'})"
            )
