"""Applying deliveries to the consumer's database: the inbox rows and the handlers' effects in one
transaction, so an event's effects commit exactly once.

:class:`PostgresApplier` is the real one. The runner talks to it through :class:`Applier`, so its
logic (batches, retries, pauses, DLQ, offsets) is unit-tested with an in-memory applier.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.inbox import Inbox
from bridge.consumer.tracing import Tracing
from bridge.errors import DatabaseUnavailableError, HandlerDecision
from bridge.postgres import classify_error, connect, require_tables

__all__ = ["Applied", "Applier", "Failed", "PostgresApplier"]

log = logging.getLogger("bridge.consumer")


@dataclass(frozen=True, slots=True)
class Applied:
    """Committed: ``fresh`` deliveries ran their handlers; the others were duplicates."""

    fresh: list[Delivery]
    duplicates: int


@dataclass(frozen=True, slots=True)
class Failed:
    """A handler raised (the transaction rolled back): a decision, or any other exception."""

    error: BaseException

    @property
    def decision(self) -> HandlerDecision | None:
        return self.error if isinstance(self.error, HandlerDecision) else None


class Applier(Protocol):
    """One consumer's database side. Outages raise a retriable
    :class:`~bridge.errors.DatabaseUnavailableError`; handler failures are returned."""

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        """Apply all in one transaction: the inbox tells first deliveries from duplicates, the
        handlers of the first ones run, then it commits; if any handler raises, nothing commits."""
        ...

    def remember(self, delivery: Delivery) -> None:
        """Record the delivery in the inbox without running a handler (a skip decided by one)."""
        ...

    def ping(self) -> None:
        """Raise unless the database answers."""
        ...

    def close(self) -> None: ...


class PostgresApplier(Applier):
    def __init__(self, app: ConsumerApp, url: str, schema: str, *, connect_timeout: float = 10.0) -> None:
        self.app = app
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.inbox = Inbox(schema, app.consumer)
        self._conn: psycopg.Connection[Any] | None = None
        self._tracing = Tracing.create()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = connect(
                self.url, application_name=f"bridge-{self.app.consumer}", connect_timeout=self.connect_timeout
            )
            try:
                if self.app.dedupe:
                    require_tables(conn, self.schema, ("inbox",))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def check_schema(self) -> None:
        """Fail fast (at start) when the inbox table is missing."""
        self._connection()

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        conn = self._connection()
        failure: BaseException | None = None
        try:
            with conn.transaction():
                fresh = self._first_deliveries(conn, deliveries)
                try:
                    if len(fresh) > 1 and self.app.pipeline:
                        # Pipeline mode: the handlers' statements go out without waiting for each
                        # result; an error surfaces at the end of the block and rolls back all.
                        with conn.pipeline():
                            self._run_handlers(conn, fresh)
                    else:
                        self._run_handlers(conn, fresh)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception as exc:  # noqa: BLE001 - any handler failure: roll back, report it
                    failure = exc
                    raise psycopg.Rollback() from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise classify_error(exc, f"consumer {self.app.consumer}") from None
        except psycopg.Error as exc:
            # A failure of the inbox statement itself (not a handler's): e.g. permissions.
            raise classify_error(exc, f"consumer {self.app.consumer}: inbox") from None
        if failure is not None:
            return Failed(failure)
        return Applied(fresh, len(deliveries) - len(fresh))

    def remember(self, delivery: Delivery) -> None:
        conn = self._connection()
        try:
            with conn.transaction():
                self._first_deliveries(conn, [delivery])
        except psycopg.Error as exc:
            self.close()
            raise classify_error(exc, f"consumer {self.app.consumer}: inbox") from None

    def ping(self) -> None:
        try:
            self._connection().execute("SELECT 1")
        except psycopg.Error as exc:
            self.close()
            raise classify_error(exc, "ping") from None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _first_deliveries(self, conn: psycopg.Connection[Any], deliveries: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries to apply: without the inbox's duplicates and repeats within the batch."""
        if not self.app.dedupe:
            return list(deliveries)
        new = self.inbox.claim(conn, deliveries)
        fresh = []
        for delivery in deliveries:
            if delivery.envelope.event_id in new:
                new.discard(delivery.envelope.event_id)
                fresh.append(delivery)
        return fresh

    def _run_handlers(self, conn: psycopg.Connection[Any], deliveries: list[Delivery]) -> None:
        app = self.app
        if app.batch is not None:
            if deliveries:
                app.batch(deliveries, conn)
            return
        tracing = self._tracing
        for delivery in deliveries:
            envelope = delivery.envelope
            handler = app.resolve(envelope.event_type, envelope.schema_version)
            if handler is None:
                raise DatabaseUnavailableError("unreachable: the runner only applies handled events")
            if delivery.trace and tracing is not None:
                with tracing.span(delivery, app.consumer):
                    handler(envelope, conn)
            else:
                handler(envelope, conn)
