"""Provisioning and operating on a three-node Kafka cluster: the catalog's replication applied as
declared, more replicas than brokers refused (naming the topic and the setting), under-replicated
partitions in ``bridge status``, ``bridge doctor`` on ``min.insync.replicas``, and
``bridge dev up --broker kafka --nodes 3``."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from support.outbox import wait_until
from typer.testing import CliRunner

from bridge.cli import app
from bridge.contracts import Registry
from bridge.devstack.kafka import broker_ready
from bridge.devstack.stack import DevStack
from bridge.topics import Catalog, desired_topics

pytestmark = pytest.mark.cluster

runner = CliRunner()

CATALOG = """
[defaults]
partitions = 1
replication_factor = 3
min_insync_replicas = 2
retention_ms = 86400000
cleanup_policy = "delete"

[dlq]
partitions = 1
"""


def cli_env(env, **extra: str) -> dict[str, str]:
    return {
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": env.prefix,
        "BRIDGE_DATABASE__URL": env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": env.schema,
        "BRIDGE_KAFKA__REQUEST_TIMEOUT": "10",
        **extra,
    }


def apply_catalog(env, path: Path) -> None:
    result = runner.invoke(app, ["topics", "apply", "--catalog", str(path)], env=cli_env(env))
    assert result.exit_code == 0, result.output
    assert "lowered to fit" not in result.output


def test_the_catalog_is_applied_replicated_and_more_replicas_than_brokers_are_refused(cluster_env, tmp_path):
    env = cluster_env
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    apply_catalog(env, catalog)
    wanted = desired_topics(Catalog.load(catalog), Registry.load(), env.prefix)
    raw = AdminClient({"bootstrap.servers": env.bootstrap})
    metadata = raw.list_topics(timeout=10).topics
    for name in wanted:
        assert [len(p.replicas) for p in metadata[name].partitions.values()] == [3], name
    for name in (f"{env.prefix}credit.released", f"{env.prefix}lead.created.dlq.platform-warehouse"):
        resource = ConfigResource(ResourceType.TOPIC, name)
        assert raw.describe_configs([resource])[resource].result(timeout=30)["min.insync.replicas"].value == "2"

    # More replicas than the three brokers: refused, naming the topics and where the setting is.
    catalog.write_text(CATALOG + "replication_factor = 4\nmin_insync_replicas = 2\n")
    for command in ("plan", "apply"):
        result = runner.invoke(app, ["topics", command, "--catalog", str(catalog)], env=cli_env(env))
        assert result.exit_code == 2, result.output
        assert "more replicas than the cluster has brokers (3)" in result.output
        assert "dlq.platform-warehouse: replication_factor 4 ([dlq])" in result.output
    # Asking to fit is explicit; the plan says what it lowered (a replication change is not applied).
    result = runner.invoke(app, ["topics", "plan", "--catalog", str(catalog), "--fit-replication"], env=cli_env(env))
    assert result.exit_code == 0, result.output
    assert "lowered to fit" in result.output


def status_json(env) -> dict[str, Any]:
    result = runner.invoke(app, ["status", "--json"], env=cli_env(env))
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def doctor_checks(env, **extra: str) -> dict[str, list[dict[str, str]]]:
    result = runner.invoke(app, ["doctor", "--json"], env=cli_env(env, **extra))
    checks: dict[str, list[dict[str, str]]] = {}
    for check in json.loads(result.output):
        checks.setdefault(check["name"], []).append(check)
    return checks


def test_status_and_doctor_while_a_broker_is_down(kafka_cluster, cluster_env, tmp_path):
    env = cluster_env
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    apply_catalog(env, catalog)
    assert status_json(env)["replication_problems"] == {}
    healthy = doctor_checks(env, BRIDGE_TOPIC_CATALOG=str(catalog))
    assert [c["verdict"] for c in healthy["topics"]] == ["ok"]
    assert [c["verdict"] for c in healthy["min.insync.replicas"]] == ["ok"]
    assert "replication" not in healthy

    victim = kafka_cluster.brokers[-1].node_id
    kafka_cluster.kill(victim)
    wait_until(lambda: victim not in kafka_cluster.registered_brokers(), timeout=60, message="the broker fenced")
    env.bootstrap = kafka_cluster.live_bootstrap()
    wait_until(lambda: status_json(env)["replication_problems"], timeout=60, message="under-replicated partitions")
    report = status_json(env)
    assert report["brokers"] == 2
    problems = report["replication_problems"]
    assert f"{env.prefix}credit.released/0" in problems
    assert set(problems.values()) == {"under-replicated: 2 of 3 replicas in sync"}
    table = runner.invoke(app, ["status"], env=cli_env(env))
    assert "under-replicated" in table.output

    # Two brokers present still meet min.insync.replicas=2; the plan does not refuse (the missing
    # broker holds replicas, so the cluster still has three) and says who is missing.
    down = doctor_checks(env, BRIDGE_TOPIC_CATALOG=str(catalog))
    assert [c["verdict"] for c in down["topics"]] == ["ok"]
    assert [c["verdict"] for c in down["min.insync.replicas"]] == ["ok"]
    assert [c["detail"] for c in down["replication"]] == [
        f"1 of the cluster's 3 broker(s) are not present (id {victim})"
    ]
    # A catalog asking for three in sync cannot be met by the two present: doctor warns, naming it.
    strict = tmp_path / "strict.toml"
    strict.write_text(CATALOG.replace("min_insync_replicas = 2", "min_insync_replicas = 3"))
    warned = doctor_checks(env, BRIDGE_TOPIC_CATALOG=str(strict))
    (check,) = warned["min.insync.replicas"]
    assert check["verdict"] == "warn"
    assert "cannot be met by the 2 broker(s) present" in check["detail"]
    assert f"{env.prefix}" in check["detail"]

    kafka_cluster.restart(victim)
    kafka_cluster.wait_in_sync()
    env.bootstrap = kafka_cluster.bootstrap_servers
    assert status_json(env)["replication_problems"] == {}


def test_dev_up_runs_a_three_node_cluster_and_revives_a_dead_node(monkeypatch):
    # Not pytest's tmp_path: it sits in a 0700 directory the unprivileged PostgreSQL user cannot enter.
    tmp = Path(tempfile.mkdtemp(prefix="bridge-devtest-"))
    tmp.chmod(0o755)
    monkeypatch.chdir(tmp)  # `bridge dev up` writes .env in the current directory
    directory, env_file = tmp / "stack", tmp / ".env"
    stack = DevStack(directory, env_file=env_file)
    result = runner.invoke(app, ["dev", "up", "--broker", "kafka", "--nodes", "3", "--dir", str(directory)])
    try:
        assert result.exit_code == 0, result.output
        assert "kafka (3 nodes)" in result.output
        state = stack.status()
        assert state is not None
        assert [n["node_id"] for n in state.kafka_nodes] == [1, 2, 3]
        assert len(state.bootstrap_servers.split(",")) == 3
        assert broker_ready(state.bootstrap_servers)
        written = env_file.read_text()
        assert f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS={state.bootstrap_servers}" in written
        assert "BRIDGE_TOPIC_FIT_REPLICATION" not in written  # three brokers hold the catalog's replicas

        status = runner.invoke(app, ["dev", "status", "--dir", str(directory)])
        assert status.exit_code == 0, status.output
        assert status.output.count("running") == 4  # PostgreSQL and three nodes

        dead = state.kafka_nodes[1]
        os.kill(dead["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while stack.status().broker_running and time.monotonic() < deadline:  # type: ignore[union-attr]  # status() is None only before up(), which ran above
            time.sleep(0.1)
        status = runner.invoke(app, ["dev", "status", "--dir", str(directory)])
        assert status.exit_code == 1
        assert "kafka node 2: NOT running" in status.output

        revived, started = stack.up()
        assert started == ["kafka node 2"]  # the rest was running: left alone
        assert revived.bootstrap_servers == state.bootstrap_servers
        assert revived.kafka_nodes[1]["pid"] != dead["pid"]
        assert revived.kafka_nodes[0]["pid"] == state.kafka_nodes[0]["pid"]
        assert revived.all_running
        with psycopg.connect(revived.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        down = runner.invoke(app, ["dev", "down", "--dir", str(directory)])
    assert down.exit_code == 0, down.output
    assert "kafka node 1" in down.output
    assert stack.status() is None
    assert not directory.exists()
    assert not env_file.exists()
