"""Consumer adapters on a real PostgreSQL and a real Kafka: effectively once, retries, the DLQ and
its headers, outages, replay, and the warehouse sink."""

from __future__ import annotations

import json
import signal
import struct
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql
from support.apps import kind_app
from support.consumer import (
    APP_TYPE,
    ConsumerProcess,
    applied,
    consumer_thread,
    counting_app,
    create_applied_table,
    envelope,
    order_violations,
    produce,
    produce_document,
    wait_applied,
)
from support.kafka import create_topics, read_all
from support.outbox import CONTRACTS, Env, wait_until
from support.schemas import example_for

from bridge.config import KafkaSettings
from bridge.consumer import ErrorPolicy
from bridge.devstack.process import free_port
from bridge.dlq import dlq_depths, read_dlq, replay
from bridge.envelope import Envelope
from bridge.kafka.records import TopicPartition
from bridge.outbox import migrate
from bridge.sinks import warehouse_app
from bridge.topics import replay_topic_name

pytestmark = pytest.mark.integration


@pytest.fixture
def app_env(relay_env):
    """The test env with coach.assigned's topic, its coaching DLQ and coaching's replay topic, and
    the applied table."""
    create_topics(relay_env.bootstrap, [relay_env.topic(APP_TYPE)], partitions=3)
    create_topics(relay_env.bootstrap, [dlq(relay_env), replay_topic_name(relay_env.prefix, "coaching")])
    create_applied_table(relay_env)
    return relay_env


@pytest.fixture(params=["sync", "async", "bulk"])
def handler_kind(request: pytest.FixtureRequest) -> str:
    """The guarantees hold for every handler shape: a handler per event, ``async def``, the bulk
    path (support.apps; the ORM shapes are in test_consumer_paths)."""
    return str(request.param)


def dlq(env: Env, event_type: str = APP_TYPE, consumer: str = "coaching") -> str:
    return f"{env.topic(event_type)}.dlq.{consumer}"


def numbered(count: int, subjects: int = 10, **payload: Any) -> list[Envelope]:
    events: list[Envelope] = []
    seq: dict[str, int] = {}
    for i in range(count):
        subject = f"coa_{i % subjects}"
        seq[subject] = seq.get(subject, 0) + 1
        events.append(envelope(subject=subject, payload={"seq": seq[subject], **payload}))
    return events


def test_the_same_event_twice_has_one_effect(app_env, handler_kind):
    events = numbered(20)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [*events, events[3], events[7]])
    with consumer_thread(app_env, kind_app(app_env.schema, handler_kind)) as runner:
        wait_until(lambda: runner.applied + runner.duplicates == 22, message="all deliveries")
    rows = applied(app_env)
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert runner.duplicates == 2
    assert runner.dead_lettered == 0
    # The offsets the stop committed are the ends of the partitions: nothing is read again.
    assert committed_offsets(app_env) == end_offsets(app_env)
    assert sum(end_offsets(app_env).values()) == 22


