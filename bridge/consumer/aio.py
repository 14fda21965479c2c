"""Async handlers: ``async def`` handlers on a ``psycopg.AsyncConnection``, in an asyncio event loop.

The runner is the same :class:`~bridge.consumer.runner.ConsumerRunner` as for sync handlers (same
batches, retries, DLQ, offsets: the same guarantees and tests); it runs in its own thread, because
confluent-kafka's consumer blocks. Each batch is handed to the event loop, where
:class:`AsyncPostgresApplier` applies it (inbox, handlers, ``COPY`` of staged rows, one
transaction), and the runner waits for the outcome. The loop is free meanwhile: a FastAPI (or any
asyncio) service runs a consumer beside its requests::

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI):
        runner = build_consumer(app, load_settings(), loop=asyncio.get_running_loop())
        consuming = asyncio.create_task(run_in_loop(runner))
        yield
        consuming.cancel()          # stops the runner: the batch in hand lands, offsets commit
        with contextlib.suppress(asyncio.CancelledError):
            await consuming

Without a loop (``bridge consume`` of an async app), the applier runs one of its own in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import psycopg

from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.applying import Applied, Applier, Failed, StagedRows, copy_statement, first_deliveries, stage_rows
from bridge.consumer.inbox import Inbox
from bridge.consumer.runner import ConsumerRunner
from bridge.consumer.tracing import Tracing
from bridge.errors import DatabaseError
from bridge.postgres import at_startup, classify_error, connect, connect_async, require_tables

__all__ = ["AsyncPostgresApplier", "run_in_loop"]

_T = TypeVar("_T")


class AsyncPostgresApplier(Applier):
    """Applies on a ``psycopg.AsyncConnection`` in ``loop`` (default: a loop of its own, in a
    daemon thread). Its methods are called from the runner's thread and wait for the loop."""

    def __init__(
        self,
        app: ConsumerApp,
        url: str,
        schema: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.inbox = Inbox(schema, app.consumer)
        self._loop = loop or _loop_in_thread(f"bridge-{app.consumer}-loop")
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._tracing = Tracing.create()

    def check_schema(self) -> None:
        """Fail fast (at start) when the database settings cannot work or a table is missing (checked
        on a short sync connection; an unresolvable host name is a bad URL here: :func:`at_startup`)."""
        try:
            with connect(
                self.url, application_name=f"bridge-{self.app.consumer}", connect_timeout=self.connect_timeout
            ) as c:
                if self.app.required_tables:
                    require_tables(c, self.schema, self.app.required_tables)
        except DatabaseError as exc:
            raise at_startup(exc) from None

    # --- the Applier, called from the runner's thread ----------------------------------------------

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        return self._wait(self._apply(deliveries))

    def remember(self, delivery: Delivery) -> None:
        self._wait(self._remember(delivery))

    def ping(self) -> None:
        self._wait(self._ping())

    def close(self) -> None:
        """Close the connection (the next call opens another; the loop keeps running)."""
        if self._loop.is_running():
            self._wait(self._close())

    def _wait(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # --- in the loop ---------------------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connect_async(
                self.url, application_name=f"bridge-{self.app.consumer}", connect_timeout=self.connect_timeout
            )
        return self._conn

    async def _apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        conn = await self._connection()
        failure: BaseException | None = None
        try:
            async with conn.transaction():
                fresh = await self._first_deliveries(conn, deliveries)
                try:
                    await self._run_handlers(conn, fresh)
                    await self._write_rows(conn, stage_rows(self.app, fresh))
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception as exc:  # noqa: BLE001 - any handler failure: roll back, report it
                    failure = exc
                    raise psycopg.Rollback() from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await self._close()
            raise classify_error(exc, f"consumer {self.app.consumer}") from None
        except psycopg.Error as exc:
            raise classify_error(exc, f"consumer {self.app.consumer}: inbox") from None
        if failure is not None:
            return Failed(failure)
        return Applied(fresh, len(deliveries) - len(fresh))

    async def _remember(self, delivery: Delivery) -> None:
        try:
            conn = await self._connection()
            async with conn.transaction():
                await self._first_deliveries(conn, [delivery])
        except psycopg.Error as exc:
            await self._close()
            raise classify_error(exc, f"consumer {self.app.consumer}: inbox") from None

    async def _ping(self) -> None:
        try:
            conn = await self._connection()
            await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            await self._close()
            raise classify_error(exc, "ping") from None

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _first_deliveries(
        self, conn: psycopg.AsyncConnection[Any], deliveries: Sequence[Delivery]
    ) -> list[Delivery]:
        if not self.app.dedupe:
            return list(deliveries)
        return first_deliveries(deliveries, await self.inbox.claim_async(conn, deliveries))

    async def _run_handlers(self, conn: psycopg.AsyncConnection[Any], deliveries: list[Delivery]) -> None:
        app = self.app
        if app.batch is not None:
            if deliveries:
                await app.batch(deliveries, conn)  # type: ignore[arg-type,misc]  # BatchHandler is typed for sync apps; an async app's is a coroutine function taking an AsyncConnection
            return
        calls = [
            (d, handler)
            for d in deliveries
            if (handler := app.resolve(d.envelope.event_type, d.envelope.schema_version))
        ]
        if len(calls) > 1 and app.pipeline:
            async with conn.pipeline():
                await self._call(conn, calls)
        elif calls:
            await self._call(conn, calls)

    async def _call(self, conn: psycopg.AsyncConnection[Any], calls: list[tuple[Delivery, Any]]) -> None:
        tracing = self._tracing
        for delivery, handler in calls:
            if delivery.trace and tracing is not None:
                with tracing.span(delivery, self.app.consumer):
                    await handler(delivery.envelope, conn)
            else:
                await handler(delivery.envelope, conn)

    @staticmethod
    async def _write_rows(conn: psycopg.AsyncConnection[Any], staged: StagedRows) -> None:
        for (table, columns), rows in staged.items():
            async with conn.cursor().copy(copy_statement(table, columns)) as copy:
                for row in rows:
                    await copy.write_row(row)


async def run_in_loop(runner: ConsumerRunner) -> None:
    """Run ``runner`` (built with this loop, see the module docstring) until it stops or this task
    is cancelled; cancelling stops it gracefully and waits for it to finish."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            runner.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_settle, finished, exc)
        else:
            loop.call_soon_threadsafe(_settle, finished, None)

    threading.Thread(target=run, name=runner.name, daemon=True).start()
    try:
        await asyncio.shield(finished)
    except asyncio.CancelledError:
        runner.stop()
        with contextlib.suppress(Exception):
            await finished  # the batch in hand lands (it needs this loop), offsets commit
        raise


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _loop_in_thread(name: str) -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
    return loop
