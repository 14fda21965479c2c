"""What an operator meets, made clear, bounded and safe: messages and exit codes instead of
tracebacks, fail-fast on permanent errors, one bounded log stream, a stop within its timeout, probes
that tell the truth, and DLQ tools that work on records without headers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from support.consumer import APP_TYPE, consumer_thread, counting_app, create_applied_table
from support.kafka import create_topics
from support.outbox import Env, emit_numbered, wait_until

from bridge.devstack import KafkaServer, PostgresServer, free_port
from bridge.lifecycle import ServiceThread
from bridge.observability import ProbeServer
from bridge.outbox import migrate
from bridge.wiring import build_relay

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]


def bridge(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    """Run ``python -m bridge``; return its exit code, its output and how long it took."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environ.update(env)
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=TESTS,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - began


def closed_port_url() -> str:
    return f"postgresql://bridge@127.0.0.1:{free_port()}/nowhere"


@pytest.mark.parametrize("command", [["db", "migrate"], ["db", "status"], ["status"], ["outbox", "failed"]])
def test_an_unreachable_database_is_a_message_and_exit_3_not_a_traceback(command, kafka_service):
    code, output, took = bridge(
        *command,
        env={
            "BRIDGE_DATABASE__URL": closed_port_url(),
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_service.bootstrap_servers,
        },
    )
    assert code == 3, output
    assert "Traceback" not in output
    assert "BRIDGE_DATABASE__URL" in output
    assert "unavailable" in output
    assert took < 20


@pytest.mark.parametrize("command", [["dlq", "list"], ["status"], ["topics", "apply"]])
def test_an_unreachable_broker_is_a_message_naming_the_setting(command, relay_env):
    env = {
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "BRIDGE_KAFKA__REQUEST_TIMEOUT": "2",
    }
    code, output, took = bridge(*command, env=env)
    assert code == 3, output
    assert "Traceback" not in output
    assert "BRIDGE_KAFKA__BOOTSTRAP_SERVERS" in output
    assert took < 30


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("nosuchmod:app", "cannot import 'nosuchmod'"),
        ("support.consumer:missing", "has no 'missing'"),
        ("support.consumer:counting_app", "needs argument(s) schema"),
        ("support.consumer", "expected module:attribute"),
    ],
)
def test_consume_with_a_wrong_target_says_why_and_exits_2(target, says, relay_env):
    code, output, _ = bridge("consume", target, env={"BRIDGE_DATABASE__URL": relay_env.database_url})
    assert code == 2, output
    assert says in output
    assert "Traceback" not in output


