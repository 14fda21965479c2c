"""Handlers that use an ORM: a SQLAlchemy session on the handler's connection, or the Django ORM.

**SQLAlchemy** (sync): in an app created with ``pipeline=False`` (an ORM reads results as it goes,
which pipeline mode defers)::

    app = ConsumerApp("sales", pipeline=False)

    @app.handler("credit.released")
    def on_released(event: Envelope, conn: psycopg.Connection) -> None:
        with sqlalchemy_session(conn) as session:
            session.add(Lead(id=event.subject, stage="won"))

The session works inside the event's transaction: what it writes commits with the inbox row, or
rolls back with it. Its own ``commit()`` and ``rollback()`` act on a savepoint (SQLAlchemy's
``join_transaction_mode="create_savepoint"``); leaving the block commits the session that way
(an exception rolls it back, and fails the event).
Async handlers do the same with :func:`sqlalchemy_async_session` on their ``AsyncConnection``.

**Django**: in a Django project, ``ConsumerApp(..., connection="django")`` applies through
:class:`DjangoApplier`: the inbox rows go through Django's own connection inside
``transaction.atomic()``, so handlers write models as usual and everything commits or rolls back
together. SQLAlchemy and Django are imported only when used.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg

from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.applying import Applied, Applier, Failed, first_deliveries, stage_rows
from bridge.consumer.inbox import Inbox
from bridge.errors import ConfigurationError, DatabaseQueryError, DatabaseUnavailableError

__all__ = ["DjangoApplier", "sqlalchemy_async_session", "sqlalchemy_session"]

_DATABASE_URL = "BRIDGE_DATABASE__URL"


class _TransactionOwnedByBridge:
    """The handler's connection as SQLAlchemy sees it: everything passes through, except ending
    the transaction, which is the applier's (SQLAlchemy's commits and rollbacks of its own work
    are savepoints, see the module docstring)."""

    def __init__(self, conn: Any) -> None:
        object.__setattr__(self, "_conn", conn)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


class _AsyncTransactionOwnedByBridge(_TransactionOwnedByBridge):
    async def commit(self) -> None:  # type: ignore[override]  # the async facade awaits what the sync one returns: same name, coroutine
        pass

    async def rollback(self) -> None:  # type: ignore[override]  # the async facade awaits what the sync one returns: same name, coroutine
        pass

    async def close(self) -> None:  # type: ignore[override]  # the async facade awaits what the sync one returns: same name, coroutine
        pass


_engines: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _check_no_pipeline(conn: Any) -> None:
    if getattr(conn, "_pipeline", None) is not None:
        raise ConfigurationError(
            "this handler's connection is in pipeline mode, where an ORM cannot read its results: "
            "create the app with ConsumerApp(..., pipeline=False)"
        )


@contextlib.contextmanager
def sqlalchemy_session(conn: psycopg.Connection[Any], **options: Any) -> Iterator[Any]:
    """A SQLAlchemy ``Session`` on a handler's ``conn``, inside the event's transaction (see the
    module docstring); ``options`` go to ``Session``. Needs ``sqlalchemy`` (2.0 or later)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import StaticPool

    _check_no_pipeline(conn)
    engine = _engines.get(conn)
    if engine is None:
        owned = _TransactionOwnedByBridge(conn)
        engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: owned,
            poolclass=StaticPool,
            pool_reset_on_return=None,
            use_native_hstore=False,  # its type lookup wants the bare connection
        )
        _engines[conn] = engine
    with engine.connect() as connection:
        connection.begin()  # SQLAlchemy's view of the event's transaction (it ends with the applier's)
        with Session(bind=connection, join_transaction_mode="create_savepoint", **options) as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            session.commit()  # flushes; releases its savepoint (the event's transaction goes on)


