"""PostgreSQL connections for bridge's own processes: the options in one place, and psycopg's errors
told apart into the ones worth retrying (the server is down, the connection was lost) and the ones
that are not (a malformed URL, an unknown database, a failed login, tables that were never made).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from bridge.errors import (
    DatabaseConfigurationError,
    DatabaseError,
    DatabaseQueryError,
    DatabaseUnavailableError,
    SchemaNotMigratedError,
)

__all__ = [
    "URL_SETTING",
    "at_startup",
    "classify_error",
    "connect",
    "connect_async",
    "connection_options",
    "require_tables",
]

URL_SETTING = "BRIDGE_DATABASE__URL"
_SCHEMA_SETTING = "BRIDGE_DATABASE__SCHEMA_NAME"

# SQLSTATE classes and codes that retrying cannot fix.
_PERMANENT_STATES = {
    "28000": "authorization failed",
    "28P01": "password authentication failed",
    "3D000": "the database does not exist",
    "42501": "insufficient privilege",
    "3F000": "the schema does not exist",
    "42P01": "a table does not exist",
}
# Statements refused for what they are: data exceptions, integrity violations, syntax or access
# rule violations, unsupported features. (Deadlocks and serialization failures, class 40, retry.)
_PERMANENT_CLASSES = {"22", "23", "42", "0A"}
# libpq's words for the same, when the server refused before a SQLSTATE reached us.
_PERMANENT_WORDS = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|database \".*\" does not exist|"
    r"role \".*\" does not exist|invalid (connection option|integer value|sslmode value)|"
    r"missing \"=\" after|invalid URI",
    re.IGNORECASE,
)
# A host name that does not resolve (libpq's words, and psycopg's own resolver's). At start-up it is
# a bad URL (see :func:`at_startup`); later it is a DNS hiccup, an outage like any other.
_UNRESOLVED_HOST = re.compile(r"could not translate host name|failed to resolve host", re.IGNORECASE)


def connection_options(application_name: str, connect_timeout: float = 10.0) -> dict[str, Any]:
    """The libpq options of every connection bridge opens: a name in ``pg_stat_activity``, a
    bounded connect, and TCP keepalives so a dead peer is noticed in seconds, not hours."""
    return {
        "application_name": application_name,
        "connect_timeout": max(1, round(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def connect(
    url: str, *, application_name: str, autocommit: bool = True, connect_timeout: float = 10.0, prepare: bool = True
) -> psycopg.Connection[Any]:
    """Open a connection; raise a :class:`~bridge.errors.DatabaseError` saying whether to retry.

    ``prepare=False`` never uses server-side prepared statements (so no generic plan is cached:
    each statement is planned with its real parameters and the table's current size).
    """
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **connection_options(application_name, connect_timeout))
    except psycopg.Error as exc:
        raise classify_error(exc, "connect") from None
    if not prepare:
        conn.prepare_threshold = None
    return conn


async def connect_async(
    url: str, *, application_name: str, autocommit: bool = True, connect_timeout: float = 10.0
) -> psycopg.AsyncConnection[Any]:
    """:func:`connect` for asyncio."""
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, **connection_options(application_name, connect_timeout)
        )
    except psycopg.Error as exc:
        raise classify_error(exc, "connect") from None


def classify_error(exc: psycopg.Error, doing: str = "") -> DatabaseError:
    """psycopg's error as bridge's: permanent ones name the setting to fix."""
    text = _first_line(exc)
    prefix = f"{doing}: " if doing else ""
    state = exc.sqlstate or ""
    if state in ("3F000", "42P01"):
        return SchemaNotMigratedError(
            f"{prefix}{text} (run bridge db migrate, or check {_SCHEMA_SETTING})", setting=_SCHEMA_SETTING
        )
    if state in _PERMANENT_STATES or (isinstance(exc, psycopg.ProgrammingError) and doing == "connect"):
        return DatabaseConfigurationError(f"{prefix}{text} (check {URL_SETTING})", setting=URL_SETTING)
    if _PERMANENT_WORDS.search(str(exc)):
        return DatabaseConfigurationError(f"{prefix}{text} (check {URL_SETTING})", setting=URL_SETTING)
    if state[:2] in _PERMANENT_CLASSES:
        return DatabaseQueryError(f"{prefix}{text} (SQLSTATE {state})")
    return DatabaseUnavailableError(
        f"{prefix}{text} (check {URL_SETTING} and that PostgreSQL runs)", setting=URL_SETTING
    )


def at_startup(error: DatabaseError) -> DatabaseError:
    """``error`` as seen by a process starting up: a host name that does not resolve then is a bad
    URL (a permanent :class:`DatabaseConfigurationError`, so the process exits at once naming the
    setting) rather than an outage; once running, the same failure stays retriable (DNS hiccups)."""
    if isinstance(error, DatabaseUnavailableError) and _UNRESOLVED_HOST.search(str(error)):
        text = str(error).replace(" and that PostgreSQL runs", "")
        return DatabaseConfigurationError(f"{text} (the host name does not resolve)", setting=URL_SETTING)
    return error


def require_tables(conn: psycopg.Connection[Any], schema: str, tables: tuple[str, ...]) -> None:
    """Raise :class:`SchemaNotMigratedError` unless every table exists in ``schema``."""
    missing = [
        table
        for table in tables
        if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)).fetchone()
        == (None,)
    ]
    if missing:
        names = ", ".join(f"{schema}.{t}" for t in missing)
        raise SchemaNotMigratedError(
            f"{names} missing: run bridge db migrate (schema from {_SCHEMA_SETTING})", setting=_SCHEMA_SETTING
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
