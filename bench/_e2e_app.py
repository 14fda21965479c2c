"""The consumer application of ``bench/e2e.py``: one row per applied event, written by the handler in
the inbox's transaction. ``received_at`` is the wall-clock time the handler was called; the row's
commit time comes from PostgreSQL (``pg_xact_commit_timestamp``). Run as
``bridge consume _e2e_app:app`` with ``bench`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from psycopg import sql

from bridge.consumer import ConsumerApp
from bridge.envelope import Envelope

CONSUMER = "coaching"
EVENT_TYPE = "coach.assigned"


def app() -> ConsumerApp:
    consumer = ConsumerApp(CONSUMER)
    member = os.getpid()
    insert = sql.SQL("INSERT INTO {}.applied (event_id, received_at, member) VALUES (%s, to_timestamp(%s), %s)").format(
        sql.Identifier(os.environ["BRIDGE_DATABASE__SCHEMA_NAME"])
    )

    @consumer.handler(EVENT_TYPE, version=1)
    def apply(event: Envelope, conn: psycopg.Connection[Any]) -> None:
        conn.execute(insert, (event.event_id, time.time(), member))

    return consumer