# The bulk path commits through the very code the per-event path does (one applier, one
# transaction); async has its own connection and loop, so it runs this too.
@pytest.mark.parametrize("handler_kind", ["sync", "async"])
def test_a_crash_after_the_database_commit_and_before_the_offset_commit_has_one_effect(app_env, tmp_path, handler_kind):
    events = numbered(300)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), events)
    # The window, forced: background offset commits only every 10 minutes, and the process
    # SIGKILLs itself (support.consumer's fault hook) once 100 events are committed in the database.
    process = ConsumerProcess(
        app_env,
        tmp_path,
        {"auto.commit.interval.ms": "600000"},
        {"TEST_APP_KILL_AFTER_APPLIED": "100", "TEST_APP_KIND": handler_kind},
    )
    process.start()
    try:
        assert process.process is not None
        assert process.process.wait(timeout=60) == -signal.SIGKILL  # it died at the named point
        committed_in_database = len(applied(app_env))
        assert committed_in_database >= 100
        assert committed_offsets(app_env) == {}  # no offset was committed before the crash
        port = free_port()
        process.kafka_options, process.extra_env = {}, {"TEST_APP_KIND": handler_kind}
        process.args = ["--metrics-port", str(port)]
        process.start()
        wait_applied(app_env, 300)
        # The premise: every event the dead process had committed was delivered again and
        # recognised by the inbox (and nothing else was a duplicate).
        wait_until(
            lambda: metric(port, "bridge_consumer_duplicates_total", consumer="coaching") == committed_in_database,
            timeout=30,
            message=f"{committed_in_database} redeliveries",
        )
        assert process.terminate() == 0
    finally:
        process.kill()
    rows = applied(app_env)
    assert len(rows) == 300
    assert len({r[0] for r in rows}) == 300
    assert committed_offsets(app_env) == end_offsets(app_env)


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a process's /metrics (None while it does not answer or has no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(body):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def committed_offsets(
    env: Env, topic: str | None = None, group: str = "coaching", partitions: int = 3
) -> dict[int, int]:
    """The group's committed offsets per partition, as another client sees them (partitions
    without a committed offset are left out)."""
    admin = env.clients().admin()
    try:
        found = admin.committed_offsets(
            f"{env.prefix}{group}", [TopicPartition(topic or env.topic(APP_TYPE), p) for p in range(partitions)], 10.0
        )
    finally:
        admin.close()
    return {tp.partition: offset for tp, offset in found.items()}


def end_offsets(env: Env, topic: str | None = None, partitions: int = 3) -> dict[int, int]:
    admin = env.clients().admin()
    try:
        return {
            p: admin.watermarks(TopicPartition(topic or env.topic(APP_TYPE), p), 10.0)[1] for p in range(partitions)
        }
    finally:
        admin.close()


def test_two_processes_and_rebalances_during_20k_events(app_env, tmp_path):
    events = numbered(20_000, subjects=200)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), events)
    first = ConsumerProcess(app_env, tmp_path / "a")
    second = ConsumerProcess(app_env, tmp_path / "b")
    for process in (first, second):
        process.log_dir.mkdir()
    port = free_port()
    second.args = ["--metrics-port", str(port)]
    first.start()
    try:
        wait_applied(app_env, 3_000, timeout=120)
        second.start()  # rebalance: the group splits the partitions
        wait_applied(app_env, 9_000, timeout=120)
        # Offsets are committed while the group runs (in the background, and on revoke), not only at the end.
        wait_until(lambda: sum(committed_offsets(app_env).values()) >= 3_000, message="offsets committed meanwhile")
        committed_before_kill = sum(committed_offsets(app_env).values())
        first.kill()  # rebalance again, after a crash: the survivor takes everything
        applied_at_kill = len(applied(app_env))
        wait_applied(app_env, 20_000, timeout=180)
        wait_until(
            lambda: metric(port, "bridge_consumer_applied_total", consumer="coaching", event_type=APP_TYPE) is not None,
            message="the survivor's metrics",
        )
        duplicates = metric(port, "bridge_consumer_duplicates_total", consumer="coaching") or 0.0
        assert second.terminate() == 0
    finally:
        first.kill()
        second.kill()
    rows = applied(app_env)
    assert len(rows) == 20_000, f"{len(rows) - len({r[0] for r in rows})} applied twice"
    assert {r[0] for r in rows} == {e.event_id for e in events}
    assert order_violations(rows) == []
    assert "revoked" in first.log() + second.log()
    # Redelivered after the crash: at most what was applied and not yet committed when it happened.
    assert duplicates <= applied_at_kill - committed_before_kill, (duplicates, applied_at_kill, committed_before_kill)
    assert committed_offsets(app_env) == end_offsets(app_env)


