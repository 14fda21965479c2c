"""The relay's side of the outbox table: read unpublished rows, delete published ones, quarantine
poison, and the leadership lock. Every identifier is quoted with :mod:`psycopg.sql`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from bridge.outbox.migrations import check_schema_name

__all__ = ["OutboxRow", "OutboxStats", "OutboxStore", "QuarantinedRow"]

# Whether this session holds the relay's two-key advisory lock (classid/objid are the two keys).
_HOLDS_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "AND granted AND objsubid = 2 AND classid = hashtext(%s)::oid AND objid = hashtext(%s)::oid)"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One unpublished event as the relay reads it."""

    id: int
    event_id: str
    event_type: str
    schema_version: int
    subject: str
    tenant_id: str
    producer: str
    value: bytes
    headers: dict[str, Any]
    recorded_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    id: int
    event_id: str
    event_type: str
    subject: str
    attempts: int
    failed_at: datetime
    failure: str
    size: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    oldest_recorded_at: datetime | None
    quarantined: int


class OutboxStore:
    """SQL for the relay and the ``bridge outbox`` commands, on one connection.

    The connection should be in autocommit mode: each call is its own short transaction, and the
    leadership lock is a *session* lock held by this connection.
    """

    def __init__(self, conn: psycopg.Connection, schema: str = "bridge") -> None:
        self.conn = conn
        self.schema = check_schema_name(schema)
        table = sql.Identifier(schema, "outbox")
        self._lock_args = ("bridge.relay", schema)
        # Rows in flight are excluded by id, passed as a compact multirange (they are mostly one
        # contiguous run), so a long in-flight list costs neither bandwidth nor planning time.
        # A subject with a quarantined row is held back until that row is retried or discarded.
        self._fetch = sql.SQL(
            "SELECT id, event_id, event_type, schema_version, subject, tenant_id, producer, value, headers::text, "
            "recorded_at, attempts FROM {t} o "
            "WHERE o.failed_at IS NULL AND NOT (%s::int8multirange @> o.id) "
            "AND NOT EXISTS (SELECT 1 FROM {t} q WHERE q.failed_at IS NOT NULL AND q.subject = o.subject AND q.id < o.id) "
            "ORDER BY o.id LIMIT %s"
        ).format(t=table)
        self._delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(table)
        self._attempt = sql.SQL(
            "UPDATE {} SET attempts = attempts + 1, failure = %s WHERE id = ANY(%s::bigint[]) RETURNING id, attempts"
        ).format(table)
        self._quarantine = sql.SQL(
            "UPDATE {} SET failed_at = now(), failure = %s WHERE id = %s AND failed_at IS NULL"
        ).format(table)
        self._quarantined = sql.SQL(
            "SELECT id, event_id, event_type, subject, attempts, failed_at, failure, octet_length(value) AS size "
            "FROM {} WHERE failed_at IS NOT NULL ORDER BY id"
        ).format(table)
        self._retry_some = sql.SQL(
            "UPDATE {} SET failed_at = NULL, failure = NULL, attempts = 0 "
            "WHERE failed_at IS NOT NULL AND id = ANY(%s::bigint[])"
        ).format(table)
        self._retry_all = sql.SQL(
            "UPDATE {} SET failed_at = NULL, failure = NULL, attempts = 0 WHERE failed_at IS NOT NULL"
        ).format(table)
        self._stats = sql.SQL(
            "SELECT count(*) FILTER (WHERE failed_at IS NULL), min(recorded_at) FILTER (WHERE failed_at IS NULL), "
            "count(*) FILTER (WHERE failed_at IS NOT NULL) FROM {}"
        ).format(table)

    # --- leadership ------------------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Try to take the relay leadership lock for this schema (a session advisory lock)."""
        return self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", self._lock_args
        ).fetchone()[0]

    def holds_lock(self) -> bool:
        """Whether *this session* still holds the lock. False behind a transaction-pooling proxy."""
        return self.conn.execute(_HOLDS_LOCK, self._lock_args).fetchone()[0]

    def lock_and_fetch(self, limit: int, exclude: Sequence[int]) -> tuple[bool, list[OutboxRow]]:
        """Check the lock and read the next rows in one round trip."""
        with self.conn.pipeline():
            held = self.conn.execute(_HOLDS_LOCK, self._lock_args)
            rows = self.conn.execute(self._fetch, (_multirange(exclude), limit))
        return held.fetchone()[0], _rows(rows.fetchall())

    # --- rows ------------------------------------------------------------------------------------

    def fetch(self, limit: int, exclude: Sequence[int] = ()) -> list[OutboxRow]:
        """The first ``limit`` unpublished rows in id order, skipping ``exclude`` and held subjects."""
        return _rows(self.conn.execute(self._fetch, (_multirange(exclude), limit)).fetchall())

    def delete(self, ids: Sequence[int]) -> int:
        """Remove published rows."""
        if not ids:
            return 0
        return self.conn.execute(self._delete, (list(ids),)).rowcount

    def record_attempt(self, ids: Sequence[int], failure: str) -> dict[int, int]:
        """Count a failed delivery attempt; return the attempts so far per id."""
        if not ids:
            return {}
        return dict(self.conn.execute(self._attempt, (failure, list(ids))).fetchall())

    def quarantine(self, row_id: int, reason: str) -> bool:
        """Set a poison row aside with its reason; later rows of its subject wait for it."""
        return self.conn.execute(self._quarantine, (reason, row_id)).rowcount == 1

    def quarantined(self) -> list[QuarantinedRow]:
        return self.conn.cursor(row_factory=class_row(QuarantinedRow)).execute(self._quarantined).fetchall()

    def retry(self, ids: Sequence[int] | None = None) -> int:
        """Put quarantined rows back in line (all of them when ``ids`` is None); return how many."""
        if ids is None:
            return self.conn.execute(self._retry_all).rowcount
        return self.conn.execute(self._retry_some, (list(ids),)).rowcount

    def stats(self) -> OutboxStats:
        backlog, oldest, quarantined = self.conn.execute(self._stats).fetchone()
        return OutboxStats(backlog, oldest, quarantined)


def _multirange(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` → ``'{[1,4),[7,8)}'``: the ids as an int8multirange literal."""
    if not ids:
        return "{}"
    ordered = sorted(ids)
    runs = []
    start = previous = ordered[0]
    for value in ordered[1:]:
        if value != previous + 1:
            runs.append(f"[{start},{previous + 1})")
            start = value
        previous = value
    runs.append(f"[{start},{previous + 1})")
    return "{" + ",".join(runs) + "}"


def _rows(raw: list[tuple]) -> list[OutboxRow]:
    # Plain tuples and a lazy headers parse: this is the relay's hot path.
    return [
        OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] != "{}" else {}, r[9], r[10])
        for r in raw
    ]
