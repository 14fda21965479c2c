"""Services for the benchmarks, found or started the way the tests do it.

``BRIDGE_TEST_DATABASE_URL`` / ``BRIDGE_TEST_KAFKA_BOOTSTRAP`` point at existing servers; otherwise
a throwaway PostgreSQL cluster and Apache Kafka (KRaft, cached jars) are started and stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bridge.devstack import KafkaServer, PostgresServer


@contextmanager
def services(*, commit_timestamps: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (database URL, Kafka bootstrap servers). ``commit_timestamps``: PostgreSQL records each
    transaction's commit time (``track_commit_timestamp``, which needs a restart)."""
    pg = kafka = None
    try:
        url = os.environ.get("BRIDGE_TEST_DATABASE_URL")
        if not url:
            pg = PostgresServer.start()
            url = pg.url
            if commit_timestamps:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
                pg.restart()
        if commit_timestamps:
            with psycopg.connect(url) as conn:
                row = conn.execute("SHOW track_commit_timestamp").fetchone()
            if not row or row[0] != "on":
                raise SystemExit(f"track_commit_timestamp is off on {url}: turn it on (it needs a restart)")
        bootstrap = os.environ.get("BRIDGE_TEST_KAFKA_BOOTSTRAP")
        if not bootstrap:
            kafka = KafkaServer.start()
            bootstrap = kafka.bootstrap_servers
        yield url, bootstrap
    finally:
        if kafka is not None:
            kafka.stop()
        if pg is not None:
            pg.stop()