def test_offsets_are_committed_on_revoke_and_on_a_graceful_stop(app_env):
    """Background commits every 10 minutes only: what commits the offsets here is the revoke (a
    second member joins) and the stop."""
    settings = app_env.settings().model_copy(
        update={
            "kafka": KafkaSettings(bootstrap_servers=app_env.bootstrap, options={"auto.commit.interval.ms": "600000"})
        }
    )
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), numbered(30))
    with consumer_thread(app_env, counting_app(app_env.schema), settings) as first:
        wait_applied(app_env, 30)
        assert committed_offsets(app_env) == {}  # applied and stored, not committed yet
        with consumer_thread(app_env, counting_app(app_env.schema), settings) as second:
            wait_until(lambda: second.assigned and first.assigned, message="the rebalance")
            # Both still run: the first member committed what it had applied when its partitions were revoked.
            assert committed_offsets(app_env) == end_offsets(app_env)
        every = {TopicPartition(app_env.topic(APP_TYPE), p) for p in range(3)}
        wait_until(lambda: every <= first.assigned, message="the first member to get every partition back")
        more = numbered(12, subjects=12)
        for event in more:
            cast(dict[str, Any], event.payload)["seq"] += 100
        produce(app_env.bootstrap, app_env.topic(APP_TYPE), more)
        wait_applied(app_env, 42)
        assert sum(committed_offsets(app_env).values()) == 30  # the last 12 wait for the stop
    assert committed_offsets(app_env) == end_offsets(app_env)
    assert sum(end_offsets(app_env).values()) == 42
    assert len({r[0] for r in applied(app_env)}) == 42


def test_poison_goes_to_the_dlq_with_all_headers_and_the_partition_moves_on(app_env):
    topic = app_env.topic(APP_TYPE)
    before, after = envelope(subject="coa_p", payload={"seq": 1}), envelope(subject="coa_p", payload={"seq": 2})
    produce(app_env.bootstrap, topic, [before])
    (poison_at,) = produce(app_env.bootstrap, topic, [(b"coa_p", b'{"not": "an envelope"')], raw=True)
    produce(app_env.bootstrap, topic, [after])
    with consumer_thread(app_env, counting_app(app_env.schema)) as runner:
        wait_until(lambda: runner.applied == 2 and runner.dead_lettered == 1, message="the poison and the rest")
    assert [r[0] for r in applied(app_env)] == [before.event_id, after.event_id]
    assert committed_offsets(app_env) == {p: o for p, o in end_offsets(app_env).items() if o}  # moved past it
    (record,) = read_all(app_env.bootstrap, [dlq(app_env)], expect=1)
    assert record.key == b"coa_p"
    assert record.value == b'{"not": "an envelope"'
    headers = record.headers
    assert headers["event_id"] == b"raw"  # the original headers are kept
    assert headers["dlq.original.topic"] == topic.encode()
    # Where the poison really was, from the produce delivery report, in both header forms.
    assert (int(headers["dlq.original.partition"]), int(headers["dlq.original.offset"])) == poison_at
    assert struct.unpack(">i", headers["kafka_dlt-original-partition"])[0] == poison_at[0]
    assert struct.unpack(">q", headers["kafka_dlt-original-offset"])[0] == poison_at[1]
    assert headers["dlq.consumer"] == b"coaching"
    assert headers["dlq.error.class"] == headers["kafka_dlt-exception-fqcn"] == b"bridge.errors.DecodeError"
    assert b"invalid JSON at line 1" in headers["dlq.error.message"]
    assert headers["dlq.error.message"] == headers["kafka_dlt-exception-message"]
    assert headers["dlq.attempts"] == b"1"
    assert headers["dlq.failed_at"].endswith(b"Z")
    assert headers["kafka_dlt-original-topic"] == topic.encode()


