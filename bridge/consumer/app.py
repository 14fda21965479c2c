"""A consumer application: the handlers of one consuming domain.

Pure: knows the contracts, not Kafka or a running database.

    app = ConsumerApp("sales")

    @app.handler("credit.released", version=2)
    def on_released(event: Envelope, conn: psycopg.Connection) -> None:
        conn.execute("UPDATE leads SET … WHERE …", (...))   # commits with the inbox row

The group id is ``{topic_prefix}{consumer}``; the topics are those whose registry entry lists the
consumer. A handler receives the validated envelope and the consumer's connection, inside the
transaction that also writes the inbox row. Three other shapes of handler:

- **rows** (the bulk path): a function from an event to the row(s) it adds to a table; the rows of
  a whole batch are written with one ``COPY`` per table, in the same transaction::

      @app.rows("coach.assigned", into="coaching.assignments", columns=("event_id", "coach_id"))
      def assignment(event: Envelope) -> tuple[str, str]:
          return (event.event_id, event.payload["coach_id"])

- **async**: ``async def`` handlers get a ``psycopg.AsyncConnection`` (an app's handlers are all
  sync or all async); see :mod:`bridge.consumer.aio` for running them in an asyncio service;
- **ORM**: with ``pipeline=False``, a handler can use a SQLAlchemy session on its connection
  (:func:`bridge.consumer.orm.sqlalchemy_session`), or, with :class:`bridge.consumer.orm.DjangoApplier`,
  the Django ORM.

Every subscribed event is handled, skipped on purpose (:meth:`ConsumerApp.skip`) or, when no
handler knows its type or version (a rolling deploy, a new version), kept: dead-lettered with the
reason ``unhandled`` so ``bridge dlq replay --reason unhandled`` brings it back after an upgrade.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import psycopg

from bridge.config import ErrorPolicy
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import ConfigurationError

__all__ = ["AsyncHandler", "BatchHandler", "ConsumerApp", "Delivery", "Handler", "RowMapper", "Rows"]


class Delivery(NamedTuple):
    """An event, where it was read from, and the W3C trace context it carried (if any). (A named
    tuple: one is made per record, and it is five times cheaper to build than a frozen dataclass.)"""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    trace: Mapping[str, str] = MappingProxyType({})

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


Handler = Callable[[Envelope, "psycopg.Connection[Any]"], object]
AsyncHandler = Callable[[Envelope, "psycopg.AsyncConnection[Any]"], Awaitable[object]]
BatchHandler = Callable[[Sequence[Delivery], "psycopg.Connection[Any]"], object]
#: What a rows function returns for one event: one row, several, or none.
Rows = tuple[Any, ...] | Iterable[tuple[Any, ...]] | None


@dataclass(frozen=True, slots=True)
class RowMapper:
    """Where an event's rows go: ``table`` (``name`` or ``schema.name``) and its ``columns``."""

    table: tuple[str, ...]
    columns: tuple[str, ...]
    function: Callable[[Envelope], Rows]

    def rows(self, envelope: Envelope) -> list[tuple[Any, ...]]:
        made = self.function(envelope)
        if made is None:
            return []
        if isinstance(made, tuple):
            made = [made]
        rows = list(made)
        for row in rows:
            if not isinstance(row, tuple) or len(row) != len(self.columns):
                raise TypeError(
                    f"a rows function for {'.'.join(self.table)} must return tuples of {len(self.columns)} values "
                    f"({', '.join(self.columns)}), got {row!r}"
                )
        return rows


