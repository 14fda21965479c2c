"""Every documented setting, through the real command: ``bridge relay``, ``bridge consume``, ``bridge
sink warehouse`` and ``bridge sink files`` read ``BRIDGE_*`` and build their worker; these tests
check the setting reached the worker and does what it promises.

Most run the click command in-process with the worker captured (support.wiring.capture) and then
run that worker in a thread against the real PostgreSQL and Kafka; three start the command as a
real process (``python -m bridge …``) with several settings at once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka import Producer
from support.consumer import (
    APP_TYPE,
    TESTS,
    ConsumerProcess,
    applied,
    create_applied_table,
    envelope,
    produce,
    wait_applied,
)
from support.kafka import create_topics, read_all
from support.outbox import BULK_TYPE, CONTRACTS, Env, RelayProcess, emit_numbered, wait_until
from support.process import BridgeProcess, running
from support.schemas import example_for
from support.wiring import FailingDeliveries, RecordedPolls, capture

from bridge.avro import AvroCodec
from bridge.config import ConsumerSettings, RelaySettings
from bridge.consumer import ConsumerRunner
from bridge.kafka.confluent import ConfluentClients
from bridge.kafka.records import Record as BridgeRecord
from bridge.kafka.records import TopicPartition
from bridge.outbox import OutboxStore
from bridge.relay import Relay
from bridge.signing import SIGNATURE_HEADER, Signer, Verifier
from bridge.sinks.files import FileSink

pytestmark = pytest.mark.integration

KEYS = '{"k1": "first-secret"}'
CONSUME = ["consume", "support.consumer:app_from_environment"]


def settings_of(env: Env, **extra: str) -> dict[str, str]:
    """The BRIDGE_* variables of a command of this test (database, broker, prefix) plus ``extra``."""
    return {k: v for k, v in env.environ(**extra).items() if k.startswith("BRIDGE_")}


def app_settings(env: Env, **extra: str) -> dict[str, str]:
    """For ``bridge consume support.consumer:app_from_environment``."""
    return settings_of(env, **{"BRIDGE_CONSUMER__SESSION_TIMEOUT_MS": "6000", **extra})


@pytest.fixture
def app_topics(relay_env):
    """coach.assigned's topic (one partition), coaching's DLQ of it, the applied table."""
    create_topics(relay_env.bootstrap, [relay_env.topic(APP_TYPE), dlq(relay_env)])
    create_applied_table(relay_env)
    return relay_env


@pytest.fixture
def app_schema(monkeypatch, relay_env):
    monkeypatch.setenv("TEST_APP_SCHEMA", relay_env.schema)
    return relay_env.schema


def dlq(env: Env, event_type: str = APP_TYPE, consumer: str = "coaching") -> str:
    return f"{env.topic(event_type)}.dlq.{consumer}"


def committed(env: Env, group: str, topic: str, partitions: int = 1) -> dict[int, int]:
    """The group's committed offsets, as a stranger to the group sees them (partitions without one left out)."""
    admin = env.clients().admin()
    try:
        found = admin.committed_offsets(group, [TopicPartition(topic, p) for p in range(partitions)], 10.0)
    finally:
        admin.close()
    return {tp.partition: offset for tp, offset in found.items()}


def end_offsets(env: Env, topic: str, partitions: int = 1) -> dict[int, int]:
    admin = env.clients().admin()
    try:
        return {p: admin.watermarks(TopicPartition(topic, p), 10.0)[1] for p in range(partitions)}
    finally:
        admin.close()