def test_handler_failures_retries_and_explicit_decisions(app_env, handler_kind):
    topic = app_env.topic(APP_TYPE)
    twice = envelope(subject="coa_a", payload={"seq": 1, "fail_times": 2})
    always = envelope(subject="coa_b", payload={"seq": 1, "fail_times": 99})
    skip = envelope(subject="coa_c", payload={"seq": 1, "decide": "skip"})
    dead = envelope(subject="coa_d", payload={"seq": 1, "decide": "dead"})
    later = envelope(subject="coa_e", payload={"seq": 1, "decide": "retry"})
    follow = envelope(subject="coa_a", payload={"seq": 2})
    positions = produce(app_env.bootstrap, topic, [twice, always, skip, dead, later, follow])
    with consumer_thread(app_env, kind_app(app_env.schema, handler_kind)) as runner:
        wait_until(
            lambda: runner.dead_lettered == 2 and runner.applied == 3 and runner.skipped == 1,
            timeout=60,
            message="the retries",
        )
    applied_ids = [r[0] for r in applied(app_env)]
    assert applied_ids.count(twice.event_id) == 1  # failed twice, then applied once
    assert applied_ids.index(twice.event_id) < applied_ids.index(follow.event_id)  # order kept
    assert later.event_id in applied_ids
    assert skip.event_id not in applied_ids
    records = {r.headers["event_id"].decode(): r for r in read_all(app_env.bootstrap, [dlq(app_env)], expect=2)}
    assert set(records) == {always.event_id, dead.event_id}
    assert records[always.event_id].headers["dlq.attempts"] == b"3"
    assert records[always.event_id].headers["dlq.error.class"] == b"builtins.RuntimeError"
    assert records[dead.event_id].headers["dlq.error.class"] == b"bridge.errors.DeadLetter"
    assert records[dead.event_id].headers["dlq.error.message"] == b"the handler refuses this one"
    for event, at in ((always, positions[1]), (dead, positions[3])):
        headers = records[event.event_id].headers
        assert (int(headers["dlq.original.partition"]), int(headers["dlq.original.offset"])) == at


@pytest.mark.parametrize("unhandled", ["skip", "dlq"])
def test_malformed_records_are_handled_as_the_policy_says(app_env, unhandled):
    topic = app_env.topic(APP_TYPE)
    good = envelope(subject="coa_ok", payload={"seq": 1})
    wrong_schema = json.loads(envelope(subject="coa_x").to_json())
    wrong_schema["event_id"] = "evt_not-a-uuid"
    newer = json.loads(envelope(subject="coa_u").to_json())
    newer["schema_version"] = 9  # a version registered after this consumer was deployed
    produce(
        app_env.bootstrap,
        topic,
        [
            (b"coa_x", b'{"event_id": "\xff\xfe"}'),
            (b"coa_x", b"{nope"),
            (b"coa_x", json.dumps(wrong_schema).encode()),
        ],
        raw=True,
    )
    produce_document(app_env.bootstrap, topic, newer)
    produce(app_env.bootstrap, topic, [good])
    policy = ErrorPolicy(unhandled=unhandled, backoff_initial=0.1)
    with consumer_thread(app_env, counting_app(app_env.schema, policy=policy)) as runner:
        expected_dlq = 3 if unhandled == "skip" else 4
        wait_until(lambda: runner.applied == 1 and runner.dead_lettered == expected_dlq, message="the batch")
    assert runner.skipped == (1 if unhandled == "skip" else 0)
    records = read_all(app_env.bootstrap, [dlq(app_env)], expect=expected_dlq)
    classes = sorted(r.headers["dlq.error.class"].decode() for r in records)
    expected = ["bridge.errors.DecodeError", "bridge.errors.DecodeError", "bridge.errors.ValidationError"]
    assert classes == sorted(expected + (["bridge.Unhandled"] if unhandled == "dlq" else []))
    reasons = sorted(r.headers["dlq.reason"].decode() for r in records)
    assert reasons == sorted(["decode", "decode", "invalid"] + (["unhandled"] if unhandled == "dlq" else []))
    assert [r[0] for r in applied(app_env)] == [good.event_id]


# The bulk path waits out an outage in the very code the per-event path does (one applier, one
# connection); async has its own connection and loop, so it runs this too.
@pytest.mark.parametrize("handler_kind", ["sync", "async"])
def test_postgres_down_for_10_seconds_sends_nothing_to_the_dlq_and_loses_nothing(
    kafka_service, unique_name, handler_kind
):
    from bridge.devstack import PostgresServer

    pg = PostgresServer.start()
    try:
        env = Env(pg.url, unique_name("c")[:40], unique_name("p")[:40] + ".", kafka_service.bootstrap_servers)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn, env.schema)
        create_topics(env.bootstrap, [env.topic(APP_TYPE)], partitions=3)
        create_topics(env.bootstrap, [dlq(env)])
        create_applied_table(env)
        first, second = numbered(500, subjects=20), numbered(500, subjects=20)
        for e in second:
            cast(dict[str, Any], e.payload)["seq"] += 1000  # keep per-subject numbers increasing across both halves
        produce(env.bootstrap, env.topic(APP_TYPE), first)
        with consumer_thread(env, kind_app(env.schema, handler_kind)) as runner:
            wait_applied(env, 500)
            pg.stop(remove=False)
            produce(env.bootstrap, env.topic(APP_TYPE), second)
            time.sleep(10)
            pg.restart()
            wait_until(lambda: runner.applied == 1000, timeout=90, message="the events after the outage")
        rows = applied(env)
        assert len(rows) == 1000
        assert len({r[0] for r in rows}) == 1000
        assert order_violations(rows) == []
        assert runner.dead_lettered == 0
        assert dlq_depths(env.clients()).get(dlq(env), 0) == 0
    finally:
        pg.stop()


