"""Services for the benchmarks, found or started the way the tests do it.

``BRIDGE_TEST_DATABASE_URL`` / ``BRIDGE_TEST_KAFKA_BOOTSTRAP`` point at existing servers; otherwise
a throwaway PostgreSQL cluster and Apache Kafka (KRaft, cached jars) are started and stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.devstack import KafkaServer, PostgresServer


@contextmanager
def services() -> Iterator[tuple[str, str]]:
    """Yield (database URL, Kafka bootstrap servers)."""
    pg = kafka = None
    try:
        url = os.environ.get("BRIDGE_TEST_DATABASE_URL")
        if not url:
            pg = PostgresServer.start()
            url = pg.url
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
