"""The outbox table on PostgreSQL: the relay's reads, deletes, quarantine and leadership lock, and
the operators' ``bridge outbox`` commands. Every identifier is quoted with :mod:`psycopg.sql`.

A read (see :mod:`bridge.outbox.source` for why it never skips a late commit) is one
``REPEATABLE READ`` transaction, so its rows and its view of running transactions come from one
snapshot, sent in one round trip with the leadership check. Its cost does not depend on planner
statistics or plan caching: it is two primary-key lookups (the gaps by id, the range above the
cursor), forced for the read's transaction (``enable_seqscan`` and friends off: statistics taken
while the table was empty made every read scan the whole table), and the relay's connection never
prepares statements (a generic plan made while the table was empty is what once turned reads
quadratic). Published rows are deleted as ranges of consecutive ids.
The relay's session commits asynchronously: a delete lost in a database crash only means the row
is sent again, which at-least-once allows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from bridge.outbox.migrations import check_schema_name
from bridge.outbox.source import (
    OutboxRow,
    OutboxSource,
    OutboxStats,
    QuarantinedRow,
    ReadRequest,
    ReadResult,
    StartState,
    id_ranges,
)
from bridge.postgres import classify_error, connect, require_tables

__all__ = ["OutboxStore", "PostgresOutbox", "multirange"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _database(doing: str) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """psycopg's errors raised as bridge's (retriable or not, naming the setting to check)."""

    def decorate(method: Callable[_P, _T]) -> Callable[_P, _T]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return method(*args, **kwargs)
            except psycopg.Error as exc:
                raise classify_error(exc, doing) from None

        return wrapper

    return decorate


# Whether this session holds the relay's two-key advisory lock (classid/objid are the two keys).
_HOLDS_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "AND granted AND objsubid = 2 AND classid = hashtext(%s)::oid AND objid = hashtext(%s)::oid)"
)
# Whether a read goes back to the start of the table: a watched transaction has ended, or one
# below the bound still ran. The read's two statements share one snapshot, so they agree.
_FROM_START = (
    "(EXISTS (SELECT 1 FROM unnest(%(watch)b::int8[]) AS w WHERE pg_visible_in_snapshot(w::text::xid8, s)) "
    "OR (%(below)s::int8 IS NOT NULL AND pg_snapshot_xmin(s)::text::int8 <= %(below)s::int8))"
)
_SNAPSHOT = (
    "SELECT pg_snapshot_xmin(s)::text::int8, "
    "array(SELECT w FROM unnest(%(watch)b::int8[]) AS w WHERE pg_visible_in_snapshot(w::text::xid8, s)), "
    f"{_FROM_START} FROM pg_current_snapshot() AS s"
)
_START = (
    "SELECT pg_snapshot_xmax(s)::text::int8, array(SELECT x::text::int8 FROM pg_snapshot_xip(s) AS x) "
    "FROM pg_current_snapshot() AS s"
)
_MARK = "SELECT pg_current_xact_id()::text::int8"
#: For this transaction only: walk the primary key, whatever the statistics say. After a VACUUM
#: ANALYZE of the empty outbox the planner believes the table empty and picks a sequential scan and
#: a sort, so every read of a burst examined the whole table (5,000 rows for a read of 1,000;
#: tests/integration/test_outbox_read_cost.py); by key a read examines what it returns.
_BY_PRIMARY_KEY = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_sort', 'off', true)"
)
#: More transactions than this to watch at start: go back to the start of the table on every read
#: until the oldest running transaction is younger than them all.
_WATCH_LIMIT = 10_000


class OutboxStore(OutboxSource):
    """SQL for the relay and the ``bridge outbox`` commands, on one connection.

    The connection should be in autocommit mode: each call is its own short transaction, and the
    leadership lock is a *session* lock held by this connection.
    """

    def __init__(self, conn: psycopg.Connection[Any], schema: str = "bridge") -> None:
        self.conn = conn
        self.schema = check_schema_name(schema)
        table = sql.Identifier(schema, "outbox")
        self._lock_args = ("bridge.relay", schema)
        # Only what a record needs; headers only when there are some (the trace context).
        columns = sql.SQL(
            "o.id, o.event_id, o.event_type, o.schema_version, o.subject, o.tenant_id, o.producer, o.value, "
            "nullif(o.headers, '{}'::jsonb)::text"
        )
        # The visible gaps (by id), then at most `limit` rows above the position (or from 0).
        self._read = sql.SQL(
            "SELECT {c} FROM {t} o WHERE o.id = ANY(%(gaps)b::int8[]) AND o.failed_at IS NULL "
            "AND NOT (%(exclude)s::int8multirange @> o.id) "
            "UNION ALL "
            "(SELECT {c} FROM {t} o WHERE o.id > (SELECT CASE WHEN {from_start} THEN 0 ELSE %(position)s::int8 END "
            "FROM pg_current_snapshot() AS s) "
            "AND o.failed_at IS NULL AND NOT (%(exclude)s::int8multirange @> o.id) AND o.id <> ALL(%(gaps)b::int8[]) "
            "ORDER BY o.id LIMIT %(limit)s)"
        ).format(c=columns, t=table, from_start=sql.SQL(_FROM_START))
        self._sequence = sql.SQL("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence({}, 'id')), 0)").format(
            sql.Literal(f'"{schema}".outbox')
        )
        self._delete = sql.SQL(
            "WITH d AS (DELETE FROM {} o USING unnest(%b::int8[], %b::int8[]) AS r(lo, hi) "
            "WHERE o.id BETWEEN r.lo AND r.hi RETURNING 1) "
            "SELECT pg_current_xact_id()::text::int8 FROM (SELECT count(*) FROM d) AS deleted"
        ).format(table)
        self._attempt = sql.SQL(
            "UPDATE {} SET attempts = attempts + 1, failure = %s WHERE id = ANY(%s::bigint[]) RETURNING id, attempts"
        ).format(table)
        self._quarantine = sql.SQL(
            "UPDATE {} SET failed_at = now(), failure = %s WHERE id = %s AND failed_at IS NULL"
        ).format(table)
        self._held = sql.SQL("SELECT DISTINCT subject FROM {} WHERE failed_at IS NOT NULL").format(table)
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

    @_database("take the leadership lock")
    def try_lead(self) -> bool:
        """Try to take the relay leadership lock for this schema (a session advisory lock)."""
        row = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", self._lock_args).fetchone()
        return bool(row and row[0])

    @_database("check the leadership lock")
    def holds_lock(self) -> bool:
        """Whether *this session* still holds the lock. False behind a transaction-pooling proxy."""
        row = self.conn.execute(_HOLDS_LOCK, self._lock_args).fetchone()
        return bool(row and row[0])

    # --- the relay's reads and writes -----------------------------------------------------------

    @_database("find where to start reading")
    def start(self) -> StartState:
        conn = self.conn
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute(_START)
            sequence = conn.execute(self._sequence)
            conn.execute("COMMIT")
        xmax, running = snapshot.fetchone() or (0, [])
        last = sequence.fetchone()
        bound = self.mark()
        # Running then: the transactions the snapshot listed, and any that began after the newest
        # one to end (the snapshot does not list those) and before `bound` was drawn.
        if bound - xmax > _WATCH_LIMIT:
            return StartState(int(last[0]) if last else 0, frozenset(running), watch_all_below=bound)
        return StartState(int(last[0]) if last else 0, frozenset(running) | frozenset(range(xmax, bound)))

    @_database("read the outbox")
    def read(self, request: ReadRequest) -> ReadResult:
        params = {
            "position": request.position,
            "gaps": list(request.gaps),
            "watch": list(request.watch),
            "below": request.watch_all_below,
            "exclude": multirange([*request.exclude, *request.delete]),
            "limit": request.limit,
        }
        conn = self.conn
        deleted = None
        with conn.pipeline():
            # One transaction: a pipeline runs everything before its sync as one implicit
            # transaction anyway, and the delete's snapshot is the read's.
            if request.delete:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            else:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(_BY_PRIMARY_KEY)  # one statement: three SET LOCALs were three in the pipeline
            if request.delete:
                ranges = id_ranges(request.delete)
                deleted = conn.execute(self._delete, ([lo for lo, _ in ranges], [hi for _, hi in ranges]))
            held = conn.execute(_HOLDS_LOCK, self._lock_args)
            snapshot = conn.execute(_SNAPSHOT, params)
            # Binary results: the values (bytea) arrive as they are, not as hex to decode.
            rows = conn.cursor(binary=True).execute(self._read, params)
            conn.execute("COMMIT")
        deleted_row = deleted.fetchone() if deleted is not None else None
        leading = held.fetchone()
        xmin, ended, from_start = snapshot.fetchone() or (0, [], False)
        found = _rows(rows.fetchall())
        gaps = set(request.gaps)
        in_range = sum(1 for row in found if row.id not in gaps) if gaps else len(found)
        found.sort(key=lambda row: row.id)
        return ReadResult(
            bool(leading and leading[0]),
            found,
            in_range >= request.limit,
            int(xmin),
            frozenset(ended),
            bool(from_start),
            int(deleted_row[0]) if deleted_row else None,
        )

    @_database("delete published rows")
    def delete(self, ids: Sequence[int]) -> int:
        """Remove published rows, as ranges of consecutive ids (one statement); return its xid."""
        ranges = id_ranges(ids)
        row = self.conn.execute(self._delete, ([lo for lo, _ in ranges], [hi for _, hi in ranges])).fetchone()
        return int(row[0]) if row else self.mark()

    @_database("draw a transaction id")
    def mark(self) -> int:
        row = self.conn.execute(_MARK).fetchone()
        return int(row[0]) if row else 0

    @_database("record a delivery attempt")
    def record_attempt(self, ids: Sequence[int], failure: str) -> dict[int, int]:
        if not ids:
            return {}
        return dict(self.conn.execute(self._attempt, (failure, list(ids))).fetchall())

    @_database("quarantine a row")
    def quarantine(self, row_id: int, reason: str) -> bool:
        return self.conn.execute(self._quarantine, (reason, row_id)).rowcount == 1

    @_database("read quarantined subjects")
    def held_subjects(self) -> set[str]:
        return {row[0] for row in self.conn.execute(self._held)}

    @_database("read outbox statistics")
    def stats(self) -> OutboxStats:
        row = self.conn.execute(self._stats).fetchone()
        assert row is not None  # an aggregate always returns a row
        backlog, oldest, quarantined = row
        return OutboxStats(backlog, oldest, quarantined)

    # --- operators ------------------------------------------------------------------------------

    @_database("list quarantined rows")
    def quarantined(self) -> list[QuarantinedRow]:
        return self.conn.cursor(row_factory=class_row(QuarantinedRow)).execute(self._quarantined).fetchall()

    @_database("re-queue quarantined rows")
    def retry(self, ids: Sequence[int] | None = None) -> int:
        """Put quarantined rows back in line (all of them when ``ids`` is None); return how many."""
        if ids is None:
            return self.conn.execute(self._retry_all).rowcount
        return self.conn.execute(self._retry_some, (list(ids),)).rowcount


class PostgresOutbox:
    """Opens the relay's session on an outbox: a connection that never prepares statements (see
    the module docstring), checked for bridge's tables; optionally LISTENing for emit's hint."""

    def __init__(self, url: str, schema: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.schema = check_schema_name(schema)
        self.connect_timeout = connect_timeout

    @contextmanager
    def __call__(self) -> Iterator[OutboxStore]:
        conn = connect(self.url, application_name="bridge-relay", connect_timeout=self.connect_timeout, prepare=False)
        try:
            try:
                require_tables(conn, self.schema, ("outbox",))
                conn.execute("SET synchronous_commit = off")
            except psycopg.Error as exc:
                raise classify_error(exc, "check the outbox table") from None
            yield OutboxStore(conn, self.schema)
        finally:
            conn.close()


def multirange(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` → ``'{[1,4),[7,8)}'``: the ids as an int8multirange literal."""
    return "{" + ",".join(f"[{lo},{hi + 1})" for lo, hi in id_ranges(ids)) + "}"


def _rows(raw: list[tuple[Any, ...]]) -> list[OutboxRow]:
    # Plain tuples, and headers parsed only when a row has some: this is the relay's hot path.
    return [OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else {}) for r in raw]