def test_a_failing_dlq_publish_loses_nothing(relay_env):
    env = relay_env
    create_topics(env.bootstrap, [env.topic(APP_TYPE)], partitions=1)  # no DLQ topic yet
    create_applied_table(env)
    good = envelope(subject="coa_z", payload={"seq": 2})
    produce(env.bootstrap, env.topic(APP_TYPE), [(b"coa_z", b"garbage")], raw=True)
    produce(env.bootstrap, env.topic(APP_TYPE), [good])
    with consumer_thread(env, counting_app(env.schema), dlq_timeout=2.0) as runner:
        wait_until(
            lambda: runner.metrics.errors.labels("coaching", "dlq")._value.get() >= 1,
            timeout=60,
            message="a failed DLQ publish",
        )
        time.sleep(1.5)  # longer than auto.commit.interval.ms: whatever was stored is committed
        assert runner.dead_lettered == 0
        assert committed_offset(env, env.topic(APP_TYPE), 0) in (None, 0)  # the offset never passed the poison
        create_topics(env.bootstrap, [dlq(env)])
        wait_until(lambda: runner.dead_lettered == 1, timeout=60, message="recovery")
    assert [r.value for r in read_all(env.bootstrap, [dlq(env)], expect=1)] == [b"garbage"]
    # The good record may have been applied before the poison's DLQ publish failed; its redelivery
    # after the retry was absorbed by the inbox: one effect.
    assert [r[0] for r in applied(env)] == [good.event_id]


def committed_offset(env: Env, topic: str, partition: int) -> int | None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"{env.prefix}coaching"})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset if tp.offset >= 0 else None
    finally:
        consumer.close()


def test_replay_from_the_dlq_applies_once(app_env, handler_kind):
    refused = envelope(subject="coa_r", payload={"seq": 1, "decide": "dead"})
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [refused])
    clients = app_env.clients()
    with consumer_thread(app_env, kind_app(app_env.schema, handler_kind)) as runner:
        wait_until(lambda: runner.dead_lettered == 1, message="the dead letter")
    assert dlq_depths(clients)[dlq(app_env)] == 1
    # The fix: the handler now accepts it. Replaying twice is harmless.
    fixed = counting_app(app_env.schema)
    fixed._handlers.clear()
    seen = []

    @fixed.handler(APP_TYPE)
    def accept(event, conn):
        seen.append(event.event_id)
        conn.execute(
            sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, 1)").format(
                sql.Identifier(app_env.schema)
            ),
            (event.event_id, event.subject),
        )

    prefix = app_env.prefix
    expected = [(refused.event_id, "decision")]
    assert replay(clients, dlq(app_env), topic_prefix=prefix, dry_run=True).replayed == expected
    assert replay(clients, dlq(app_env), topic_prefix=prefix, event_ids={refused.event_id}).replayed == expected
    assert replay(clients, dlq(app_env), topic_prefix=prefix).replayed == expected
    replayed = read_all(app_env.bootstrap, [replay_topic_name(prefix, "coaching")], expect=2)
    assert len(replayed) == 2  # the dry run sent nothing
    (original,) = read_all(app_env.bootstrap, [app_env.topic(APP_TYPE)], expect=1)
    for sent in replayed:
        assert not [name for name in sent.headers if name.startswith(("dlq.", "kafka_dlt-"))]
        assert sent.headers == {**original.headers, "bridge-replay-of": app_env.topic(APP_TYPE).encode()}
        assert (sent.key, sent.value) == (original.key, original.value)
    with consumer_thread(app_env, fixed) as runner:
        wait_until(lambda: runner.applied + runner.duplicates == 2, message="both replays")
    assert [r[0] for r in applied(app_env)] == [refused.event_id]
    assert runner.duplicates == 1
    (record,) = list(read_dlq(clients, dlq(app_env)))
    assert record.summary()["error_class"] == "bridge.errors.DeadLetter"


