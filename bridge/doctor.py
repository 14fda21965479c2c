"""``bridge doctor``: checks what a deployment needs, in order, and says what to fix.

Settings → contracts → database (reachable, migrated) → broker (reachable) → topics (as the
catalog says; no more replicas than the cluster has brokers; ``min.insync.replicas`` within reach
of the brokers present) → consumer groups (known to the broker).
A check that fails does not stop the others that do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bridge.config import BridgeSettings, load_settings
from bridge.contracts import Registry, check_contracts, resolve_contracts_path
from bridge.errors import BridgeError, ConfigurationError, InfrastructureError
from bridge.kafka.ports import KafkaClients
from bridge.kafka.records import TopicPartition
from bridge.outbox.migrations import status as migration_status
from bridge.postgres import connect
from bridge.topics import desired_topics
from bridge.topics.provisioning import Plan, plan_topics

__all__ = ["Check", "run_checks"]

Verdict = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, the verdict, what was found, and what to do about it."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""


def run_checks(clients_for: Callable[[BridgeSettings], KafkaClients]) -> list[Check]:
    """Every check, in order. ``clients_for`` builds the Kafka clients from the settings."""
    checks: list[Check] = []
    try:
        settings = load_settings()
    except BridgeError as exc:
        return [Check("settings", "fail", str(exc), "fix the BRIDGE_* variables named above")]
    checks.append(Check("settings", "ok", "every BRIDGE_* setting is valid"))

    registry = _contracts(settings, checks)
    _database(settings, checks)
    if registry is None:
        checks.append(Check("broker", "skip", "the contracts must load first"))
        return checks
    clients = clients_for(settings)
    if _broker(settings, clients, checks):
        prefix = settings.topic_prefix if settings.topic_prefix is not None else registry.topic_prefix
        _topics(settings, registry, prefix, clients, checks)
        _groups(registry, prefix, clients, checks)
    return checks


def _contracts(settings: BridgeSettings, checks: list[Check]) -> Registry | None:
    root = resolve_contracts_path(settings.contracts_path)
    problems = check_contracts(root)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        checks.append(Check("contracts", "fail", listed, "bridge contracts check lists every problem"))
        return None
    registry = Registry.load(root)
    checks.append(Check("contracts", "ok", f"{len(registry.events)} event types in {root}"))
    return registry


def _database(settings: BridgeSettings, checks: list[Check]) -> None:
    if settings.database.url is None:
        checks.append(Check("database", "fail", "BRIDGE_DATABASE__URL is not set", "set it to a libpq URL"))
        return
    try:
        with connect(
            settings.database_url(),
            application_name="bridge-doctor",
            connect_timeout=min(5.0, settings.database.connect_timeout),
        ) as conn:
            state = migration_status(conn, settings.database.schema_name)
    except InfrastructureError as exc:
        checks.append(Check("database", "fail", str(exc), "start PostgreSQL or fix BRIDGE_DATABASE__URL"))
        return
    checks.append(Check("database", "ok", "reachable"))
    if state.pending:
        checks.append(
            Check(
                "migrations",
                "fail",
                f"schema {state.schema} at version {state.current} of {state.latest}",
                "run bridge db migrate",
            )
        )
    else:
        checks.append(Check("migrations", "ok", f"schema {state.schema} at version {state.current}"))


def _broker(settings: BridgeSettings, clients: KafkaClients, checks: list[Check]) -> bool:
    admin = clients.admin()
    try:
        cluster = admin.cluster(min(5.0, settings.kafka.request_timeout))
    except InfrastructureError as exc:
        checks.append(Check("broker", "fail", str(exc), "start Kafka or fix BRIDGE_KAFKA__BOOTSTRAP_SERVERS"))
        return False
    finally:
        admin.close()
    checks.append(Check("broker", "ok", f"{len(cluster.brokers)} broker(s) at {settings.kafka.bootstrap_servers}"))
    return True


def _topics(
    settings: BridgeSettings, registry: Registry, prefix: str, clients: KafkaClients, checks: list[Check]
) -> None:
    from bridge.topics.catalog import Catalog, catalog_path

    try:
        catalog = Catalog.load(catalog_path(registry, settings.topic_catalog))
    except BridgeError as exc:
        checks.append(Check("topic catalog", "fail", str(exc), "fix the catalog file named above"))
        return
    wanted = desired_topics(catalog, registry, prefix)
    admin = clients.admin()
    try:
        plan = plan_topics(admin, wanted, fit_replication=settings.topic_fit_replication)
    except InfrastructureError as exc:
        checks.append(Check("topics", "fail", str(exc), "check the broker"))
        return
    except ConfigurationError as exc:  # more replicas than brokers
        checks.append(Check("replication", "fail", str(exc), _FIT))
        return
    finally:
        admin.close()
    to_apply = [c for c in plan.changes if c.action in ("create", "add-partitions", "set-config")]
    if to_apply:
        names = ", ".join(c.topic for c in to_apply[:5]) + (
            f" (and {len(to_apply) - 5} more)" if len(to_apply) > 5 else ""
        )
        checks.append(
            Check("topics", "fail", f"{len(to_apply)} topic change(s) pending: {names}", "run bridge topics apply")
        )
    else:
        checks.append(Check("topics", "ok", f"{len(wanted)} topics match the catalog"))
    checks.extend(
        Check("topics", "warn", str(change), "see bridge topics plan")
        for change in plan.changes
        if change.action in ("refused", "manual")
    )
    fix = "on a production cluster, give it as many brokers as the catalog's replication factor"
    checks.extend(Check("replication", "warn", note, fix) for note in plan.notes)
    _min_insync(plan, checks)


_FIT = (
    "run as many brokers as the catalog's replication_factor, or lower it in the catalog; on a single-node "
    "development cluster only, set BRIDGE_TOPIC_FIT_REPLICATION=true"
)


def _min_insync(plan: Plan, checks: list[Check]) -> None:
    """Warn when the brokers present cannot meet the catalog's ``min.insync.replicas``: every write
    with ``acks=all`` (the relay's, the DLQ's) to such a topic waits until enough brokers are back."""
    short = {name: spec for name, spec in plan.wanted.items() if spec.min_insync_replicas > plan.brokers}
    if not short:
        checks.append(
            Check("min.insync.replicas", "ok", f"the {plan.brokers} broker(s) present meet every topic's minimum")
        )
        return
    needed = max(spec.min_insync_replicas for spec in short.values())
    names = ", ".join(list(short)[:5]) + (f" (and {len(short) - 5} more)" if len(short) > 5 else "")
    checks.append(
        Check(
            "min.insync.replicas",
            "warn",
            f"the catalog's min_insync_replicas (up to {needed}) cannot be met by the {plan.brokers} broker(s) "
            f"present, so writes with acks=all (the relay, the DLQ) wait: {names}",
            "start the missing brokers (bridge status lists under-replicated partitions), or lower "
            "min_insync_replicas in the catalog",
        )
    )


def _groups(registry: Registry, prefix: str, clients: KafkaClients, checks: list[Check]) -> None:
    admin = clients.admin()
    try:
        cluster = admin.cluster(5.0)
        idle = []
        for consumer in registry.active_consumers:
            partitions = [
                TopicPartition(topic, p)
                for t in registry.subscriptions(consumer)
                if (topic := f"{prefix}{t}") in cluster.topics
                for p in cluster.topics[topic].partitions
            ]
            if partitions and not admin.committed_offsets(f"{prefix}{consumer}", partitions, 5.0):
                idle.append(consumer)
    except InfrastructureError as exc:
        checks.append(Check("consumer groups", "warn", str(exc)))
        return
    finally:
        admin.close()
    if idle:
        checks.append(
            Check(
                "consumer groups",
                "warn",
                f"no committed offsets yet for: {', '.join(idle)}",
                "start those consumers (bridge consume …, bridge sink warehouse)",
            )
        )
    else:
        checks.append(Check("consumer groups", "ok", "every consumer group has committed offsets"))
