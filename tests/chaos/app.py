"""The chaos suite's consumer application: coaching, applying coach.assigned.

Run as ``bridge consume chaos.app:app`` (with ``tests`` on PYTHONPATH). Each applied event is one
row of ``<schema>.applied`` — no unique key on purpose, so an event applied twice shows up as two
rows — written in the transaction that writes the inbox row. ``CHAOS_MEMBER`` names the process.

Poison knobs in the payload: ``{"chaos": "fail"}`` always raises (dead-lettered as ``handler`` after
the retries) with a long message; ``{"chaos": "dead"}`` raises :class:`DeadLetter` (``decision``).
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

from bridge.consumer import ConsumerApp
from bridge.envelope import Envelope
from bridge.errors import DeadLetter

APPLIED_TABLE = """
CREATE TABLE IF NOT EXISTS {}.applied (
    n bigserial PRIMARY KEY,
    event_id text NOT NULL,
    subject text NOT NULL,
    seq int NOT NULL,
    member text NOT NULL,
    recorded_at timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def app() -> ConsumerApp:
    consumer = ConsumerApp("coaching")
    schema = os.environ["BRIDGE_DATABASE__SCHEMA_NAME"]
    member = os.environ.get("CHAOS_MEMBER", f"pid-{os.getpid()}")
    insert = sql.SQL(
        "INSERT INTO {}.applied (event_id, subject, seq, member, recorded_at) VALUES (%s, %s, %s, %s, %s)"
    ).format(sql.Identifier(schema))

    @consumer.handler("coach.assigned", version=1)
    def apply(event: Envelope, conn: psycopg.Connection) -> None:
        knob = event.payload.get("chaos")
        if knob == "fail":
            raise RuntimeError(f"chaos: the handler refuses {event.event_id}: " + "and says why at length " * 200)
        if knob == "dead":
            raise DeadLetter(f"chaos: the handler dead-letters {event.event_id}")
        conn.execute(insert, (event.event_id, event.subject, event.payload["seq"], member, event.recorded_at))

    return consumer
