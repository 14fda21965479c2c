"""Applying deliveries to the consumer's database: the inbox rows and the handlers' effects in one
transaction, so an event's effects commit exactly once.

One transaction per batch: the inbox claims the batch in one statement (it returns the events
seen for the first time), the handlers of those run (in pipeline mode unless the app turned it
off), then the rows of the app's ``@app.rows`` functions are written with one ``COPY`` per table,
and it commits. Any handler failure rolls back all of it; the runner then applies the batch one
record per transaction.

:class:`PostgresApplier` is the psycopg one (:mod:`bridge.consumer.aio` has the asyncio one and
:mod:`bridge.consumer.orm` the Django one). The runner talks to them through :class:`Applier`, so its
logic (batches, retries, pauses, DLQ, offsets) is unit-tested with an in-memory applier.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import sql

from bridge.consumer.app import ConsumerApp, Delivery, RowMapper
from bridge.consumer.inbox import Inbox
from bridge.consumer.tracing import Tracing
from bridge.errors import DatabaseError, HandlerDecision
from bridge.postgres import at_startup, classify_error, connect, require_tables

__all__ = ["Applied", "Applier", "Failed", "PostgresApplier", "StagedRows", "copy_statement", "stage_rows"]

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


#: Rows to write, per (table, columns).
StagedRows = dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]]


def stage_rows(app: ConsumerApp, deliveries: Sequence[Delivery]) -> StagedRows:
    """The rows the app's ``@app.rows`` functions make of ``deliveries``, grouped by table (pure)."""
    staged: StagedRows = defaultdict(list)
    mappers: dict[tuple[str, int], RowMapper | None] = {}
    for delivery in deliveries:
        envelope = delivery.envelope
        key = (envelope.event_type, envelope.schema_version)
        mapper = mappers[key] if key in mappers else mappers.setdefault(key, app.resolve_rows(*key))
        if mapper is not None:
            staged[(mapper.table, mapper.columns)] += mapper.rows(envelope)
    return staged


def copy_statement(table: tuple[str, ...], columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(*table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


class PostgresApplier(Applier):
    """Applies on one psycopg connection (opened on first use, reopened after an outage)."""

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
                if self.app.required_tables:
                    require_tables(conn, self.schema, self.app.required_tables)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def check_schema(self) -> None:
        """Fail fast (at start) when the database settings cannot work or a table is missing (a host
        name that does not resolve counts as a bad URL here, not later: :func:`at_startup`)."""
        try:
            self._connection()
        except DatabaseError as exc:
            raise at_startup(exc) from None

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        conn = self._connection()
        failure: BaseException | None = None
        try:
            with conn.transaction():
                fresh = self._first_deliveries(conn, deliveries)
                try:
                    self._run_handlers(conn, fresh)
                    self._write_rows(conn, stage_rows(self.app, fresh))
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
        return first_deliveries(deliveries, self.inbox.claim(conn, deliveries))

    def _run_handlers(self, conn: psycopg.Connection[Any], deliveries: list[Delivery]) -> None:
        app = self.app
        if app.batch is not None:
            if deliveries:
                app.batch(deliveries, conn)
            return
        calls = [
            (d, handler)
            for d in deliveries
            if (handler := app.resolve(d.envelope.event_type, d.envelope.schema_version))
        ]
        if not calls:
            return
        if len(calls) > 1 and app.pipeline:
            # Pipeline mode: the handlers' statements go out without waiting for each result; an
            # error surfaces at the end of the block and rolls back all.
            with conn.pipeline():
                self._call(conn, calls)
        else:
            self._call(conn, calls)

    def _call(self, conn: psycopg.Connection[Any], calls: list[tuple[Delivery, Any]]) -> None:
        tracing = self._tracing
        for delivery, handler in calls:
            if delivery.trace and tracing is not None:
                with tracing.span(delivery, self.app.consumer):
                    handler(delivery.envelope, conn)
            else:
                handler(delivery.envelope, conn)

    @staticmethod
    def _write_rows(conn: psycopg.Connection[Any], staged: StagedRows) -> None:
        for (table, columns), rows in staged.items():
            with conn.cursor().copy(copy_statement(table, columns)) as copy:
                for row in rows:
                    copy.write_row(row)


def first_deliveries(deliveries: Sequence[Delivery], new: set[str]) -> list[Delivery]:
    """The deliveries whose event id the inbox just claimed (``new``), each once, in order."""
    fresh = []
    for delivery in deliveries:
        if delivery.envelope.event_id in new:
            new.discard(delivery.envelope.event_id)
            fresh.append(delivery)
    return fresh
