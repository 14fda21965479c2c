"""Example consumer applications, run with ``bridge consume examples.consumers:sales``.

Each records the events it applies in ``<schema>.effects``, in the same transaction as the inbox
row: the smallest useful handler. Replace the body with your domain's writes.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

from bridge.consumer import ConsumerApp
from bridge.envelope import Envelope


def _recording_app(consumer: str) -> ConsumerApp:
    app = ConsumerApp(consumer)
    schema = os.environ.get("BRIDGE_DATABASE__SCHEMA_NAME", "bridge")
    create = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.effects (event_id text PRIMARY KEY, event_type text NOT NULL, "
        "subject text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(schema))
    insert = sql.SQL("INSERT INTO {}.effects (event_id, event_type, subject) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )
    created = False

    def record(event: Envelope, conn: psycopg.Connection) -> None:
        nonlocal created
        if not created:
            conn.execute(create)
            created = True
        conn.execute(insert, (event.event_id, event.event_type, event.subject))

    for event_type in app.subscriptions:
        app.handler(event_type)(record)
    return app


def sales() -> ConsumerApp:
    """The sales domain: applies every event type the registry gives it."""
    return _recording_app("sales")


def coaching() -> ConsumerApp:
    """The coaching domain."""
    return _recording_app("coaching")