@contextlib.asynccontextmanager
async def sqlalchemy_async_session(conn: psycopg.AsyncConnection[Any], **options: Any) -> AsyncIterator[Any]:
    """:func:`sqlalchemy_session` for async handlers: an ``AsyncSession`` on their connection."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import StaticPool

    _check_no_pipeline(conn)
    engine = _engines.get(conn)
    if engine is None:
        owned = _AsyncTransactionOwnedByBridge(conn)

        async def creator() -> Any:
            return owned

        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=creator,
            poolclass=StaticPool,
            pool_reset_on_return=None,
            use_native_hstore=False,
        )
        _engines[conn] = engine
    async with engine.connect() as connection:
        await connection.begin()
        async with AsyncSession(bind=connection, join_transaction_mode="create_savepoint", **options) as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.commit()


class DjangoApplier(Applier):
    """Applies through Django's database connection (``using``), in ``transaction.atomic()``: the
    inbox rows and whatever the handlers write with the Django ORM commit together. Handlers get
    Django's connection as their ``conn``. Needs a configured Django (``django.setup()``)."""

    def __init__(self, app: ConsumerApp, schema: str, *, using: str = "default") -> None:
        self.app = app
        self.schema = schema
        self.using = using
        self.inbox = Inbox(schema, app.consumer)

    def _django(self) -> tuple[Any, Any, Any]:
        from django.db import connections, transaction, utils

        return connections[self.using], transaction, utils

    def check_schema(self) -> None:
        """Fail fast (at start) when the inbox table is missing."""
        if not self.app.dedupe:
            return
        connection, _, utils = self._django()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s)", [f'"{self.schema}".inbox'])
                found = cursor.fetchone()
        except utils.Error as exc:
            raise self._error(exc, "check the inbox table") from None
        if found is None or found[0] is None:
            from bridge.errors import SchemaNotMigratedError

            raise SchemaNotMigratedError(
                f"{self.schema}.inbox missing: run bridge db migrate", setting="BRIDGE_DATABASE__SCHEMA_NAME"
            )

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        connection, transaction, utils = self._django()
        failure: BaseException | None = None

        class _RolledBack(Exception):
            pass

        try:
            with transaction.atomic(using=self.using):
                fresh = self._first_deliveries(connection, deliveries)
                try:
                    self._run_handlers(connection, fresh)
                    self._write_rows(connection, fresh)
                except (utils.OperationalError, utils.InterfaceError):
                    raise
                except Exception as exc:  # noqa: BLE001 - any handler failure: roll back, report it
                    failure = exc
                    raise _RolledBack from None
        except _RolledBack:
            pass
        except utils.Error as exc:
            raise self._error(exc, f"consumer {self.app.consumer}") from None
        if failure is not None:
            return Failed(failure)
        return Applied(fresh, len(deliveries) - len(fresh))

    def remember(self, delivery: Delivery) -> None:
        connection, transaction, utils = self._django()
        try:
            with transaction.atomic(using=self.using):
                self._first_deliveries(connection, [delivery])
        except utils.Error as exc:
            raise self._error(exc, f"consumer {self.app.consumer}: inbox") from None

    def ping(self) -> None:
        connection, _, utils = self._django()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except utils.Error as exc:
            raise self._error(exc, "ping") from None

    def close(self) -> None:
        connection, _, utils = self._django()
        with contextlib.suppress(utils.Error):
            connection.close()

    def _error(self, exc: BaseException, doing: str) -> Exception:
        _, _, utils = self._django()
        if isinstance(exc, (utils.OperationalError, utils.InterfaceError)):
            self.close()
            return DatabaseUnavailableError(f"{doing}: {exc}".strip(), setting=_DATABASE_URL)
        return DatabaseQueryError(f"{doing}: {exc}".strip(), setting=_DATABASE_URL)

    def _first_deliveries(self, connection: Any, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not self.app.dedupe or not deliveries:
            return list(deliveries)
        with connection.cursor() as cursor:
            cursor.execute(self.inbox.claim_text, list(self.inbox.parameters(deliveries)))
            new = {row[0] for row in cursor.fetchall()}
        return first_deliveries(deliveries, new)

    def _run_handlers(self, connection: Any, deliveries: list[Delivery]) -> None:
        app = self.app
        if app.batch is not None:
            if deliveries:
                app.batch(deliveries, connection)
            return
        for delivery in deliveries:
            envelope = delivery.envelope
            handler = app.resolve(envelope.event_type, envelope.schema_version)
            if handler is not None:
                handler(envelope, connection)

    def _write_rows(self, connection: Any, deliveries: list[Delivery]) -> None:
        from psycopg import sql

        for (table, columns), rows in stage_rows(self.app, deliveries).items():
            statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(*table),
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            )
            with connection.cursor() as cursor:
                cursor.executemany(statement.as_string(), rows)
