"""Test helpers for consumers: build envelopes, produce them like the relay, run a consumer app in
a thread or as a real process, and a counting test application."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from bridge.config import BridgeSettings
from bridge.consumer import ConsumerApp, ConsumerRunner, ErrorPolicy
from bridge.envelope import Envelope
from bridge.ids import new_event_id
from bridge.wiring import build_consumer
from support.outbox import CONTRACTS, Env, wait_until
from support.process import BridgeProcess, running

TESTS = Path(__file__).resolve().parents[1]
#: coach.assigned: produced by delivery, consumed by coaching only, no payload schema.
APP_TYPE = "coach.assigned"


def envelope(
    event_type: str = APP_TYPE,
    version: int = 1,
    subject: str = "coa_1",
    payload: dict[str, Any] | None = None,
    producer: str | None = None,
) -> Envelope:
    now = datetime.now(UTC)
    return Envelope(
        event_id=new_event_id(),
        event_type=event_type,
        schema_version=version,
        producer=producer or CONTRACTS.registry.events[event_type].producer,
        tenant_id="tenant-1",
        subject=subject,
        occurred_at=now,
        recorded_at=now,
        payload=payload or {},
    )


def contract_headers(item: Envelope) -> list[tuple[str, str | bytes | None]]:
    """The headers the relay writes for an envelope."""
    return [
        ("event_id", item.event_id.encode()),
        ("event_type", item.event_type.encode()),
        ("schema_version", str(item.schema_version).encode()),
        ("producer", item.producer.encode()),
        ("tenant_id", item.tenant_id.encode()),
        ("content-type", b"application/json"),
    ]


def relay_like_producer(bootstrap: str) -> Producer:
    """A producer with the relay's ordering settings (idempotent, the Java client's partitioner)."""
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"})


def produce(
    bootstrap: str, topic: str, items: list[Any], *, raw: bool = False, producer: Producer | None = None
) -> list[tuple[int, int]]:
    """Produce envelopes (or raw (key, value) pairs) the way the relay does (with ``producer``, or a
    new one). Returns where each item landed, ``(partition, offset)`` in the order given, from the
    delivery reports."""
    producer = producer or relay_like_producer(bootstrap)
    landed: list[tuple[int, int] | None] = [None] * len(items)

    def report(index: int):
        def on_delivery(error, message) -> None:
            assert error is None, f"produce to {topic}: {error}"
            landed[index] = (message.partition(), message.offset())

        return on_delivery

    for index, item in enumerate(items):
        if raw:
            key, value = item
            producer.produce(topic, key=key, value=value, headers=[("event_id", b"raw")], on_delivery=report(index))
            continue
        producer.produce(
            topic,
            key=item.subject.encode(),
            value=item.to_json(),
            headers=contract_headers(item),
            on_delivery=report(index),
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert all(position is not None for position in landed)
    return [position for position in landed if position is not None]


def produce_document(bootstrap: str, topic: str, document: dict[str, Any]) -> None:
    """Produce an envelope document as it is (even one no Envelope would hold), with the contract
    headers the relay would write for it."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"})
    headers = [
        (name, str(document[name]).encode())
        for name in ("event_id", "event_type", "schema_version", "producer", "tenant_id")
    ]
    producer.produce(
        topic,
        key=document["subject"].encode(),
        value=json.dumps(document).encode(),
        headers=[*headers, ("content-type", b"application/json")],
    )
    assert producer.flush(60) == 0


def create_applied_table(env: Env) -> None:
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.applied (n bigserial PRIMARY KEY, event_id text NOT NULL, "
                "subject text NOT NULL, seq int)"
            ).format(sql.Identifier(env.schema))
        )


def applied(env: Env) -> list[tuple[str, str, int | None]]:
    with psycopg.connect(env.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT event_id, subject, seq FROM {}.applied ORDER BY n").format(sql.Identifier(env.schema))
        ).fetchall()


def order_violations(rows: list[tuple[str, str, int | None]]) -> list[str]:
    last: dict[str, int] = {}
    problems = []
    for _, subject, seq in rows:
        if seq is None:
            continue
        if seq <= last.get(subject, 0):
            problems.append(f"{subject}: {seq} after {last[subject]}")
        last[subject] = seq
    return problems