def test_warehouse_sink_lands_every_event_exactly_once(relay_env):
    env = relay_env
    types = ["lead.created", "payment.received", "intake.amended", "credit.released"]
    topics = [env.topic(t) for t in types]
    create_topics(env.bootstrap, topics, partitions=2)
    create_topics(env.bootstrap, [f"{t}.dlq.platform-warehouse" for t in topics])
    events = []
    for event_type in types:
        version = max(CONTRACTS.registry.events[event_type].versions)
        entry = CONTRACTS.registry.lookup(event_type, version)
        assert entry is not None
        schema_file = CONTRACTS.registry.schema_file(entry)
        assert schema_file is not None
        schema = json.loads(schema_file.read_text())
        for i in range(50):
            events.append(envelope(event_type, version, subject=f"s{i % 7}", payload=example_for(schema)))
    for event_type, topic in zip(types, topics, strict=True):
        mine = [e for e in events if e.event_type == event_type]
        produce(env.bootstrap, topic, mine + mine[:10])  # with redeliveries
    app = warehouse_app(contracts=CONTRACTS, schema=env.schema)
    with consumer_thread(env, app, batch_size=64) as runner:
        wait_until(lambda: runner.applied >= 240, timeout=60, message="every delivery")
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT event_id, event_type, payload, subject FROM {}.warehouse_events").format(
                sql.Identifier(env.schema)
            )
        ).fetchall()
    assert len(rows) == 200
    by_id = {e.event_id: e for e in events}
    for event_id, event_type, payload, subject in rows:
        assert by_id[event_id].event_type == event_type
        assert by_id[event_id].payload == payload
        assert by_id[event_id].subject == subject
    assert runner.dead_lettered == 0


def test_dlq_and_inbox_commands(app_env):
    from typer.testing import CliRunner

    from bridge.cli import app as cli

    runner_cli = CliRunner()
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [(b"k", b"not json")], raw=True)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), numbered(5))
    with consumer_thread(app_env, counting_app(app_env.schema)) as runner:
        wait_until(lambda: runner.dead_lettered == 1 and runner.applied == 5, message="the batch")
    env = {
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": app_env.bootstrap,
        "BRIDGE_DATABASE__URL": app_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": app_env.schema,
        "BRIDGE_TOPIC_PREFIX": app_env.prefix,
    }
    listed = runner_cli.invoke(cli, ["dlq", "list", "--json"], env=env)
    assert json.loads(listed.output)[dlq(app_env)] == 1
    shown = runner_cli.invoke(cli, ["dlq", "show", dlq(app_env), "--json"], env=env)
    (summary,) = [json.loads(line) for line in shown.output.splitlines()]
    assert summary["error_class"] == "bridge.errors.DecodeError"
    assert summary["value"] == "not json"
    dry = runner_cli.invoke(cli, ["dlq", "replay", dlq(app_env), "--dry-run"], env=env)
    assert "would replay 1 record(s) to" in dry.output
    assert "skipped 0" in dry.output
    assert "(decode)" in dry.output  # each record with its reason
    refused = runner_cli.invoke(cli, ["inbox", "prune", "--consumer", "coaching", "--older-than", "1s"], env=env)
    assert refused.exit_code == 2
    assert "shorter than the safe minimum" in refused.output
    pruned = runner_cli.invoke(
        cli, ["inbox", "prune", "--consumer", "coaching", "--older-than", "0s", "--batch", "2", "--force"], env=env
    )
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 5 inbox row(s) of coaching" in pruned.output
    assert (
        runner_cli.invoke(cli, ["inbox", "prune", "--consumer", "coaching", "--older-than", "soon"], env=env).exit_code
        == 2
    )


