"""A consumer application: the handlers of one consuming domain, and its error policy.

Pure: knows the registry, not Kafka or a running database.

    app = ConsumerApp("sales")

    @app.handler("credit.released", version=2)
    def on_released(event: Envelope, conn: psycopg.Connection) -> None:
        conn.execute("UPDATE leads SET … WHERE …", (...))   # commits with the inbox row

The group id is ``{topic_prefix}{consumer}``; the topics are those whose registry entry lists the
consumer. A handler receives the validated envelope and the consumer's connection, inside the
transaction that also writes the inbox row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from bridge.contracts import CONSUMER_NAMES, Contracts
from bridge.envelope import Envelope
from bridge.errors import ConfigurationError

__all__ = ["BatchHandler", "ConsumerApp", "Delivery", "ErrorPolicy", "Handler"]


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


Handler = Callable[[Envelope, psycopg.Connection], object]
BatchHandler = Callable[[Sequence[Delivery], psycopg.Connection], object]


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do when things go wrong. The defaults are the safe ones.

    - undecodable bytes, invalid envelopes or payloads, bad signatures: DLQ at once, no retries;
    - a handler exception: ``max_attempts`` tries with exponential backoff (the partition paused,
      the poll loop alive), then DLQ;
    - database or broker unavailable: pause and retry for as long as it takes; never DLQ;
    - an unknown event type or version: ``unknown`` = "skip" (counted and logged) or "dlq".
    """

    max_attempts: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    unknown: Literal["skip", "dlq"] = "skip"
    infrastructure_backoff_max: float = 10.0


class ConsumerApp:
    """The handlers of one consumer (a domain, or ``platform-warehouse``)."""

    def __init__(
        self,
        consumer: str,
        *,
        contracts: Contracts | None = None,
        policy: ErrorPolicy | None = None,
        dedupe: bool = True,
    ) -> None:
        """``dedupe=False`` skips the inbox: only for handlers that are idempotent on their own
        (the warehouse sink's ``ON CONFLICT DO NOTHING`` on event_id)."""
        if consumer not in CONSUMER_NAMES:
            raise ConfigurationError(f"unknown consumer {consumer!r} (known: {', '.join(sorted(CONSUMER_NAMES))})")
        self.consumer = consumer
        self.contracts = contracts or Contracts.load()
        self.policy = policy or ErrorPolicy()
        self.dedupe = dedupe
        self._handlers: dict[tuple[str, int | None], Handler] = {}
        self._batch_handler: BatchHandler | None = None

    @property
    def subscriptions(self) -> list[str]:
        """The event types the registry gives this consumer."""
        return self.contracts.registry.subscriptions(self.consumer)

    def handler(self, event_type: str, version: int | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for an event type (every version, or one)."""
        if event_type not in self.subscriptions:
            raise ConfigurationError(
                f"the registry does not list {self.consumer!r} as a consumer of {event_type!r}; "
                f"its subscriptions: {', '.join(self.subscriptions) or 'none'}"
            )
        if version is not None and self.contracts.registry.lookup(event_type, version) is None:
            raise ConfigurationError(f"{event_type!r} has no registered version {version}")

        def register(function: Handler) -> Handler:
            key = (event_type, version)
            if key in self._handlers:
                raise ConfigurationError(f"a handler for {event_type} {'v' + str(version) if version else ''} exists")
            self._handlers[key] = function
            return function

        return register

    def batch_handler(self, function: BatchHandler) -> BatchHandler:
        """Register one handler for every subscribed event, called with a batch of deliveries."""
        self._batch_handler = function
        return function

    def resolve(self, event_type: str, version: int) -> Handler | None:
        """The handler for an event, the version-specific one first."""
        return self._handlers.get((event_type, version)) or self._handlers.get((event_type, None))

    @property
    def batch(self) -> BatchHandler | None:
        return self._batch_handler

    def handles(self, event_type: str, version: int) -> bool:
        return self._batch_handler is not None or self.resolve(event_type, version) is not None