def decide(event: Envelope, failures: dict[str, int]) -> None:
    """The payload knobs of the test apps: ``{"fail_times": n}`` fails the first n attempts,
    ``{"decide": "skip"|"dead"|"retry"}`` raises that decision (``retry`` once)."""
    from bridge.errors import DeadLetter, RetryLater, SkipEvent

    payload = event.payload
    seen = failures.get(event.event_id, 0)
    if seen < payload.get("fail_times", 0):
        failures[event.event_id] = seen + 1
        raise RuntimeError(f"planned failure {seen + 1} of {event.event_id}")
    decision = payload.get("decide")
    if decision == "skip":
        raise SkipEvent("not for us")
    if decision == "dead":
        raise DeadLetter("the handler refuses this one")
    if decision == "retry" and seen < 1:
        failures[event.event_id] = seen + 1
        raise RetryLater("not yet", delay=0.2)


def counting_app(
    schema: str, *, policy: ErrorPolicy | None = None, failures: dict[str, int] | None = None
) -> ConsumerApp:
    """coaching's app: records each applied coach.assigned in <schema>.applied, then obeys the
    payload knobs (:func:`decide`)."""
    app = ConsumerApp("coaching", contracts=CONTRACTS, policy=policy)
    known_failures = failures if failures is not None else {}
    insert = sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: psycopg.Connection) -> None:
        conn.execute(insert, (event.event_id, event.subject, event.payload.get("seq")))
        decide(event, known_failures)

    return app


def app_from_environment() -> ConsumerApp:
    """For ``bridge consume support.consumer:app_from_environment`` in a subprocess.

    Fault hook: with ``TEST_APP_KILL_AFTER_APPLIED=n`` the process SIGKILLs itself as soon as ``n``
    events are visible in ``<schema>.applied`` from another session, that is once their database
    transaction has committed; with ``auto.commit.interval.ms`` long, no offset was committed yet.
    ``TEST_APP_KIND``: the handler shape (:data:`support.apps.KINDS`; default ``sync``)."""
    from support.apps import kind_app

    schema = os.environ["TEST_APP_SCHEMA"]
    kill_after = os.environ.get("TEST_APP_KILL_AFTER_APPLIED")
    if kill_after:
        threading.Thread(target=_kill_after_applied, args=(schema, int(kill_after)), daemon=True).start()
    return kind_app(schema, os.environ.get("TEST_APP_KIND", "sync"), database_url=os.environ["BRIDGE_DATABASE__URL"])


def _kill_after_applied(schema: str, count: int) -> None:
    url = os.environ["BRIDGE_DATABASE__URL"]
    query = sql.SQL("SELECT count(*) FROM {}.applied").format(sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(query).fetchone()[0] < count:  # type: ignore[index]  # SELECT count(*) always returns one row
            time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def consumer_thread(
    env: Env, app: ConsumerApp, settings: BridgeSettings | None = None, **consumer_settings
) -> Iterator[ConsumerRunner]:
    """A library consumer of ``app`` running in a thread (``consumer_settings``: BRIDGE_CONSUMER__*,
    or whole ``settings``)."""
    runner = build_consumer(app, settings or env.settings(consumer=consumer_settings))
    with running(runner):
        yield runner


class ConsumerProcess(BridgeProcess):
    """``python -m bridge consume support.consumer:app_from_environment`` as a real process."""

    def __init__(
        self,
        env: Env,
        log_dir: Path,
        kafka_options: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_dir, "consumer")
        self.env = env
        self.kafka_options = kafka_options or {}
        self.extra_env = extra_env or {}
        self.args: list[str] = []

    def command(self) -> list[str]:
        return ["consume", "support.consumer:app_from_environment", *self.args]

    def environ(self) -> dict[str, str]:
        # A short session, so the group notices a SIGKILLed member within seconds.
        extra = {"BRIDGE_KAFKA__OPTIONS": json.dumps(self.kafka_options)} if self.kafka_options else {}
        return self.env.environ(
            TEST_APP_SCHEMA=self.env.schema,
            PYTHONPATH=str(TESTS),
            BRIDGE_CONSUMER__SESSION_TIMEOUT_MS="6000",
            BRIDGE_CONSUMER__BACKOFF_INITIAL="0.1",
            BRIDGE_CONSUMER__BACKOFF_MAX="0.5",
            **extra,
            **self.extra_env,
        )

    def cwd(self) -> Path:
        return TESTS


def wait_applied(env: Env, count: int, timeout: float = 60) -> None:
    wait_until(lambda: len(applied(env)) >= count, timeout=timeout, message=f"{count} applied events")
