"""``bridge status``: one view of the pipeline's health.

Outbox backlog and the age of its oldest unpublished event, quarantined rows, consumer lag per
group and topic (high watermark minus committed offset), DLQ depth per topic, inbox size per
consumer, and partitions that are under-replicated or have no leader. Tables that do not exist in
the configured schema are reported as absent, not as errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from bridge.contracts import Registry
from bridge.kafka.ports import KafkaClients
from bridge.kafka.records import TopicPartition
from bridge.postgres import classify_error, connect
from bridge.topics.naming import group_id, topic_name

__all__ = ["Status", "collect_status"]


@dataclass
class Status:
    outbox_backlog: int | None = None
    outbox_oldest_age_seconds: float | None = None
    outbox_quarantined: int | None = None
    inbox_size: dict[str, int] = field(default_factory=dict)
    consumer_lag: dict[str, dict[str, int]] = field(default_factory=dict)
    dlq_depth: dict[str, int] = field(default_factory=dict)
    brokers: int = 0
    #: ``topic/partition`` → what is wrong with its replicas.
    replication_problems: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(
    database_url: str,
    schema: str,
    clients: KafkaClients,
    topic_prefix: str,
    registry: Registry,
    *,
    timeout: float = 10.0,
) -> Status:
    status = Status()
    _database_part(status, database_url, schema)
    admin = clients.admin()
    try:
        cluster = admin.cluster(timeout)
        status.brokers = len(cluster.brokers)
        for name, topic in sorted(cluster.topics.items()):
            if not name.startswith(topic_prefix):
                continue
            for partition in topic.partitions.values():
                if partition.leader < 0:
                    status.replication_problems[f"{name}/{partition.partition}"] = "no leader"
                elif partition.under_replicated:
                    status.replication_problems[f"{name}/{partition.partition}"] = (
                        f"under-replicated: {len(partition.in_sync)} of {len(partition.replicas)} replicas in sync"
                    )
        watermarks: dict[TopicPartition, tuple[int, int]] = {}

        def high_low(tp: TopicPartition) -> tuple[int, int]:
            if tp not in watermarks:
                watermarks[tp] = admin.watermarks(tp, timeout)
            return watermarks[tp]

        for consumer in registry.active_consumers:
            partitions = [
                TopicPartition(topic_name(topic_prefix, t), p)
                for t in registry.subscriptions(consumer)
                if topic_name(topic_prefix, t) in cluster.topics
                for p in cluster.topics[topic_name(topic_prefix, t)].partitions
            ]
            if not partitions:
                continue
            group = group_id(topic_prefix, consumer)
            committed = admin.committed_offsets(group, partitions, timeout)
            per_topic: dict[str, int] = {}
            for tp in partitions:
                low, high = high_low(tp)
                position = committed.get(tp, low)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, high - position)
            status.consumer_lag[group] = per_topic
        for name, topic in sorted(cluster.topics.items()):
            if ".dlq." in name and name.startswith(topic_prefix):
                status.dlq_depth[name] = sum(
                    max(0, high - low) for low, high in (high_low(TopicPartition(name, p)) for p in topic.partitions)
                )
    finally:
        admin.close()
    return status


def _database_part(status: Status, database_url: str, schema: str) -> None:
    with connect(database_url, application_name="bridge-status") as conn:
        try:
            if _exists(conn, schema, "outbox"):
                row = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FILTER (WHERE failed_at IS NULL), "
                        "min(recorded_at) FILTER (WHERE failed_at IS NULL), "
                        "count(*) FILTER (WHERE failed_at IS NOT NULL) FROM {}.outbox"
                    ).format(sql.Identifier(schema))
                ).fetchone()
                assert row is not None
                backlog, oldest, quarantined = row
                status.outbox_backlog, status.outbox_quarantined = backlog, quarantined
                status.outbox_oldest_age_seconds = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
            if _exists(conn, schema, "inbox"):
                status.inbox_size = dict(
                    conn.execute(
                        sql.SQL("SELECT consumer, count(*) FROM {}.inbox GROUP BY consumer ORDER BY consumer").format(
                            sql.Identifier(schema)
                        )
                    ).fetchall()
                )
        except psycopg.Error as exc:
            raise classify_error(exc, "status") from None


def _exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)).fetchone()
    return row is not None and row[0] is not None
