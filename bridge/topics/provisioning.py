"""Compare the wanted topics with a cluster (plan) and make the cluster match (apply).

``apply`` is idempotent: a second run finds nothing to do. It never decreases partitions (Kafka
cannot) and refuses changes that delete data (lower retention, another cleanup policy) unless
allowed explicitly. Replication-factor changes need a reassignment and are reported, not applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from bridge.errors import BridgeError, ConfigurationError
from bridge.topics.catalog import TopicSpec

__all__ = ["Change", "Plan", "apply_plan", "plan_topics"]

_TIMEOUT = 30


@dataclass(frozen=True)
class Change:
    """One difference between the catalog and the cluster."""

    topic: str
    action: str  # create | add-partitions | set-config | refused | manual
    detail: str
    destructive: bool = False
    spec: TopicSpec | None = None
    configs: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        flag = " [destructive]" if self.destructive else ""
        return f"{self.action:15} {self.topic}: {self.detail}{flag}"


@dataclass(frozen=True)
class Plan:
    changes: list[Change]
    brokers: int
    notes: list[str]

    @property
    def empty(self) -> bool:
        return not [c for c in self.changes if c.action in ("create", "add-partitions", "set-config")]


def plan_topics(admin: AdminClient, wanted: dict[str, TopicSpec]) -> Plan:
    """What ``apply`` would change to make the cluster match ``wanted``."""
    metadata = admin.list_topics(timeout=_TIMEOUT)
    brokers = len(metadata.brokers)
    notes = []
    fitted = {name: spec.fitted_to(brokers) for name, spec in wanted.items()}
    if any(f.replication_factor < s.replication_factor for f, s in zip(fitted.values(), wanted.values(), strict=True)):
        notes.append(f"the cluster has {brokers} broker(s): replication factor and min.insync.replicas lowered to fit")
    existing = {name: t for name, t in metadata.topics.items() if t.error is None}
    changes: list[Change] = []
    describe = [ConfigResource(ResourceType.TOPIC, name) for name in fitted if name in existing]
    current_configs = _describe(admin, describe)
    for name, spec in fitted.items():
        if name not in existing:
            changes.append(Change(name, "create", f"{spec.partitions} partitions, rf {spec.replication_factor}", spec=spec))
            continue
        partitions = existing[name].partitions
        have = len(partitions)
        if spec.partitions > have:
            changes.append(Change(name, "add-partitions", f"{have} -> {spec.partitions}", spec=spec))
        elif spec.partitions < have:
            changes.append(Change(name, "refused", f"has {have} partitions, catalog says {spec.partitions}: Kafka cannot decrease partitions"))
        rf = min((len(p.replicas) for p in partitions.values()), default=0)
        if rf != spec.replication_factor:
            changes.append(Change(name, "manual", f"replication factor {rf} -> {spec.replication_factor} needs a partition reassignment"))
        current = current_configs.get(name, {})
        differing = {k: v for k, v in spec.configs().items() if current.get(k) != v}
        if differing:
            destructive = _destructive(current, differing)
            detail = ", ".join(f"{k} {current.get(k)} -> {v}" for k, v in sorted(differing.items()))
            changes.append(Change(name, "set-config", detail, destructive=destructive, configs=differing))
    return Plan(changes, brokers, notes)


def apply_plan(admin: AdminClient, plan: Plan, *, allow_destructive: bool = False) -> list[Change]:
    """Carry out a plan; return what was done. Refuses destructive changes before touching anything."""
    destructive = [c for c in plan.changes if c.destructive]
    if destructive and not allow_destructive:
        listed = "\n".join(f"  - {c}" for c in destructive)
        raise ConfigurationError(f"refusing destructive topic changes (use --allow-destructive):\n{listed}")
    done: list[Change] = []
    creates = [c for c in plan.changes if c.action == "create"]
    if creates:
        futures = admin.create_topics(
            [NewTopic(c.topic, c.spec.partitions, c.spec.replication_factor, config=c.spec.configs()) for c in creates],
            operation_timeout=_TIMEOUT,
        )
        done += _wait(futures, {c.topic: c for c in creates}, ignore="TOPIC_ALREADY_EXISTS")
        _await_metadata(admin, {c.topic: c.spec.partitions for c in creates})
    grows = [c for c in plan.changes if c.action == "add-partitions"]
    if grows:
        futures = admin.create_partitions([NewPartitions(c.topic, c.spec.partitions) for c in grows], operation_timeout=_TIMEOUT)
        done += _wait(futures, {c.topic: c for c in grows})
        _await_metadata(admin, {c.topic: c.spec.partitions for c in grows})
    configs = [c for c in plan.changes if c.action == "set-config"]
    if configs:
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                c.topic,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(c.configs.items())
                ],
            )
            for c in configs
        ]
        futures = admin.incremental_alter_configs(resources)
        done += _wait({r.name: f for r, f in futures.items()}, {c.topic: c for c in configs})
    return done


def _await_metadata(admin: AdminClient, partitions: dict[str, int]) -> None:
    """Return once the broker's metadata shows the new topics and partitions, so a relay or a
    second plan started right after ``apply`` sees them."""
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=_TIMEOUT).topics
        if all(name in topics and len(topics[name].partitions) >= n for name, n in partitions.items()):
            return
        time.sleep(0.2)
    raise BridgeError(f"topic metadata did not show the changes within {_TIMEOUT} s")


def _describe(admin: AdminClient, resources: list[ConfigResource]) -> dict[str, dict[str, str]]:
    if not resources:
        return {}
    result = {}
    for resource, future in admin.describe_configs(resources, request_timeout=_TIMEOUT).items():
        entries = future.result(timeout=_TIMEOUT)
        result[resource.name] = {k: e.value for k, e in entries.items()}
    return result


def _destructive(current: dict[str, str], wanted: dict[str, str]) -> bool:
    if "cleanup.policy" in wanted and current.get("cleanup.policy") not in (None, wanted["cleanup.policy"]):
        return True
    if "retention.ms" in wanted and current.get("retention.ms") is not None:
        old, new = int(current["retention.ms"]), int(wanted["retention.ms"])
        forever = -1
        return (old == forever and new != forever) or (new != forever and 0 <= new < old)
    return False


def _wait(futures: dict, changes: dict[str, Change], ignore: str | None = None) -> list[Change]:
    done, errors = [], []
    for name, future in futures.items():
        try:
            future.result(timeout=_TIMEOUT * 2)
            done.append(changes[name])
        except KafkaException as exc:
            error = exc.args[0]
            if ignore and error.name() == ignore:
                continue  # another apply got there first
            errors.append(f"{name}: {error.str()}")
    if errors:
        raise BridgeError("topic changes failed:\n" + "\n".join(f"  - {e}" for e in errors))
    return done
