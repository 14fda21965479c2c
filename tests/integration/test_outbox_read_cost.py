"""The relay's read costs the same whatever the planner statistics say and however often it ran.

A defect once made it quadratic: after the outbox was ``VACUUM ANALYZE``d while empty (what
autovacuum does after a drain) and the relay had polled it more than five times, psycopg prepared
the read and PostgreSQL kept a generic plan costed for a 0-page table, a nested-loop anti-join that
scanned the whole outbox for every candidate row. Here the same sequence runs through the relay's
own session (:class:`~bridge.outbox.PostgresOutbox`), then one read of a burst is measured by the
rows PostgreSQL examined on the table (``pg_stat_user_tables``), never by time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bridge.outbox import PostgresOutbox, ReadRequest, migrate

pytestmark = pytest.mark.integration

BURST = 5000
LIMIT = 1000


def rows_examined(url: str, schema: str) -> int:
    """Rows the outbox's scans have read so far (sequential and by index), from a fresh snapshot."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'outbox'",
            (schema,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def flush_statistics(conn: psycopg.Connection[Any]) -> None:
    """Make this session report its table counters now (they are otherwise sent at most once a second)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens when the session goes idle after the call above


def test_a_burst_after_idle_polls_of_an_outbox_analysed_while_empty_is_read_without_rescanning(
    postgres_service: Any, unique_name: Callable[[str], str]
) -> None:
    url = postgres_service.url
    schema = unique_name("cost")[:63]
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schema)
        conn.execute(sql.SQL("VACUUM ANALYZE {}.outbox").format(sql.Identifier(schema)))
    try:
        with PostgresOutbox(url, schema)() as store:
            for _ in range(20):  # more than psycopg's prepare threshold (5), on the empty table
                assert store.read(ReadRequest(0, LIMIT)).rows == []
            with psycopg.connect(url, autocommit=True) as writer:
                writer.execute(
                    sql.SQL(
                        "INSERT INTO {}.outbox (event_id, event_type, schema_version, subject, tenant_id, producer, "
                        "value) SELECT 'evt_' || g, 'coach.assigned', 1, 'coa_' || (g %% 100), 't', 'delivery', "
                        "'\\x7b7d'::bytea FROM generate_series(1, %s) AS g"
                    ).format(sql.Identifier(schema)),
                    (BURST,),
                )
            flush_statistics(store.conn)
            before = rows_examined(url, schema)
            result = store.read(ReadRequest(0, LIMIT))
            flush_statistics(store.conn)
            examined = rows_examined(url, schema) - before
        # The premise: the read returned a full batch of the burst.
        assert len(result.rows) == LIMIT
        assert result.range_full
        # A plan per read walks the range once (plus the gap lookups); the generic anti-join plan
        # examined the whole outbox for each candidate row (millions here).
        assert examined <= 3 * LIMIT, f"one read of {LIMIT} rows examined {examined} rows of a {BURST}-row outbox"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