class ConsumerApp:
    """The handlers of one consumer (a domain, or the warehouse loader)."""

    def __init__(
        self,
        consumer: str,
        *,
        contracts: Contracts | None = None,
        policy: ErrorPolicy | None = None,
        dedupe: bool = True,
        pipeline: bool = True,
        connection: Literal["psycopg", "django"] = "psycopg",
    ) -> None:
        """``contracts``: default ``BRIDGE_CONTRACTS_PATH``, else the shipped ones. ``policy``:
        default the runner's settings (``BRIDGE_CONSUMER__*``). ``dedupe=False`` skips the inbox:
        only for handlers that are idempotent on their own (the warehouse sink's
        ``ON CONFLICT DO NOTHING`` on event_id). ``pipeline``: the handlers of a batch run in
        psycopg pipeline mode (statements sent without waiting for each result: one round trip
        for the batch); turn it off for handlers that read results as they go, such as an ORM.
        ``connection="django"``: apply through Django's connection, so handlers use its ORM
        (:class:`bridge.consumer.orm.DjangoApplier`)."""
        self.contracts = contracts or Contracts.load()
        self.consumer = self.contracts.registry.check_consumer(consumer)
        self.policy = policy
        self.dedupe = dedupe
        self.pipeline = pipeline
        self.connection = connection
        #: Tables of the consumer's schema (``BRIDGE_DATABASE__SCHEMA_NAME``) the handlers need besides
        #: the inbox: checked at start, so a schema never migrated stops the consumer at once.
        self.schema_tables: tuple[str, ...] = ()
        self._handlers: dict[tuple[str, int | None], Handler | AsyncHandler] = {}
        self._rows: dict[tuple[str, int | None], RowMapper] = {}
        self._skipped: dict[tuple[str, int | None], str] = {}
        self._batch_handler: BatchHandler | None = None
        self._async: bool | None = None

    @property
    def required_tables(self) -> tuple[str, ...]:
        """The tables the appliers check for at start: the inbox (unless ``dedupe=False``) and
        :attr:`schema_tables`."""
        return (("inbox",) if self.dedupe else ()) + self.schema_tables

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

    def handler(self, event_type: str, version: int | None = None) -> Callable[[Any], Any]:
        """Register a handler for an event type (every version, or one): ``def`` or ``async def``."""
        self._check_subscribed(event_type, version)

        def register(function: Any) -> Any:
            key = (event_type, version)
            self._check_free(key)
            self._check_kind(inspect.iscoroutinefunction(function), getattr(function, "__qualname__", function))
            self._handlers[key] = function
            return function

        return register

    def rows(
        self, event_type: str, version: int | None = None, *, into: str, columns: Sequence[str]
    ) -> Callable[[Callable[[Envelope], Rows]], Callable[[Envelope], Rows]]:
        """Register the bulk path for an event type: ``function(event)`` gives the row(s) the event
        adds to table ``into`` (``name`` or ``schema.name``), values in the order of ``columns``.
        The rows of a batch are written with one ``COPY`` per table, in the inbox's transaction.
        Pure: no database access (that is what a :meth:`handler` is for)."""
        self._check_subscribed(event_type, version)
        table = tuple(into.split("."))
        if not 1 <= len(table) <= 2 or not all(table) or not columns:
            raise ConfigurationError(f"rows into {into!r}: give a table as 'name' or 'schema.name', and its columns")

        def register(function: Callable[[Envelope], Rows]) -> Callable[[Envelope], Rows]:
            key = (event_type, version)
            self._check_free(key)
            self._rows[key] = RowMapper(table, tuple(columns), function)
            return function

        return register

    def _check_free(self, key: tuple[str, int | None]) -> None:
        if key in self._handlers or key in self._rows:
            label = f" v{key[1]}" if key[1] else ""
            raise ConfigurationError(f"a handler for {key[0]}{label} exists")

    def _check_kind(self, is_async: bool, what: object) -> None:
        if is_async and self.connection == "django":
            # DjangoApplier calls handlers without awaiting them: the inbox row would commit and
            # the coroutine never run, the event lost for this consumer.
            raise ConfigurationError(
                f"{what} is async, but an app with connection='django' runs sync handlers on Django's "
                "connection: make it a def"
            )
        if self._async is not None and self._async != is_async:
            kinds = ("async", "sync") if self._async else ("sync", "async")
            raise ConfigurationError(
                f"{what} is {kinds[1]} but this app's handlers are {kinds[0]}: one app runs on one kind of "
                "connection (psycopg.Connection or psycopg.AsyncConnection)"
            )
        self._async = is_async

    @property
    def is_async(self) -> bool:
        """Whether the handlers are ``async def`` (they need an asyncio applier)."""
        return bool(self._async)

    def skip(self, event_type: str, version: int | None = None, *, reason: str = "not needed") -> None:
        """Acknowledge events of this type (every version, or one) without applying them: an
        explicit choice, logged and counted for every event skipped."""
        self._check_subscribed(event_type, version)
        self._skipped[(event_type, version)] = reason

    def batch_handler(self, function: BatchHandler) -> BatchHandler:
        """Register one handler for every subscribed event, called with a batch of deliveries."""
        self._check_kind(inspect.iscoroutinefunction(function), getattr(function, "__qualname__", function))
        self._batch_handler = function
        return function

    def resolve(self, event_type: str, version: int) -> Handler | AsyncHandler | None:
        """The handler for an event, the version-specific one first."""
        return self._handlers.get((event_type, version)) or self._handlers.get((event_type, None))

    def resolve_rows(self, event_type: str, version: int) -> RowMapper | None:
        """The rows function for an event, the version-specific one first."""
        return self._rows.get((event_type, version)) or self._rows.get((event_type, None))

    def skip_reason(self, event_type: str, version: int) -> str | None:
        """Why events of this type and version are skipped on purpose, or ``None``."""
        return self._skipped.get((event_type, version)) or self._skipped.get((event_type, None))

    @property
    def batch(self) -> BatchHandler | None:
        return self._batch_handler

    def handles(self, event_type: str, version: int) -> bool:
        return (
            self._batch_handler is not None
            or self.resolve(event_type, version) is not None
            or self.resolve_rows(event_type, version) is not None
        )

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
        if self._batch_handler is None and not self._handlers and not self._rows:
            raise ConfigurationError(
                f"consumer {self.consumer!r} has no handlers: register some with @app.handler(...) or @app.rows(...) "
                f"(subscriptions: {', '.join(self.subscriptions) or 'none'})"
            )
