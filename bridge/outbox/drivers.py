"""Writing an emit through the database connection the caller already has, inside its transaction.

Supported: psycopg 3 (sync and async), psycopg2, asyncpg, SQLAlchemy 2 (``Session``,
``Connection``, ``AsyncSession``, ``AsyncConnection``, over any of those drivers) and Django's
connection (inside ``transaction.atomic()``). Every writer sends the same statements: take the
transaction's id, lock the subjects (in one order), insert the rows; optionally NOTIFY.

A connection that is not in a transaction is refused, with the advice that works for its driver:
the event would otherwise commit apart from the write that caused it. Optional drivers are only
recognised when the caller has imported them (nothing here imports them first).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from bridge.errors import OutboxError

__all__ = ["AsyncWriter", "OutboxWrite", "SyncWriter", "async_writer", "sync_writer"]

SUPPORTED = (
    "psycopg 3 Connection/AsyncConnection, psycopg2 connection, asyncpg Connection, SQLAlchemy 2 "
    "Session/Connection/AsyncSession/AsyncConnection, or Django's connection"
)


@dataclass(frozen=True, slots=True)
class OutboxWrite:
    """What one emit writes: the rows (as columns), the subjects to lock, and where."""

    schema: str
    lock_namespace: str
    subjects: list[str]
    event_ids: list[str]
    event_types: list[str]
    schema_versions: list[int]
    row_subjects: list[str]
    tenant_ids: list[str]
    producers: list[str]
    values: list[bytes]
    headers: list[str]
    recorded_at: list[datetime]
    notify_channel: str | None = None

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.event_ids, self.event_types, self.schema_versions, self.row_subjects, self.tenant_ids,
            self.producers, self.values, self.headers, self.recorded_at,
        )  # fmt: skip


_COLUMNS = "event_id, event_type, schema_version, subject, tenant_id, producer, value, headers, recorded_at"
_TYPES = ("text[]", "text[]", "int[]", "text[]", "text[]", "text[]", "bytea[]", "jsonb[]", "timestamptz[]")


def _table(schema: str) -> str:
    return sql.Identifier(schema, "outbox").as_string(None)


@functools.lru_cache(maxsize=256)
def _emit_sql(schema: str, placeholder: Callable[[int, str], str]) -> str:
    """The whole emit as one statement (one round trip), in one parameter style:
    ``placeholder(n, type)`` renders the n-th parameter (0-based) cast to ``type``.

    Before any row draws its id (the insert's projection runs after its filter), the filter's
    subqueries make the transaction take its id and lock the subjects, in one order: the two
    things the relay's ordering and late-commit tracking rely on (see the module of emit).
    """
    lock = (
        f"SELECT pg_advisory_xact_lock(hashtext({placeholder(0, 'text')}), hashtext(s)) "
        f"FROM unnest({placeholder(1, 'text[]')}) AS s"
    )
    arrays = ", ".join(placeholder(i + 2, kind) for i, kind in enumerate(_TYPES))
    statement = (
        "WITH xid AS MATERIALIZED (SELECT pg_current_xact_id()), "
        f"locked AS MATERIALIZED ({lock}) "
        f"INSERT INTO {_table(schema)} ({_COLUMNS}) SELECT * FROM unnest({arrays}) "
        "WHERE (SELECT count(*) FROM xid) + (SELECT count(*) FROM locked) >= 0"
    )
    return statement


def _parameters(write: OutboxWrite) -> list[Any]:
    return [write.lock_namespace, write.subjects, *write.columns()]


def _notify_sql(placeholder: Callable[[int, str], str]) -> str:
    return f"SELECT pg_notify({placeholder(0, 'text')}, '')"


def _statements(write: OutboxWrite, placeholder: Callable[[int, str], str]) -> list[tuple[str, list[Any]]]:
    statements = [(_emit_sql(write.schema, placeholder), _parameters(write))]
    if write.notify_channel:
        statements.append((_notify_sql(placeholder), [write.notify_channel]))
    return statements


def _percent(_index: int, kind: str) -> str:
    return f"%s::{kind}"


def _dollar(index: int, kind: str) -> str:
    return f"${index + 1}::{kind}"


def _named(index: int, kind: str) -> str:
    return f"CAST(:p{index} AS {kind})"


class SyncWriter(Protocol):
    def write(self, write: OutboxWrite) -> None: ...


class AsyncWriter(Protocol):
    async def write(self, write: OutboxWrite) -> None: ...


def _autocommit_error(driver: str, advice: str) -> OutboxError:
    return OutboxError(
        f"emit needs the caller's transaction, but this {driver} connection is not in one: the event would commit "
        f"apart from the write that caused it. {advice}"
    )


# --- psycopg 3 ------------------------------------------------------------------------------------


class _Psycopg:
    """The native path: binary array parameters, and every statement in one pipeline round trip."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            raise _autocommit_error("psycopg", "Use `with conn.transaction():` or a connection with autocommit=False.")
        self.conn = conn

    def write(self, write: OutboxWrite) -> None:
        with self.conn.cursor() as cur:
            for query, params in _psycopg_statements(write):
                cur.execute(query, params)


class _AsyncPsycopg:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            raise _autocommit_error(
                "psycopg", "Use `async with conn.transaction():` or a connection with autocommit=False."
            )
        self.conn = conn

    async def write(self, write: OutboxWrite) -> None:
        async with self.conn.cursor() as cur:
            for query, params in _psycopg_statements(write):
                await cur.execute(query, params)


def _binary(index: int, kind: str) -> str:
    # %b: arrays go in binary; in text format every element costs an escape.
    return f"%b::{kind}" if kind.endswith("[]") else f"%s::{kind}"


def _psycopg_statements(write: OutboxWrite) -> list[tuple[str, list[Any]]]:
    return _statements(write, _binary)


# --- psycopg2, asyncpg ----------------------------------------------------------------------------


class _Psycopg2:
    def __init__(self, conn: Any) -> None:
        import psycopg2.extensions

        idle = conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        if conn.autocommit and idle:
            raise _autocommit_error(
                "psycopg2",
                "Set conn.autocommit = False (psycopg2 then opens a transaction) and commit after the write.",
            )
        self.conn = conn

    def write(self, write: OutboxWrite) -> None:
        with self.conn.cursor() as cur:
            for query, params in _statements(write, _percent):
                cur.execute(query, params)


class _Asyncpg:
    def __init__(self, conn: Any) -> None:
        if not conn.is_in_transaction():
            raise _autocommit_error("asyncpg", "Emit inside `async with conn.transaction():`.")
        self.conn = conn

    async def write(self, write: OutboxWrite) -> None:
        for query, params in _statements(write, _dollar):
            await self.conn.execute(query, *params)


# --- SQLAlchemy 2 ----------------------------------------------------------------------------------


def _named_params(params: list[Any]) -> dict[str, Any]:
    return {f"p{i}": value for i, value in enumerate(params)}


class _SqlAlchemy:
    """Through SQLAlchemy's own execution, so its transaction (autobegun or explicit) holds the
    rows, whatever driver sits below it."""

    def __init__(self, target: Any) -> None:
        from sqlalchemy.orm import Session

        connection = target.connection() if isinstance(target, Session) else target
        if _sqlalchemy_autocommit(connection):
            raise _autocommit_error(
                "SQLAlchemy",
                "Use a Session or Connection without isolation_level='AUTOCOMMIT' (with session.begin(): … or "
                "with engine.begin() as conn: …).",
            )
        self.connection = connection

    def write(self, write: OutboxWrite) -> None:
        from sqlalchemy import text

        for query, params in _statements(write, _named):
            self.connection.execute(text(query), _named_params(params))


class _AsyncSqlAlchemy:
    def __init__(self, target: Any) -> None:
        self.target = target

    async def write(self, write: OutboxWrite) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import AsyncSession

        connection = await self.target.connection() if isinstance(self.target, AsyncSession) else self.target
        if _sqlalchemy_autocommit(connection.sync_connection):
            raise _autocommit_error(
                "SQLAlchemy", "Use an AsyncSession or AsyncConnection without isolation_level='AUTOCOMMIT'."
            )
        for query, params in _statements(write, _named):
            await connection.execute(text(query), _named_params(params))


def _sqlalchemy_autocommit(connection: Any) -> bool:
    # isolation_level="AUTOCOMMIT" switches the driver connection below to autocommit; SQLAlchemy's
    # get_isolation_level() would report the server's level instead.
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    return bool(getattr(connection.connection.dbapi_connection, "autocommit", False))


# --- Django ---------------------------------------------------------------------------------------


def _django(connection: Any) -> SyncWriter:
    if not connection.in_atomic_block:
        raise _autocommit_error("Django", "Emit inside `with transaction.atomic():` (Django autocommits otherwise).")
    connection.ensure_connection()
    return sync_writer(connection.connection)


# --- choosing -------------------------------------------------------------------------------------


def _is(conn: object, module: str, path: str) -> bool:
    """``isinstance(conn, module.path)`` if the caller imported ``module`` (never imports it)."""
    if module not in sys.modules:
        return False
    target: Any = sys.modules[module]
    try:
        for part in path.split("."):
            target = getattr(target, part)
    except AttributeError:
        return False
    return isinstance(target, type) and isinstance(conn, target)


def sync_writer(conn: object) -> SyncWriter:
    """The writer for a synchronous connection; :class:`OutboxError` naming the supported ones."""
    if isinstance(conn, psycopg.Connection):
        return _Psycopg(conn)
    if _is(conn, "sqlalchemy.orm", "Session") or _is(conn, "sqlalchemy.engine", "Connection"):
        return _SqlAlchemy(conn)
    if _is(conn, "django.db.backends.base.base", "BaseDatabaseWrapper") or _is(
        conn, "django.utils.connection", "ConnectionProxy"
    ):
        return _django(conn)
    if _is(conn, "psycopg2.extensions", "connection"):
        return _Psycopg2(conn)
    if isinstance(conn, psycopg.AsyncConnection) or _is(conn, "asyncpg", "Connection"):
        raise OutboxError(f"{type(conn).__name__} is asynchronous: use AsyncOutbox (await outbox.emit(...))")
    raise OutboxError(f"emit cannot write through a {type(conn).__module__}.{type(conn).__name__}: use a {SUPPORTED}")


def async_writer(conn: object) -> AsyncWriter:
    """The writer for an asyncio connection; :class:`OutboxError` naming the supported ones."""
    if isinstance(conn, psycopg.AsyncConnection):
        return _AsyncPsycopg(conn)
    if _is(conn, "sqlalchemy.ext.asyncio", "AsyncSession") or _is(conn, "sqlalchemy.ext.asyncio", "AsyncConnection"):
        return _AsyncSqlAlchemy(conn)
    if _is(conn, "asyncpg", "Connection") or _is(conn, "asyncpg.pool", "PoolConnectionProxy"):
        return _Asyncpg(conn)
    if isinstance(conn, psycopg.Connection):
        raise OutboxError("a synchronous psycopg connection: use Outbox (outbox.emit(...)), not AsyncOutbox")
    raise OutboxError(
        f"async emit cannot write through a {type(conn).__module__}.{type(conn).__name__}: use a {SUPPORTED}"
    )
