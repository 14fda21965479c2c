"""The dev stack's state: the settings it writes for a single broker and for a Kafka cluster, and
what ``bridge dev status`` lists (pure: nothing is started)."""

from __future__ import annotations

import pytest

from bridge.devstack.stack import DevStack, StackState
from bridge.errors import ConfigurationError


def state(**changes) -> StackState:
    base = {
        "database_url": "postgresql://bridge@127.0.0.1:5999/bridge",
        "bootstrap_servers": "127.0.0.1:19092",
        "broker": "kafka",
        "broker_pid": 0,
        "broker_port": 19092,
        "broker_controller_port": 19093,
        "postgres_data": "/nowhere/postgres/data",
        "postgres_bin": "/usr/bin",
        "postgres_user": None,
        "postgres_port": 5999,
    }
    return StackState(**{**base, **changes})


def test_a_single_broker_stack_fits_the_catalogs_replication_explicitly():
    assert state().env()["BRIDGE_TOPIC_FIT_REPLICATION"] == "true"
    assert state(broker="tansu").env()["BRIDGE_TOPIC_FIT_REPLICATION"] == "true"


def test_a_cluster_stack_lists_each_node_and_does_not_fit():
    nodes = [{"node_id": i, "pid": 0, "port": 19090 + i} for i in (1, 2, 3)]
    cluster = state(bootstrap_servers="127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093", kafka_nodes=nodes)
    assert "BRIDGE_TOPIC_FIT_REPLICATION" not in cluster.env()
    assert cluster.env()["BRIDGE_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"
    services = cluster.services()
    assert [name for name, _, _ in services] == ["PostgreSQL", "kafka node 1", "kafka node 2", "kafka node 3"]
    assert [where for _, _, where in services[1:]] == ["127.0.0.1:19091", "127.0.0.1:19092", "127.0.0.1:19093"]
    assert not cluster.broker_running  # (no such processes)


def test_a_cluster_needs_apache_kafka(tmp_path):
    with pytest.raises(ConfigurationError, match="Tansu runs one"):
        DevStack(tmp_path / "stack", env_file=None).up("tansu", nodes=3)
    assert not (tmp_path / "stack").exists()  # refused before anything started