def test_the_relay_fails_fast_on_permanent_database_errors(relay_env, postgres_service):
    info = psycopg.conninfo.conninfo_to_dict(postgres_service.url)
    cases = {
        "a malformed URL": "postgresql://bridge@127.0.0.1:notaport/db",
        "a database that does not exist": psycopg.conninfo.make_conninfo("", **{**info, "dbname": "no_such_database"}),
        "an unknown role (authentication)": psycopg.conninfo.make_conninfo("", **{**info, "user": "no_such_role"}),
    }
    env = {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap, "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema}
    for what, url in cases.items():
        code, output, took = bridge("relay", env={**env, "BRIDGE_DATABASE__URL": url}, timeout=30)
        assert code == 2, f"{what}: {output}"
        assert "BRIDGE_DATABASE__URL" in output, what
        assert "Traceback" not in output, what
        assert took < 15, what
    code, output, took = bridge(
        "relay",
        env={**env, "BRIDGE_DATABASE__URL": relay_env.database_url, "BRIDGE_DATABASE__SCHEMA_NAME": "nosuch"},
        timeout=30,
    )
    assert code == 2, output
    assert "bridge db migrate" in output, output
    assert "nosuch.outbox" in output, output
    assert output.count("leading the outbox") == 0
    assert took < 15


#: The consumer processes that must fail fast: a test app (psycopg, and asyncio) and the warehouse sink.
CONSUMERS = {
    "consume": (["consume", "support.consumer:app_from_environment"], {"TEST_APP_KIND": "sync"}, "inbox"),
    "consume async": (["consume", "support.consumer:app_from_environment"], {"TEST_APP_KIND": "async"}, "inbox"),
    "sink warehouse": (["sink", "warehouse"], {}, "warehouse_events"),
}


@pytest.mark.parametrize("which", list(CONSUMERS))
def test_consumers_and_sinks_fail_fast_on_permanent_database_errors(which, relay_env, postgres_service):
    command, extra, table = CONSUMERS[which]
    info = psycopg.conninfo.conninfo_to_dict(postgres_service.url)
    cases = {
        "a malformed URL": "postgresql://bridge@127.0.0.1:notaport/db",
        "a database that does not exist": psycopg.conninfo.make_conninfo("", **{**info, "dbname": "no_such_database"}),
        # The test server trusts loopback (any password passes), so a failed login is an unknown role.
        "an unknown role (authentication)": psycopg.conninfo.make_conninfo("", **{**info, "user": "no_such_role"}),
        # At start-up a host name that does not resolve is a bad URL, not an outage to wait out.
        "a host name that does not resolve": psycopg.conninfo.make_conninfo(
            "", **{**{k: v for k, v in info.items() if k != "hostaddr"}, "host": "no-such-host.invalid"}
        ),
    }
    env = {
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
        "BRIDGE_TOPIC_PREFIX": relay_env.prefix,
        "TEST_APP_SCHEMA": relay_env.schema,
        "PYTHONPATH": str(TESTS),
        **extra,
    }
    for what, url in cases.items():
        code, output, took = bridge(*command, env={**env, "BRIDGE_DATABASE__URL": url}, timeout=30)
        assert code == 2, f"{which}, {what}: {output}"
        assert "BRIDGE_DATABASE__URL" in output, f"{which}, {what}: {output}"
        assert "Traceback" not in output, f"{which}, {what}: {output}"
        assert took < 15, f"{which}, {what}: {took:.1f} s"
    code, output, took = bridge(
        *command,
        env={**env, "BRIDGE_DATABASE__URL": relay_env.database_url, "BRIDGE_DATABASE__SCHEMA_NAME": "nosuch"},
        timeout=30,
    )
    assert code == 2, output
    assert "bridge db migrate" in output, output
    assert f"nosuch.{table}" in output, output
    assert "BRIDGE_DATABASE__SCHEMA_NAME" in output, output
    assert "Traceback" not in output
    assert took < 15


def test_a_broker_unreachable_for_15_seconds_gives_a_bounded_json_log(relay_env, tmp_path):
    env = {
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "BRIDGE_LOG_FORMAT": "json",
    }
    emit_numbered(relay_env, ["a", "b"], 5)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")} | env
    log = tmp_path / "relay.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "relay"], env=environ, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            time.sleep(15)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    lines = log.read_text().splitlines()
    assert 1 <= len(lines) <= 40, "\n".join(lines[:60])
    entries = [json.loads(line) for line in lines]  # every line, librdkafka's included, is JSON
    assert any(e["logger"] == "bridge.kafka.librdkafka" for e in entries)
    assert any("leading the outbox" in e["message"] and e.get("schema") == relay_env.schema for e in entries)


def test_sigterm_with_a_frozen_broker_returns_within_the_timeout_and_says_what_is_left(
    postgres_service, unique_name, tmp_path
):
    kafka = KafkaServer.start()
    schema = unique_name("ob")
    env = Env(postgres_service.url, schema, unique_name("p") + ".", kafka.bootstrap_servers)
    try:
        with psycopg.connect(postgres_service.url, autocommit=True) as conn:
            migrate(conn, schema)
        create_topics(env.bootstrap, [env.topic()])
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        environ |= env.environ(BRIDGE_RELAY__SHUTDOWN_TIMEOUT="5")
        log = tmp_path / "relay.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "relay"], env=environ, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                emit_numbered(env, ["x"], 10)
                wait_until(lambda: env.outbox_count() == 0, message="the first events")
                assert kafka._process is not None
                os.kill(kafka._process.pid, signal.SIGSTOP)  # frozen: connections stay open, nothing answers
                emit_numbered(env, ["x", "y"], 20)
                time.sleep(2)  # the relay has read them and holds them in flight
                began = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = process.wait(timeout=60)
                took = time.monotonic() - began
            finally:
                if kafka._process is not None:
                    os.kill(kafka._process.pid, signal.SIGCONT)
                process.kill()
        text = log.read_text()
        assert took <= 5 + 3 + 2, f"took {took:.1f} s\n{text[-3000:]}"  # timeout + the watchdog's grace + start
        assert code == 1, text[-3000:]  # events were left unconfirmed
        assert "40 event(s) stay in the outbox" in text, text[-3000:]
    finally:
        kafka.stop()


def test_readyz_turns_503_while_postgresql_is_down_and_200_after(kafka_service, unique_name):
    pg = PostgresServer.start()
    try:
        env = Env(pg.url, unique_name("ob"), unique_name("p") + ".", kafka_service.bootstrap_servers)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn, env.schema)
        relay = build_relay(env.settings())
        probes = ProbeServer(relay.metrics.registry, relay.health, host="127.0.0.1", port=0).start()
        thread = ServiceThread(relay).start()

        def status(path: str) -> int:
            try:
                return int(urllib.request.urlopen(f"http://127.0.0.1:{probes.port}{path}", timeout=5).status)
            except urllib.error.HTTPError as exc:
                return exc.code

        try:
            wait_until(lambda: status("/readyz") == 200, message="ready")
            assert status("/healthz") == 200
            assert status("/nothing") == 404
            pg.stop(remove=False)
            wait_until(lambda: status("/readyz") == 503, timeout=30, message="not ready while the database is down")
            assert status("/healthz") == 200  # alive all along: the loop keeps turning
            pg.restart()
            wait_until(lambda: status("/readyz") == 200, timeout=60, message="ready again")
        finally:
            thread.stop(timeout=60)
            probes.close()
    finally:
        pg.stop()


