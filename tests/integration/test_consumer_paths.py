"""The handler shapes on a real PostgreSQL and a real Kafka: per-event (``sync``), ``async``, the bulk
path (``@app.rows`` → ``COPY``), a SQLAlchemy session and the Django ORM on the handler's
transaction. Each keeps the consumer's guarantees: one effect per event, a failing record neither
loses nor doubles the others of its batch, its writes roll back with it, offsets move only past
what was applied or dead-lettered. (The process-level guarantees — crash between the database
commit and the offset commit, rebalances, outages, replay — are in test_consumer.py, run for
several shapes there.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql
from support.apps import KINDS, applied_model, kind_app
from support.consumer import APP_TYPE, applied, consumer_thread, create_applied_table, envelope, produce
from support.kafka import create_topics, read_all
from support.outbox import Env, wait_until

from bridge.consumer import AsyncHandler, ConsumerApp, ErrorPolicy
from bridge.consumer.aio import run_in_loop
from bridge.consumer.orm import sqlalchemy_session
from bridge.envelope import Envelope
from bridge.errors import ConfigurationError
from bridge.kafka.records import TopicPartition
from bridge.topics import replay_topic_name
from bridge.wiring import build_consumer

pytestmark = pytest.mark.integration

FAST_RETRIES = ErrorPolicy(max_attempts=2, backoff_initial=0.05, backoff_max=0.1)


@pytest.fixture
def app_env(relay_env: Env) -> Env:
    create_topics(relay_env.bootstrap, [relay_env.topic(APP_TYPE)], partitions=3)
    create_topics(relay_env.bootstrap, [dlq(relay_env), replay_topic_name(relay_env.prefix, "coaching")])
    create_applied_table(relay_env)
    return relay_env


def dlq(env: Env) -> str:
    return f"{env.topic(APP_TYPE)}.dlq.coaching"


def numbered(count: int, subjects: int = 5, **payload: Any) -> list[Envelope]:
    seq: dict[str, int] = {}
    events = []
    for i in range(count):
        subject = f"coa_{i % subjects}"
        seq[subject] = seq.get(subject, 0) + 1
        events.append(envelope(subject=subject, payload={"seq": seq[subject], **payload}))
    return events


def offsets_committed(env: Env) -> dict[int, int]:
    admin = env.clients().admin()
    try:
        found = admin.committed_offsets(
            f"{env.prefix}coaching", [TopicPartition(env.topic(APP_TYPE), p) for p in range(3)], 10.0
        )
        ends = {p: admin.watermarks(TopicPartition(env.topic(APP_TYPE), p), 10.0)[1] for p in range(3)}
    finally:
        admin.close()
    return {tp.partition: offset for tp, offset in found.items()} | {
        p: -1 for p in ends if ends[p] and TopicPartition(env.topic(APP_TYPE), p) not in found
    }


def end_offsets(env: Env) -> dict[int, int]:
    admin = env.clients().admin()
    try:
        return {
            p: end for p in range(3) if (end := admin.watermarks(TopicPartition(env.topic(APP_TYPE), p), 10.0)[1]) > 0
        }
    finally:
        admin.close()


@pytest.mark.parametrize("kind", KINDS)
def test_each_shape_applies_each_event_once(app_env: Env, kind: str) -> None:
    events = numbered(40)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [*events, events[5], events[30]])
    app = kind_app(app_env.schema, kind, database_url=app_env.database_url)
    with consumer_thread(app_env, app) as runner:
        wait_until(lambda: runner.applied + runner.duplicates == 42, message="all deliveries")
    rows = applied(app_env)
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert runner.duplicates == 2
    assert runner.dead_lettered == 0
    assert offsets_committed(app_env) == end_offsets(app_env)


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_record_in_a_batch_neither_loses_nor_doubles_the_others(app_env: Env, kind: str) -> None:
    """The batch's transaction rolls back (the failing record's own writes with it); the others
    are applied one record per transaction, the failing one goes to the DLQ after its attempts."""
    events = numbered(60)
    poison = envelope(subject="coa_2", payload={"seq": 99, "fail_times": 99})
    batch = [*events[:30], poison, *events[30:]]
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), batch)
    app = kind_app(app_env.schema, kind, policy=FAST_RETRIES, database_url=app_env.database_url)
    with consumer_thread(app_env, app, batch_size=500) as runner:
        wait_until(lambda: runner.applied == 60 and runner.dead_lettered == 1, message="the batch and its poison")
    rows = applied(app_env)
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)  # once each; not the poison
    (letter,) = read_all(app_env.bootstrap, [dlq(app_env)], expect=1)
    assert letter.headers["event_id"] == poison.event_id.encode()
    assert letter.headers["dlq.attempts"] == b"2"
    assert letter.headers["dlq.reason"] == b"handler"
    assert offsets_committed(app_env) == end_offsets(app_env)


def test_a_row_the_table_refuses_fails_only_its_own_event(app_env: Env) -> None:
    """The bulk path's COPY is refused as a whole when one row breaks a constraint: the batch is
    applied again one event per transaction, and only the refused event is dead-lettered."""
    with psycopg.connect(app_env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {}.applied ADD CONSTRAINT seq_positive CHECK (seq > 0)").format(
                sql.Identifier(app_env.schema)
            )
        )
    events = numbered(40)
    refused = envelope(subject="coa_1", payload={"seq": -1})
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [*events[:20], refused, *events[20:]])
    app = kind_app(app_env.schema, "bulk", policy=FAST_RETRIES)
    with consumer_thread(app_env, app) as runner:
        wait_until(lambda: runner.applied == 40 and runner.dead_lettered == 1, message="the batch and the refused row")
    assert sorted(r[0] for r in applied(app_env)) == sorted(e.event_id for e in events)
    (letter,) = read_all(app_env.bootstrap, [dlq(app_env)], expect=1)
    assert letter.headers["event_id"] == refused.event_id.encode()
    assert b"seq_positive" in letter.headers["dlq.error.message"]


def test_a_sqlalchemy_session_commits_and_rolls_back_on_a_savepoint(app_env: Env) -> None:
    model = applied_model(app_env.schema)
    app = ConsumerApp("coaching", pipeline=False)

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: psycopg.Connection[Any]) -> None:
        with sqlalchemy_session(conn) as session:
            session.add(model(event_id="discarded", subject=event.subject, seq=0))
            session.flush()
            session.rollback()  # to the session's savepoint: the row above is gone, the event goes on
            session.add(model(event_id=event.event_id, subject=event.subject, seq=event.payload["seq"]))

    events = numbered(10)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), events)
    with consumer_thread(app_env, app) as runner:
        wait_until(lambda: runner.applied == 10, message="ten events")
    assert sorted(r[0] for r in applied(app_env)) == sorted(e.event_id for e in events)


def test_an_orm_on_a_pipelined_connection_is_refused_by_name(app_env: Env) -> None:
    with (
        psycopg.connect(app_env.database_url) as conn,
        conn.pipeline(),
        pytest.raises(ConfigurationError, match=r"pipeline=False"),
        sqlalchemy_session(conn),
    ):
        pass


def test_async_handlers_run_in_the_service_event_loop(app_env: Env) -> None:
    """An asyncio service runs the consumer in its own loop; cancelling the task stops it
    gracefully (the offsets of what was applied are committed)."""
    events = numbered(30)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), events)
    seen_loops: set[int] = set()

    async def service() -> int:
        loop = asyncio.get_running_loop()
        app = kind_app(app_env.schema, "async")
        handler = app.resolve(APP_TYPE, 1)
        assert handler is not None
        async_handler = cast(AsyncHandler, handler)  # the "async" kind registers an async handler

        async def in_this_loop(event: Envelope, conn: psycopg.AsyncConnection[Any]) -> None:
            seen_loops.add(id(asyncio.get_running_loop()))
            await async_handler(event, conn)

        app._handlers[(APP_TYPE, None)] = in_this_loop
        runner = build_consumer(app, app_env.settings(), loop=loop)
        consuming = asyncio.create_task(run_in_loop(runner))
        while runner.applied < 30:
            await asyncio.sleep(0.05)  # the loop stays free while the consumer works
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        assert seen_loops == {id(loop)}
        return runner.applied

    assert asyncio.run(service()) == 30
    assert sorted(r[0] for r in applied(app_env)) == sorted(e.event_id for e in events)
    assert offsets_committed(app_env) == end_offsets(app_env)