def test_consumer_role_grants_are_enough_for_the_inbox(relay_env, unique_name):
    from datetime import timedelta

    from bridge.consumer import Delivery, Inbox
    from bridge.outbox import grant_statements

    role = unique_name("cons")[:40]
    info = psycopg.conninfo.conninfo_to_dict(relay_env.database_url)
    with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        for statement in grant_statements(relay_env.schema, consumer_role=role):
            admin.execute(statement)
    try:
        inbox = Inbox(relay_env.schema, "coaching")
        delivery = Delivery(envelope(), "t", 0, 1)
        with psycopg.connect(
            psycopg.conninfo.make_conninfo(**{**info, "user": role, "password": "pw"}), autocommit=True
        ) as conn:
            with conn.transaction():
                assert inbox.claim(conn, [delivery, delivery]) == {delivery.envelope.event_id}
            with conn.transaction():
                assert inbox.claim(conn, [delivery]) == set()  # ON CONFLICT works with column SELECT only
            assert inbox.prune(conn, datetime.now(UTC) + timedelta(seconds=1)) == 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("UPDATE {}.inbox SET topic = 'x'").format(sql.Identifier(relay_env.schema)))
    finally:
        with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_events_no_handler_knows_are_kept_and_recovered_after_the_upgrade(app_env, caplog):
    """A rolling deploy: coaching's registry gives it credit.locked, but this version of the app has
    no handler for it, and a producer already emits coach.assigned v9. Nothing is lost: both are
    dead-lettered as 'unhandled' (logged, counted), and replaying them after the upgrade applies them."""
    locked_topic = app_env.topic("credit.locked")
    create_topics(app_env.bootstrap, [locked_topic, dlq(app_env, "credit.locked")])
    version = CONTRACTS.registry.lookup("credit.locked", 1)
    assert version is not None
    schema_file = CONTRACTS.registry.schema_file(version)
    assert schema_file is not None
    schema = json.loads(schema_file.read_text())
    locked = envelope("credit.locked", 1, subject="crr_1", payload=example_for(schema))
    newer = json.loads(envelope(subject="coa_n").to_json())
    newer["schema_version"] = 9
    good = envelope(subject="coa_g", payload={"seq": 1})
    produce(app_env.bootstrap, locked_topic, [locked])
    produce_document(app_env.bootstrap, app_env.topic(APP_TYPE), newer)
    produce(app_env.bootstrap, app_env.topic(APP_TYPE), [good])
    with (
        caplog.at_level("WARNING", logger="bridge.consumer"),
        consumer_thread(app_env, counting_app(app_env.schema)) as runner,
    ):
        wait_until(lambda: runner.dead_lettered == 2 and runner.applied == 1, message="the unhandled events")
    assert runner.metrics.dead_lettered.labels("coaching", "bridge.Unhandled")._value.get() == 2
    assert "no handler for credit.forfeited v1, credit.locked v1" in caplog.text  # said at start-up
    assert caplog.text.count("(unhandled)") == 2  # and for each event
    letters = read_all(app_env.bootstrap, [dlq(app_env, "credit.locked"), dlq(app_env)], expect=2)
    assert {r.headers["dlq.reason"] for r in letters} == {b"unhandled"}

    # The upgrade handles credit.locked: replaying what was unhandled applies it, once.
    upgraded = counting_app(app_env.schema)
    insert = sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, NULL)").format(
        sql.Identifier(app_env.schema)
    )
    upgraded.handler("credit.locked")(lambda event, conn: conn.execute(insert, (event.event_id, event.subject)))
    clients = app_env.clients()
    report = replay(clients, dlq(app_env, "credit.locked"), topic_prefix=app_env.prefix, reasons={"unhandled"})
    assert report.replayed == [(locked.event_id, "unhandled")]
    with consumer_thread(app_env, upgraded) as runner:
        wait_until(lambda: locked.event_id in {r[0] for r in applied(app_env)}, message="the replayed event")
    assert sorted(r[0] for r in applied(app_env)) == sorted([good.event_id, locked.event_id])