def sample(registry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def signed_headers(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [*headers, Signer({"k1": "first-secret"}).header(topic, key, value, dict(headers))]


def produce_signed(
    bootstrap: str, topic: str, documents: list[dict[str, Any]], *, sign: bool = True
) -> list[tuple[int, int]]:
    """Produce envelope documents with the relay's headers, signed with k1 (or not)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    landed: list[tuple[int, int]] = []
    for document in documents:
        key, value = document["subject"].encode(), json.dumps(document, separators=(",", ":")).encode()
        headers = [(n, str(document[n]).encode()) for n in ("event_id", "event_type", "schema_version", "producer")]
        headers += [("tenant_id", document["tenant_id"].encode()), ("content-type", b"application/json")]
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=cast(Any, signed_headers(topic, key, value, headers) if sign else headers),
            on_delivery=lambda error, message: landed.append((message.partition() or 0, message.offset() or 0)),
        )
        assert producer.flush(30) == 0
    return landed


def document(event_type: str = APP_TYPE, **payload: Any) -> dict[str, Any]:
    made: dict[str, Any] = json.loads(envelope(event_type, subject=f"coa_{len(payload)}", payload=payload).to_json())
    return made


# --- bridge relay ------------------------------------------------------------------------------------


def test_relay_settings_reach_the_relay_and_its_producer(relay_env, monkeypatch):
    captured = capture(
        monkeypatch,
        ["relay"],
        settings_of(
            relay_env,
            BRIDGE_RELAY__BATCH_SIZE="7",
            BRIDGE_RELAY__MAX_IN_FLIGHT="11",
            BRIDGE_RELAY__MAX_ATTEMPTS="2",
            BRIDGE_RELAY__MAX_MESSAGE_BYTES="2000",
            BRIDGE_RELAY__SHUTDOWN_TIMEOUT="4",
            BRIDGE_RELAY__IDLE_INTERVAL="0.2",
            BRIDGE_RELAY__STANDBY_INTERVAL="0.7",
            BRIDGE_RELAY__NOTIFY="true",
            BRIDGE_RELAY__LINGER_MS="3",
        ),
    )
    relay = captured.service
    assert isinstance(relay, Relay)
    assert relay.settings == RelaySettings(
        batch_size=7,
        max_in_flight=11,
        max_attempts=2,
        max_message_bytes=2000,
        shutdown_timeout=4,
        idle_interval=0.2,
        standby_interval=0.7,
        notify=True,
        linger_ms=3,
    )
    assert captured.shutdown_timeout == 4  # what the SIGTERM handler gives the stop
    assert isinstance(captured.clients, ConfluentClients)
    config = captured.clients.producer_config("relay", client_id="x", max_message_bytes=2000)
    assert config["message.max.bytes"] == 2000
    assert config["linger.ms"] == 3
    assert config["bootstrap.servers"] == relay_env.bootstrap


def test_relay_busy_and_stats_intervals_reach_the_relay(relay_env, monkeypatch):
    captured = capture(
        monkeypatch,
        ["relay"],
        settings_of(
            relay_env,
            BRIDGE_RELAY__BUSY_INTERVAL="0.04",
            BRIDGE_RELAY__IDLE_INTERVAL="0.3",
            BRIDGE_RELAY__STATS_INTERVAL="7.5",
        ),
    )
    relay = captured.service
    assert isinstance(relay, Relay)
    defaults = RelaySettings()
    assert (defaults.busy_interval, defaults.stats_interval) != (0.04, 7.5)
    # The relay's own settings object is what its loop reads (relay.settings.busy_interval after an
    # empty read while events flow, relay.settings.stats_interval between gauge refreshes).
    assert relay.settings == RelaySettings(
        busy_interval=0.04, idle_interval=0.3, standby_interval=0.3, stats_interval=7.5
    )


@pytest.mark.parametrize(("stats_interval", "refreshed"), [("0.2", True), ("3600", False)])
def test_stats_interval_paces_the_backlog_gauge(relay_env, monkeypatch, stats_interval, refreshed):
    """The gauges are refreshed on the relay's first round, then every BRIDGE_RELAY__STATS_INTERVAL:
    at 0.2 s the backlog gauge follows the outbox down to 0 at once; at an hour it still shows the 20
    rows the first refresh counted once the default interval (5 s) has passed: the setting, not the
    default, paces it."""
    assert RelaySettings().stats_interval == 5.0
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    emit_numbered(relay_env, ["g1", "g2"], 10)
    relay = capture(monkeypatch, ["relay"], settings_of(relay_env, BRIDGE_RELAY__STATS_INTERVAL=stats_interval)).service
    assert isinstance(relay, Relay)
    registry = relay.metrics.registry
    started = time.monotonic()
    with running(relay):
        wait_until(lambda: relay.published == 20, message="the 20 events")
        wait_until(lambda: relay_env.outbox_count() == 0, message="the outbox emptied")
        if refreshed:
            emptied = time.monotonic()
            wait_until(lambda: sample(registry, "bridge_relay_backlog_events") == 0, message="a refreshed gauge")
            assert time.monotonic() - emptied < 2.5
        else:
            time.sleep(max(0.0, started + 6.0 - time.monotonic()))  # past the default interval
            assert sample(registry, "bridge_relay_backlog_events") == 20


@pytest.mark.parametrize("setting", ["BRIDGE_RELAY__BATCH_SIZE", "BRIDGE_RELAY__MAX_IN_FLIGHT"])
def test_batch_size_and_max_in_flight_bound_every_read(relay_env, monkeypatch, setting):
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    emit_numbered(relay_env, [f"s{i}" for i in range(8)], 5)  # 40 rows before the relay starts
    relay = capture(monkeypatch, ["relay"], settings_of(relay_env, **{setting: "4"})).service
    assert isinstance(relay, Relay)
    with running(relay):
        wait_until(lambda: relay.published == 40, message="the 40 events")
    reads = sample(relay.metrics.registry, "bridge_relay_batch_size_count")
    assert sample(relay.metrics.registry, "bridge_relay_batch_size_sum") == 40
    # Every read took at most 4 rows (the histogram's smallest bucket above 4 is 5); the default
    # settings would read all 40 at once.
    assert sample(relay.metrics.registry, "bridge_relay_batch_size_bucket", le="5.0") == reads
    assert reads >= 10


def test_max_message_bytes_quarantines_a_larger_record(relay_env, monkeypatch):
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    outbox = relay_env.outbox()
    with psycopg.connect(relay_env.database_url) as conn:
        big = outbox.emit(conn, BULK_TYPE, 1, "big", "t", {"seq": 1, "blob": "x" * 3000})
        small = outbox.emit(conn, BULK_TYPE, 1, "small", "t", {"seq": 1})
        conn.commit()
    relay = capture(monkeypatch, ["relay"], settings_of(relay_env, BRIDGE_RELAY__MAX_MESSAGE_BYTES="2000")).service
    assert isinstance(relay, Relay)
    with running(relay):
        wait_until(lambda: relay.published == 1, message="the small event")
        wait_until(lambda: len(quarantined_rows(relay_env)) == 1, message="the quarantine")
    (row,) = quarantined_rows(relay_env)
    assert row.event_id == big.event_id
    assert row.failure.startswith("oversized")
    assert "2000 bytes" in row.failure
    assert [r.event_id for r in read_all(relay_env.bootstrap, [relay_env.topic()], expect=1)] == [small.event_id]


def quarantined_rows(env: Env):
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        return OutboxStore(conn, env.schema).quarantined()


def test_max_attempts_quarantines_a_row_whose_delivery_keeps_failing(relay_env, monkeypatch):
    """The relay's asynchronous path: a delivery report with an error → an attempt recorded in the
    outbox → after BRIDGE_RELAY__MAX_ATTEMPTS, quarantine; the other subjects flow, and a later event
    of the quarantined row's subject waits behind it."""
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    outbox = relay_env.outbox()
    with psycopg.connect(relay_env.database_url) as conn:
        bad = outbox.emit(conn, BULK_TYPE, 1, "bad", "t", {"seq": 1})
        conn.commit()
    others = emit_numbered(relay_env, ["ok1", "ok2"], 3)
    failing: list[FailingDeliveries] = []

    def wrap(clients):
        failing.append(FailingDeliveries(clients, poison={bad.event_id}))
        return failing[-1]

    relay = capture(
        monkeypatch, ["relay"], settings_of(relay_env, BRIDGE_RELAY__MAX_ATTEMPTS="2"), wrap_clients=wrap
    ).service
    assert isinstance(relay, Relay)
    with running(relay):
        wait_until(lambda: len(quarantined_rows(relay_env)) == 1, message="the quarantine")
        wait_until(lambda: relay.published == len(others), message="the other subjects")
        with psycopg.connect(relay_env.database_url) as conn:
            behind = outbox.emit(conn, BULK_TYPE, 1, "bad", "t", {"seq": 2})
            conn.commit()
        later = emit_numbered(relay_env, ["ok3"], 1)
        wait_until(lambda: relay.published == len(others) + 1, message="the event emitted after the quarantine")
    (row,) = quarantined_rows(relay_env)
    assert row.event_id == bad.event_id
    assert row.attempts == 2
    assert failing[0].failed[bad.event_id] == 2  # two deliveries failed: the second one quarantined it
    assert "delivery failed" in row.failure
    assert "injected failure" in row.failure
    assert "2 attempts" in row.failure
    assert relay.metrics.registry.get_sample_value("bridge_relay_errors_total", {"kind": "delivery"}) == 2
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=len(others) + 1)
    assert {r.event_id for r in records} == {*others, *later}
    assert relay_env.outbox_count() == 2  # the quarantined row, and its subject's later event behind it
    assert behind.event_id not in {r.event_id for r in records}


class _RelayWithOwnContracts(RelayProcess):
    def __init__(self, env: Env, log_dir: Path, contracts: Path, extra: dict[str, str]) -> None:
        super().__init__(env, log_dir, extra)
        self.contracts = contracts

    def environ(self) -> dict[str, str]:
        environ = super().environ()
        del environ["BRIDGE_TOPIC_PREFIX"]  # the contracts' own prefix applies
        environ["BRIDGE_CONTRACTS_PATH"] = str(self.contracts)
        return environ


def test_relay_process_with_its_own_contracts_avro_signing_and_a_size_limit(relay_env, tmp_path):
    """``bridge relay`` as a process: BRIDGE_CONTRACTS_PATH (whose contracts.toml names the topic
    prefix), BRIDGE_VALUE_FORMAT=avro, BRIDGE_SIGNING__KEYS/SIGN_WITH, BRIDGE_RELAY__MAX_MESSAGE_BYTES."""
    shutil.copytree(CONTRACTS.registry.root, tmp_path / "contracts")
    shutil.copytree(CONTRACTS.registry.root.parent / "topics", tmp_path / "topics")
    manifest = tmp_path / "contracts" / "contracts.toml"
    manifest.write_text(
        manifest.read_text().replace('topic_prefix = "sguild."', f'topic_prefix = "{relay_env.prefix}"')
    )
    topic = relay_env.topic()
    create_topics(relay_env.bootstrap, [topic])
    outbox = relay_env.outbox()
    with psycopg.connect(relay_env.database_url) as conn:
        sent = [outbox.emit(conn, BULK_TYPE, 1, f"s{i}", "t", {"seq": 1}) for i in range(3)]
        big = outbox.emit(conn, BULK_TYPE, 1, "big", "t", {"seq": 1, "blob": "x" * 3000})
        conn.commit()
    relay = _RelayWithOwnContracts(
        relay_env,
        tmp_path,
        tmp_path / "contracts",
        {
            "BRIDGE_VALUE_FORMAT": "avro",
            "BRIDGE_SIGNING__KEYS": KEYS,
            "BRIDGE_SIGNING__SIGN_WITH": '["k1"]',
            "BRIDGE_RELAY__MAX_MESSAGE_BYTES": "2000",
        },
    ).start_leading()
    try:
        wait_until(lambda: len(quarantined_rows(relay_env)) == 1, message="the quarantine")
        wait_until(lambda: relay_env.outbox_count() == 1, message="the publication")
        assert relay.terminate() == 0, relay.log()[-3000:]
    finally:
        relay.kill()
    records = read_all(relay_env.bootstrap, [topic], expect=3)
    assert sorted(r.event_id for r in records) == sorted(e.event_id for e in sent)
    codec = AvroCodec(CONTRACTS.registry)
    verifier = Verifier({"k1": "first-secret"}, accept_v1=False)
    by_id = {e.event_id: e for e in sent}
    for record in records:
        assert record.headers["content-type"] == b"application/avro"
        assert record.headers[SIGNATURE_HEADER].startswith(b"v2;k1=")
        assert record.key is not None
        assert record.value is not None
        verifier.check(
            BridgeRecord(
                record.topic, record.partition, record.offset, record.key, record.value, list(record.headers.items())
            )
        )
        assert codec.decode(record.value)["event_id"] == record.event_id
        assert by_id[record.event_id].subject.encode() == record.key
    (row,) = quarantined_rows(relay_env)
    assert row.event_id == big.event_id
    assert "2000 bytes" in row.failure


# --- bridge consume ----------------------------------------------------------------------------------


def test_consumer_settings_reach_the_runner_its_reader_and_its_consumer(relay_env, app_schema, monkeypatch):
    captured = capture(
        monkeypatch,
        [*CONSUME, "--metrics-port", "0"],
        app_settings(
            relay_env,
            BRIDGE_CONSUMER__MAX_ATTEMPTS="2",
            BRIDGE_CONSUMER__BACKOFF_INITIAL="0.3",
            BRIDGE_CONSUMER__BACKOFF_MAX="0.6",
            BRIDGE_CONSUMER__UNHANDLED="skip",
            BRIDGE_CONSUMER__MISSING_HEADERS="tolerate",
            BRIDGE_CONSUMER__BATCH_SIZE="4",
            BRIDGE_CONSUMER__SESSION_TIMEOUT_MS="7000",
            BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS="2000",
            BRIDGE_CONSUMER__DLQ_TIMEOUT="5",
            BRIDGE_CONSUMER__SHUTDOWN_TIMEOUT="3",
            BRIDGE_SIGNING__REQUIRED="true",
            BRIDGE_SIGNING__KEYS=KEYS,
            BRIDGE_SIGNING__ACCEPT_V1="false",
        ),
    )
    runner = captured.service
    assert isinstance(runner, ConsumerRunner)
    policy = runner.policy
    assert (policy.max_attempts, policy.backoff_initial, policy.backoff_max, policy.unhandled) == (2, 0.3, 0.6, "skip")
    assert [policy.retry_delay(n) for n in (1, 2, 3)] == [0.3, 0.6, 0.6]
    assert runner.settings.batch_size == 4
    assert runner.settings.dlq_timeout == 5
    assert runner.reader.tolerate_missing_headers
    assert isinstance(runner.reader.verifier, Verifier)
    assert runner.reader.verifier.accept_v1 is False
    assert captured.shutdown_timeout == 3
    assert captured.run_options["metrics_port"] == 0
    assert runner.group_id == f"{relay_env.prefix}coaching"
    assert f"{relay_env.prefix}{APP_TYPE}" in runner.topics
    assert isinstance(captured.clients, ConfluentClients)
    config = captured.clients.consumer_config(runner.group_id, client_id="x")
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (7000, 2000)
    assert config["enable.auto.offset.store"] is False


def test_consumer_poll_fetch_and_infrastructure_backoff_settings_reach_the_runner_and_librdkafka(
    relay_env, app_schema, monkeypatch, tmp_path
):
    tuning = {
        "BRIDGE_CONSUMER__POLL_TIMEOUT": "0.35",
        "BRIDGE_CONSUMER__FETCH_WAIT_MAX_MS": "250",
        "BRIDGE_CONSUMER__FETCH_MIN_BYTES": "4096",
        "BRIDGE_CONSUMER__INFRASTRUCTURE_BACKOFF_MAX": "2.5",
    }
    defaults = ConsumerSettings()
    assert (defaults.poll_timeout, defaults.fetch_wait_max_ms, defaults.fetch_min_bytes) != (0.35, 250, 4096)
    assert defaults.infrastructure_backoff_max != 2.5
    captured = capture(monkeypatch, CONSUME, app_settings(relay_env, **tuning))
    runner = captured.service
    assert isinstance(runner, ConsumerRunner)
    assert runner.settings.poll_timeout == 0.35
    # The runner's wait while the database or the DLQ is down backs off up to this (its policy).
    assert runner.policy.infrastructure_backoff_max == 2.5
    assert isinstance(captured.clients, ConfluentClients)
    config = captured.clients.consumer_config(runner.group_id, client_id="x")
    assert (config["fetch.wait.max.ms"], config["fetch.min.bytes"]) == (250, 4096)
    # The sinks read the same section.
    warehouse = capture(monkeypatch, ["sink", "warehouse"], settings_of(relay_env, **tuning)).service
    assert isinstance(warehouse, ConsumerRunner)
    assert (warehouse.settings.poll_timeout, warehouse.policy.infrastructure_backoff_max) == (0.35, 2.5)
    files = capture(monkeypatch, ["sink", "files", "--dir", str(tmp_path)], settings_of(relay_env, **tuning))
    assert isinstance(files.service, FileSink)
    assert files.service.poll_timeout == 0.35
    assert isinstance(files.clients, ConfluentClients)
    files_config = files.clients.consumer_config(files.service.group_id, client_id="x")
    assert (files_config["fetch.wait.max.ms"], files_config["fetch.min.bytes"]) == (250, 4096)


def test_consumer_poll_timeout_is_what_every_poll_waits(app_topics, app_schema, monkeypatch):
    recorded: list[RecordedPolls] = []

    def wrap(clients):
        recorded.append(RecordedPolls(clients))
        return recorded[-1]

    runner = capture(
        monkeypatch,
        CONSUME,
        app_settings(app_topics, BRIDGE_CONSUMER__POLL_TIMEOUT="0.35", BRIDGE_CONSUMER__BATCH_SIZE="7"),
        wrap_clients=wrap,
    ).service
    assert isinstance(runner, ConsumerRunner)
    with running(runner):
        wait_until(lambda: len(recorded[0].polls) >= 4, message="four polls")
    assert set(recorded[0].polls) == {(7, 0.35)}


def test_json_log_lines_of_a_dead_letter_carry_event_id_topic_partition_offset_and_consumer(
    app_topics, app_schema, monkeypatch, capsys
):
    """BRIDGE_LOG_FORMAT=json, logging set up by ``bridge consume`` itself: one record whose handler
    always fails and one that is not JSON are dead-lettered; every line on stderr is a JSON object,
    and the lines about a record carry its fields (the undecodable one has no event id to give)."""
    env = app_topics
    topic = env.topic(APP_TYPE)
    poison = envelope(subject="coa_j", payload={"seq": 1, "fail_times": 99})
    ((_, poison_at),) = produce(env.bootstrap, topic, [poison])
    ((_, garbage_at),) = produce(env.bootstrap, topic, [(b"k", b"not json")], raw=True)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        runner = capture(
            monkeypatch,
            CONSUME,
            app_settings(env, BRIDGE_LOG_FORMAT="json", BRIDGE_CONSUMER__MAX_ATTEMPTS="1"),
            real_logging=True,
        ).service
        assert isinstance(runner, ConsumerRunner)
        with running(runner):
            wait_until(lambda: runner.dead_lettered == 2, message="both dead letters")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved
    text = capsys.readouterr().err
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, text
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    consumer_lines = [line for line in lines if line["logger"] == "bridge.consumer"]
    assert consumer_lines
    assert all(line.get("consumer") == "coaching" for line in consumer_lines)
    letters = {
        line["offset"]: line
        for line in consumer_lines
        if line["message"].startswith("consumer coaching: dead-lettered ")
    }
    assert set(letters) == {poison_at, garbage_at}
    assert {k: letters[poison_at].get(k) for k in ("event_id", "topic", "partition", "offset", "consumer")} == {
        "event_id": poison.event_id,
        "topic": topic,
        "partition": 0,
        "offset": poison_at,
        "consumer": "coaching",
    }
    assert letters[poison_at]["level"] == "WARNING"
    garbage = letters[garbage_at]
    assert (garbage["topic"], garbage["partition"], garbage["consumer"]) == (topic, 0, "coaching")
    assert "event_id" not in garbage  # a field is there where it applies, never as null
    (gave_up,) = [line for line in consumer_lines if "failed 1 times" in line["message"]]
    assert gave_up["event_id"] == poison.event_id
    # A line about a topic names it in its field (here: the replay topic this test did not create).
    (no_replay,) = [line for line in consumer_lines if "no replay topic" in line["message"]]
    assert no_replay["topic"] == runner.replay_topic


def test_consumer_max_attempts_and_backoff(app_topics, app_schema, monkeypatch, caplog):
    env = app_topics
    always = envelope(subject="coa_a", payload={"seq": 1, "fail_times": 99})
    good = envelope(subject="coa_b", payload={"seq": 1})
    (poison_at, _) = produce(env.bootstrap, env.topic(APP_TYPE), [always, good])
    runner = capture(
        monkeypatch,
        CONSUME,
        app_settings(
            env,
            BRIDGE_CONSUMER__MAX_ATTEMPTS="2",
            BRIDGE_CONSUMER__BACKOFF_INITIAL="0.2",
            BRIDGE_CONSUMER__BACKOFF_MAX="0.2",
        ),
    ).service
    assert isinstance(runner, ConsumerRunner)
    with caplog.at_level("INFO", logger="bridge.consumer"), running(runner):
        wait_until(lambda: runner.dead_lettered == 1 and runner.applied == 1, message="the dead letter")
    (letter,) = read_all(env.bootstrap, [dlq(env)], expect=1)
    assert letter.headers["event_id"] == always.event_id.encode()
    assert letter.headers["dlq.attempts"] == b"2"  # the default would try 3 times
    assert sample(runner.metrics.registry, "bridge_consumer_retries_total", consumer="coaching") == 1
    assert "attempt 1 failed" in caplog.text
    assert "retrying in 0.2 s" in caplog.text
    assert "attempt 2 failed" not in caplog.text
    assert (int(letter.headers["dlq.original.partition"]), int(letter.headers["dlq.original.offset"])) == poison_at
    assert committed(env, runner.group_id, env.topic(APP_TYPE)) == end_offsets(env, env.topic(APP_TYPE))


@pytest.mark.parametrize("unhandled", ["skip", "dlq"])
def test_consumer_unhandled_policy(app_topics, app_schema, monkeypatch, caplog, unhandled):
    env = app_topics
    newer = document(seq=1)
    newer["schema_version"] = 9  # a version this consumer's contracts do not have
    good = envelope(subject="coa_g", payload={"seq": 1})
    produce_signed(env.bootstrap, env.topic(APP_TYPE), [newer], sign=False)
    produce(env.bootstrap, env.topic(APP_TYPE), [good])
    runner = capture(monkeypatch, CONSUME, app_settings(env, BRIDGE_CONSUMER__UNHANDLED=unhandled)).service
    assert isinstance(runner, ConsumerRunner)
    with caplog.at_level("WARNING", logger="bridge.consumer"), running(runner):
        wait_until(lambda: runner.applied == 1 and runner.skipped + runner.dead_lettered == 1, message="both events")
    assert [r[0] for r in applied(env)] == [good.event_id]
    high = end_offsets(env, dlq(env))[0]
    if unhandled == "skip":
        assert runner.skipped == 1
        assert high == 0  # nothing dead-lettered
        assert f"skipping unhandled: {APP_TYPE} v9" in caplog.text
    else:
        assert runner.dead_lettered == 1
        (letter,) = read_all(env.bootstrap, [dlq(env)], expect=1)
        assert letter.headers["dlq.reason"] == b"unhandled"
    assert committed(env, runner.group_id, env.topic(APP_TYPE)) == {0: 2}  # skipped or not, it is committed


@pytest.mark.parametrize("missing_headers", ["tolerate", "dlq"])
def test_consumer_missing_headers_policy(app_topics, app_schema, monkeypatch, missing_headers):
    env = app_topics
    bare = envelope(subject="coa_h", payload={"seq": 1})
    producer = Producer({"bootstrap.servers": env.bootstrap})
    producer.produce(
        env.topic(APP_TYPE), key=b"coa_h", value=bare.to_json(), headers=[("content-type", b"application/json")]
    )
    assert producer.flush(30) == 0
    runner = capture(monkeypatch, CONSUME, app_settings(env, BRIDGE_CONSUMER__MISSING_HEADERS=missing_headers)).service
    assert isinstance(runner, ConsumerRunner)
    with running(runner):
        wait_until(lambda: runner.applied + runner.dead_lettered == 1, message="the record")
    if missing_headers == "tolerate":
        assert [r[0] for r in applied(env)] == [bare.event_id]
    else:
        assert applied(env) == []
        (letter,) = read_all(env.bootstrap, [dlq(env)], expect=1)
        assert b"contract header(s) missing" in letter.headers["dlq.error.message"]


def test_consumer_batch_size_bounds_every_poll(app_topics, app_schema, monkeypatch):
    env = app_topics
    produce(env.bootstrap, env.topic(APP_TYPE), [envelope(subject=f"coa_{i}", payload={"seq": 1}) for i in range(30)])
    runner = capture(monkeypatch, CONSUME, app_settings(env, BRIDGE_CONSUMER__BATCH_SIZE="4")).service
    assert isinstance(runner, ConsumerRunner)
    with running(runner):
        wait_applied(env, 30)
    registry = runner.metrics.registry
    polls = sample(registry, "bridge_consumer_batch_size_count", consumer="coaching")
    assert sample(registry, "bridge_consumer_batch_size_sum", consumer="coaching") == 30
    assert sample(registry, "bridge_consumer_batch_size_bucket", consumer="coaching", le="5.0") == polls
    assert polls >= 8


def test_consume_process_with_max_attempts_unhandled_skip_and_required_signatures(app_topics, tmp_path):
    """``bridge consume`` as a process, several settings at once: a signed event whose handler
    always fails is dead-lettered after 2 attempts, a signed event of an unknown version is skipped
    (logged, committed), an unsigned one is dead-lettered as a signature failure."""
    env = app_topics
    topic = env.topic(APP_TYPE)
    good, failing = document(seq=1), document(seq=1, fail_times=99)
    newer = document(seq=1, x=1, y=2)
    newer["schema_version"] = 9
    unsigned = document(seq=1, z=3)
    positions = produce_signed(env.bootstrap, topic, [good, failing, newer])
    positions += produce_signed(env.bootstrap, topic, [unsigned], sign=False)
    process = ConsumerProcess(
        env,
        tmp_path,
        extra_env={
            "BRIDGE_CONSUMER__MAX_ATTEMPTS": "2",
            "BRIDGE_CONSUMER__UNHANDLED": "skip",
            "BRIDGE_SIGNING__REQUIRED": "true",
            "BRIDGE_SIGNING__KEYS": KEYS,
        },
    )
    process.start()
    try:
        letters = read_all(env.bootstrap, [dlq(env)], expect=2, timeout=60)
        wait_applied(env, 1)
        assert process.terminate() == 0, process.log()[-3000:]
    finally:
        process.kill()
    assert [r[0] for r in applied(env)] == [good["event_id"]]
    by_id = {r.headers["event_id"].decode(): r for r in letters}
    assert set(by_id) == {failing["event_id"], unsigned["event_id"]}
    assert by_id[failing["event_id"]].headers["dlq.attempts"] == b"2"
    assert by_id[failing["event_id"]].headers["dlq.error.class"] == b"builtins.RuntimeError"
    assert by_id[unsigned["event_id"]].headers["dlq.error.class"] == b"bridge.errors.SignatureError"
    assert int(by_id[unsigned["event_id"]].headers["dlq.original.offset"]) == positions[3][1]
    assert f"skipping unhandled: {APP_TYPE} v9" in process.log()
    assert committed(env, f"{env.prefix}coaching", topic) == {0: 4}


# --- bridge sink warehouse / files -------------------------------------------------------------------


def test_warehouse_sink_settings_reach_its_runner(relay_env, monkeypatch):
    captured = capture(
        monkeypatch,
        ["sink", "warehouse"],
        settings_of(relay_env, BRIDGE_CONSUMER__BATCH_SIZE="3", BRIDGE_CONSUMER__SHUTDOWN_TIMEOUT="2"),
    )
    runner = captured.service
    assert isinstance(runner, ConsumerRunner)
    assert runner.app.consumer == "platform-warehouse"
    assert runner.group_id == f"{relay_env.prefix}platform-warehouse"
    assert runner.settings.batch_size == 3
    assert captured.shutdown_timeout == 2


def test_files_sink_settings_reach_the_sink(relay_env, monkeypatch, tmp_path):
    captured = capture(
        monkeypatch,
        ["sink", "files", "--dir", str(tmp_path), "--format", "jsonl", "--max-bytes", "1000", "--max-seconds", "2"],
        settings_of(
            relay_env,
            BRIDGE_CONSUMER__BATCH_SIZE="3",
            BRIDGE_SIGNING__REQUIRED="true",
            BRIDGE_SIGNING__KEYS=KEYS,
            BRIDGE_CONSUMER__MISSING_HEADERS="tolerate",
        ),
    )
    sink = captured.service
    assert isinstance(sink, FileSink)
    assert (sink.fmt, sink.max_bytes, sink.max_seconds, sink.batch_size) == ("jsonl", 1000, 2.0, 3)
    assert sink.group_id == f"{relay_env.prefix}platform-warehouse.files"
    assert isinstance(sink.reader.verifier, Verifier)
    assert sink.reader.tolerate_missing_headers


class _FilesProcess(BridgeProcess):
    def __init__(self, env: Env, log_dir: Path, out: Path) -> None:
        super().__init__(log_dir, "files")
        self.env, self.out = env, out

    def command(self) -> list[str]:
        return ["sink", "files", "--dir", str(self.out), "--format", "jsonl", "--max-seconds", "0.3"]

    def environ(self) -> dict[str, str]:
        return self.env.environ(
            BRIDGE_CONSUMER__SESSION_TIMEOUT_MS="6000", BRIDGE_SIGNING__REQUIRED="true", BRIDGE_SIGNING__KEYS=KEYS
        )

    def cwd(self) -> Path:
        return TESTS


def test_files_sink_process_requiring_signatures_never_writes_an_unsigned_record(relay_env, tmp_path):
    topic = relay_env.topic("lead.created")
    create_topics(relay_env.bootstrap, [topic, dlq(relay_env, "lead.created", "platform-warehouse")])
    version = CONTRACTS.registry.lookup("lead.created", 1)
    assert version is not None
    schema_file = CONTRACTS.registry.schema_file(version)
    assert schema_file is not None
    schema = json.loads(schema_file.read_text())
    made = [
        json.loads(envelope("lead.created", 1, subject=f"s{i}", payload=example_for(schema)).to_json())
        for i in range(4)
    ]
    produce_signed(relay_env.bootstrap, topic, made[:3])
    (unsigned_at,) = produce_signed(relay_env.bootstrap, topic, made[3:], sign=False)
    out = tmp_path / "out"
    process = _FilesProcess(relay_env, tmp_path, out).start()
    try:
        (letter,) = read_all(relay_env.bootstrap, [dlq(relay_env, "lead.created", "platform-warehouse")], expect=1)
        wait_until(lambda: len(written(out)) == 3, message="the signed events in files")
        assert process.terminate() == 0, process.log()[-3000:]
    finally:
        process.kill()
    assert sorted(written(out)) == sorted(d["event_id"] for d in made[:3])
    assert letter.headers["event_id"] == made[3]["event_id"].encode()
    assert letter.headers["dlq.error.class"] == b"bridge.errors.SignatureError"
    assert int(letter.headers["dlq.original.offset"]) == unsigned_at[1]
    assert committed(relay_env, f"{relay_env.prefix}platform-warehouse.files", topic) == {0: 4}


def written(out: Path) -> list[str]:
    return [
        json.loads(line)["event_id"]
        for path in sorted(out.rglob("part-*.jsonl"))
        if not path.name.startswith(".")
        for line in path.read_text().splitlines()
    ]
