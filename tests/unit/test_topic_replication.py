"""The catalog's replication against the brokers a cluster has (on the in-memory broker): more
replicas than brokers refused, naming the topic and the setting; fitting only when asked for; a
broker that is down still counts; doctor's warning when min.insync.replicas is out of reach."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bridge.contracts import Registry
from bridge.doctor import Check, _min_insync
from bridge.errors import ConfigurationError
from bridge.kafka.memory import MemoryAdmin, MemoryBroker
from bridge.kafka.records import ClusterInfo
from bridge.topics import Catalog, desired_topics
from bridge.topics.provisioning import plan_topics

REGISTRY = Registry.load()


def catalog(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return Catalog.load(path)


ONE_REPLICATED = """
[defaults]
replication_factor = 1
min_insync_replicas = 1
[dlq]
[overrides."credit.released"]
replication_factor = 3
min_insync_replicas = 2
"""


def test_more_replicas_than_brokers_is_refused_naming_the_topic_and_the_setting(tmp_path):
    admin = MemoryAdmin(MemoryBroker(brokers=2))
    wanted = desired_topics(catalog(tmp_path, ONE_REPLICATED), REGISTRY, "p.")
    with pytest.raises(ConfigurationError) as refused:
        plan_topics(admin, wanted)
    message = str(refused.value)
    assert "the topic catalog asks for more replicas than the cluster has brokers (2)" in message
    assert 'p.credit.released: replication_factor 3 ([overrides."credit.released"])' in message
    assert "p.credit.released.dlq" not in message  # its DLQs follow [dlq], which fits
    assert "--fit-replication (BRIDGE_TOPIC_FIT_REPLICATION=true)" in message


def test_the_shipped_catalog_on_one_broker_names_its_sections_and_counts_the_rest():
    wanted = desired_topics(Catalog.load(), REGISTRY, "sguild.")
    with pytest.raises(ConfigurationError) as refused:
        plan_topics(MemoryAdmin(MemoryBroker(brokers=1)), wanted)
    message = str(refused.value)
    assert "replication_factor 3 ([defaults])" in message
    assert "replication_factor 3 ([dlq])" in message
    assert f"… and {len(wanted) - 10} more topic(s)" in message


def test_fitting_is_explicit_and_said(tmp_path):
    admin = MemoryAdmin(MemoryBroker(brokers=1))
    wanted = desired_topics(catalog(tmp_path, ONE_REPLICATED), REGISTRY, "p.")
    plan = plan_topics(admin, wanted, fit_replication=True)
    assert plan.notes == [
        "the cluster has 1 broker(s): replication factor and min.insync.replicas of 1 topic(s) lowered to fit "
        "(--fit-replication: for a development cluster only)"
    ]
    fitted = plan.wanted["p.credit.released"]
    assert (fitted.replication_factor, fitted.min_insync_replicas) == (1, 1)
    create = next(c for c in plan.changes if c.topic == "p.credit.released")
    assert create.detail == "1 partitions, rf 1"


def test_three_brokers_hold_the_shipped_catalog_as_declared():
    admin = MemoryAdmin(MemoryBroker(brokers=3))
    plan = plan_topics(admin, desired_topics(Catalog.load(), REGISTRY, "sguild."))
    assert plan.notes == []
    assert (plan.brokers, plan.cluster_brokers) == (3, 3)
    assert {(s.replication_factor, s.min_insync_replicas) for s in plan.wanted.values()} == {(3, 2)}


class OneBrokerDown(MemoryAdmin):
    """A three-broker cluster whose broker 3 is down: the metadata lists two brokers, but the
    partitions' replica lists still name broker 3."""

    def cluster(self, timeout: float) -> ClusterInfo:
        info = super().cluster(timeout)
        return ClusterInfo(info.brokers[:-1], info.topics)


def test_a_broker_that_is_down_still_counts_and_is_named():
    broker = MemoryBroker(brokers=3)
    broker.create_topic("sguild.credit.released", 12)
    plan = plan_topics(OneBrokerDown(broker), desired_topics(Catalog.load(), REGISTRY, "sguild."))
    assert (plan.brokers, plan.cluster_brokers) == (2, 3)
    assert plan.notes == ["1 of the cluster's 3 broker(s) are not present (id 3)"]


def test_a_catalog_whose_min_insync_exceeds_its_replication_is_refused_naming_the_section(tmp_path):
    with pytest.raises(ConfigurationError, match=r"\[dlq\]: min_insync_replicas 3 is more than replication_factor 2"):
        catalog(
            tmp_path, "[defaults]\nreplication_factor = 3\nmin_insync_replicas = 3\n[dlq]\nreplication_factor = 2\n"
        )


def test_doctor_warns_when_the_brokers_present_cannot_meet_min_insync():
    broker = MemoryBroker(brokers=3)
    broker.create_topic("sguild.credit.released", 12)
    wanted = desired_topics(Catalog.load(), REGISTRY, "sguild.")
    checks: list[Check] = []
    _min_insync(plan_topics(MemoryAdmin(broker), wanted), checks)
    assert [c.verdict for c in checks] == ["ok"]

    strict = {name: replace(spec, min_insync_replicas=3) for name, spec in wanted.items()}
    checks = []
    _min_insync(plan_topics(OneBrokerDown(broker), strict), checks)
    (check,) = checks
    assert check.verdict == "warn"
    assert "min_insync_replicas (up to 3) cannot be met by the 2 broker(s) present" in check.detail
    assert next(iter(strict)) in check.detail  # names the topics
    assert "bridge status" in check.fix
