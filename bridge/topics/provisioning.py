"""Compare the wanted topics with a cluster (plan) and make the cluster match (apply).

``apply`` is idempotent: a second run finds nothing to do. It never decreases partitions (Kafka
cannot) and refuses changes that delete data (lower retention, another cleanup policy) unless
allowed explicitly. Replication-factor changes need a reassignment and are reported, not applied.
A catalog asking for more replicas than the cluster has brokers is refused, unless fitting is asked
for explicitly (a single-node development cluster).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.clock import Clock, SystemClock
from bridge.errors import BridgeError, ConfigurationError
from bridge.kafka.ports import Admin
from bridge.kafka.records import NewTopic
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
    #: Brokers present now (registered and not fenced).
    brokers: int
    notes: list[str]
    #: Brokers the cluster has: those present, and those that hold replicas but are down now.
    cluster_brokers: int = 0
    #: The wanted topics as they will be made (replication fitted to the cluster when asked).
    wanted: dict[str, TopicSpec] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not [c for c in self.changes if c.action in ("create", "add-partitions", "set-config")]


def plan_topics(
    admin: Admin, wanted: Mapping[str, TopicSpec], *, timeout: float = _TIMEOUT, fit_replication: bool = False
) -> Plan:
    """What ``apply`` would change to make the cluster match ``wanted``.

    A topic asking for more replicas than the cluster has brokers is refused
    (:class:`~bridge.errors.ConfigurationError`, naming the topics and the catalog setting), unless
    ``fit_replication`` (``--fit-replication``, ``BRIDGE_TOPIC_FIT_REPLICATION``: for a single-node
    development cluster) lowers its replication factor and ``min.insync.replicas`` to fit. The
    cluster's size counts the brokers that are down but hold replicas, so a broker being restarted
    does not make a plan refuse (creating a topic then waits for it: Kafka needs its replicas up)."""
    cluster = admin.cluster(timeout)
    present = {b.id for b in cluster.brokers}
    holding = {r for topic in cluster.topics.values() for p in topic.partitions.values() for r in p.replicas}
    brokers = len(present | holding)
    notes = []
    too_many = {name: spec for name, spec in wanted.items() if spec.replication_factor > brokers}
    if too_many and not fit_replication:
        raise ConfigurationError(_too_many_replicas(too_many, brokers))
    fitted = {name: spec.fitted_to(brokers) for name, spec in wanted.items()}
    if too_many:
        notes.append(
            f"the cluster has {brokers} broker(s): replication factor and min.insync.replicas of {len(too_many)} "
            "topic(s) lowered to fit (--fit-replication: for a development cluster only)"
        )
    if len(present) < brokers:
        down = ", ".join(str(b) for b in sorted(holding - present))
        notes.append(f"{brokers - len(present)} of the cluster's {brokers} broker(s) are not present (id {down})")
    existing = cluster.topics
    changes: list[Change] = []
    current_configs = admin.topic_configs([name for name in fitted if name in existing], timeout)
    for name, spec in fitted.items():
        if name not in existing:
            changes.append(
                Change(name, "create", f"{spec.partitions} partitions, rf {spec.replication_factor}", spec=spec)
            )
            continue
        partitions = existing[name].partitions
        have = len(partitions)
        if spec.partitions > have:
            changes.append(Change(name, "add-partitions", f"{have} -> {spec.partitions}", spec=spec))
        elif spec.partitions < have:
            changes.append(
                Change(
                    name,
                    "refused",
                    f"has {have} partitions, catalog says {spec.partitions}: Kafka cannot decrease partitions",
                )
            )
        rf = existing[name].replication_factor
        if rf != spec.replication_factor:
            changes.append(
                Change(
                    name,
                    "manual",
                    f"replication factor {rf} -> {spec.replication_factor} needs a partition reassignment",
                )
            )
        current = current_configs.get(name, {})
        differing = {k: v for k, v in spec.configs().items() if current.get(k) != v}
        if differing:
            destructive = _destructive(current, differing)
            detail = ", ".join(f"{k} {current.get(k)} -> {v}" for k, v in sorted(differing.items()))
            changes.append(Change(name, "set-config", detail, destructive=destructive, configs=differing))
    return Plan(changes, len(present), notes, brokers, fitted)


def _too_many_replicas(too_many: Mapping[str, TopicSpec], brokers: int, shown: int = 10) -> str:
    lines = [
        f"  - {name}: replication_factor {spec.replication_factor} ({spec.replication_from})"
        for name, spec in list(too_many.items())[:shown]
    ]
    if len(too_many) > shown:
        lines.append(f"  - … and {len(too_many) - shown} more topic(s)")
    return (
        f"the topic catalog asks for more replicas than the cluster has brokers ({brokers}):\n"
        + "\n".join(lines)
        + "\nrun more brokers, or lower replication_factor (and min_insync_replicas) in the catalog; on a "
        "single-node development cluster only, --fit-replication (BRIDGE_TOPIC_FIT_REPLICATION=true) fits them"
    )


def apply_plan(
    admin: Admin, plan: Plan, *, allow_destructive: bool = False, clock: Clock | None = None
) -> list[Change]:
    """Carry out a plan; return what was done. Refuses destructive changes before touching anything."""
    destructive = [c for c in plan.changes if c.destructive]
    if destructive and not allow_destructive:
        listed = "\n".join(f"  - {c}" for c in destructive)
        raise ConfigurationError(f"refusing destructive topic changes (use --allow-destructive):\n{listed}")
    clock = clock or SystemClock()
    done: list[Change] = []
    creates = {c.topic: c for c in plan.changes if c.action == "create" and c.spec is not None}
    if creates:
        outcomes = admin.create_topics(
            [
                NewTopic(c.topic, c.spec.partitions, c.spec.replication_factor, c.spec.configs())
                for c in creates.values()
                if c.spec
            ],
            _TIMEOUT,
        )
        done += _check(outcomes, creates, ignore="TOPIC_ALREADY_EXISTS")
        _await_metadata(admin, {c.topic: c.spec.partitions for c in creates.values() if c.spec}, clock)
    grows = {c.topic: c for c in plan.changes if c.action == "add-partitions" and c.spec is not None}
    if grows:
        outcomes = admin.create_partitions({c.topic: c.spec.partitions for c in grows.values() if c.spec}, _TIMEOUT)
        done += _check(outcomes, grows)
        _await_metadata(admin, {c.topic: c.spec.partitions for c in grows.values() if c.spec}, clock)
    configs = {c.topic: c for c in plan.changes if c.action == "set-config"}
    if configs:
        outcomes = admin.set_topic_configs({c.topic: c.configs for c in configs.values()}, _TIMEOUT)
        done += _check(outcomes, configs)
    return done


def _await_metadata(admin: Admin, partitions: dict[str, int], clock: Clock) -> None:
    """Return once the broker's metadata shows the new topics and partitions, so a relay or a
    second plan started right after ``apply`` sees them."""
    deadline = clock.monotonic() + _TIMEOUT
    while clock.monotonic() < deadline:
        topics = admin.cluster(_TIMEOUT).topics
        if all(name in topics and len(topics[name].partitions) >= n for name, n in partitions.items()):
            return
        clock.wait(0.2)
    raise BridgeError(f"topic metadata did not show the changes within {_TIMEOUT} s")


def _destructive(current: dict[str, str], wanted: dict[str, str]) -> bool:
    if "cleanup.policy" in wanted and current.get("cleanup.policy") not in (None, wanted["cleanup.policy"]):
        return True
    if "retention.ms" in wanted and current.get("retention.ms") is not None:
        old, new = int(current["retention.ms"]), int(wanted["retention.ms"])
        forever = -1
        return (old == forever and new != forever) or (new != forever and 0 <= new < old)
    return False


def _check(
    outcomes: Mapping[str, str | None], changes: Mapping[str, Change], ignore: str | None = None
) -> list[Change]:
    done, errors = [], []
    for name, error in outcomes.items():
        if error is None:
            done.append(changes[name])
        elif error != ignore:  # (another apply may have got there first)
            errors.append(f"{name}: {error}")
    if errors:
        raise BridgeError("topic changes failed:\n" + "\n".join(f"  - {e}" for e in errors))
    return done