def test_a_dead_letter_without_headers_is_shown_and_replayed_by_its_event_id(relay_env):
    """The record's envelope is valid, but it arrived without the contract headers: the consumer
    dead-letters it (integrity), and the DLQ tools still find its event id in the value."""
    from confluent_kafka import Producer
    from support.consumer import envelope

    topic = relay_env.topic(APP_TYPE)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching", f"{relay_env.prefix}coaching.dlq-replay"])
    create_applied_table(relay_env)
    bare = envelope(subject="coa_h", payload={"seq": 1})
    producer = Producer({"bootstrap.servers": relay_env.bootstrap})
    producer.produce(topic, key=b"coa_h", value=bare.to_json())
    producer.flush(30)
    with consumer_thread(relay_env, counting_app(relay_env.schema)) as runner:
        wait_until(lambda: runner.dead_lettered == 1, message="the dead letter")
    env = {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap, "BRIDGE_TOPIC_PREFIX": relay_env.prefix}
    code, output, _ = bridge("dlq", "show", f"{topic}.dlq.coaching", env=env)
    assert code == 0, output
    assert f"event {bare.event_id} ({APP_TYPE})" in output, output
    assert "reason: integrity" in output
    assert "contract header(s) missing" in output
    code, output, _ = bridge(
        "dlq", "replay", f"{topic}.dlq.coaching", "--event-id", bare.event_id, "--dry-run", env=env
    )
    assert code == 0, output
    assert f"{bare.event_id}  (integrity)" in output, output
    assert "would replay 1 record(s)" in output, output


def test_doctor_says_what_to_fix_then_passes_once_it_is_fixed(relay_env):
    env = {
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema + "_new",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": relay_env.prefix,
    }
    code, output, _ = bridge("doctor", env=env)
    assert code == 1, output
    # One broker cannot hold the shipped catalog's three replicas: refused, naming the way out.
    assert "more replicas than the cluster has brokers (1)" in output
    assert "BRIDGE_TOPIC_FIT_REPLICATION=true" in output
    env["BRIDGE_TOPIC_FIT_REPLICATION"] = "true"  # a single-node development broker, explicitly
    code, output, _ = bridge("doctor", env=env)
    assert code == 1, output
    assert "migrations" in output
    assert "run bridge db migrate" in output
    assert "topic change(s) pending" in output
    assert "run bridge topics apply" in output
    for fix in (["db", "migrate"], ["topics", "apply"]):
        assert bridge(*fix, env=env)[0] == 0
    code, output, _ = bridge("doctor", "--json", env=env)
    assert code == 0, output
    verdicts = {c["name"]: c["verdict"] for c in json.loads(output)}
    assert verdicts["database"] == verdicts["migrations"] == verdicts["broker"] == verdicts["topics"] == "ok"
    assert verdicts["min.insync.replicas"] == "ok"  # fitted to the one broker
    assert verdicts["replication"] == "warn"  # …and said so
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{relay_env.schema}_new" CASCADE')
