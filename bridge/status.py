"""``bridge status``: one view of the pipeline's health.

Outbox backlog and the age of its oldest unpublished event, quarantined rows, consumer lag per
group and topic (high watermark minus committed offset), DLQ depth per topic, inbox size per
consumer. Tables that do not exist in the configured schema are reported as absent, not as errors.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from bridge.contracts import CONSUMER_NAMES, Registry
from bridge.dlq import dlq_depths
from bridge.topics import group_id, topic_name

__all__ = ["Status", "collect_status"]


@dataclass
class Status:
    outbox_backlog: int | None = None
    outbox_oldest_age_seconds: float | None = None
    outbox_quarantined: int | None = None
    inbox_size: dict[str, int] = field(default_factory=dict)
    consumer_lag: dict[str, dict[str, int]] = field(default_factory=dict)
    dlq_depth: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(database_url: str, schema: str, kafka_config: dict[str, Any], topic_prefix: str,
                   registry: Registry) -> Status:
    status = Status()
    with psycopg.connect(database_url, autocommit=True) as conn:
        if _exists(conn, schema, "outbox"):
            backlog, oldest, quarantined = conn.execute(sql.SQL(
                "SELECT count(*) FILTER (WHERE failed_at IS NULL), min(recorded_at) FILTER (WHERE failed_at IS NULL), "
                "count(*) FILTER (WHERE failed_at IS NOT NULL) FROM {}.outbox"
            ).format(sql.Identifier(schema))).fetchone()
            status.outbox_backlog, status.outbox_quarantined = backlog, quarantined
            status.outbox_oldest_age_seconds = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        if _exists(conn, schema, "inbox"):
            status.inbox_size = dict(conn.execute(sql.SQL(
                "SELECT consumer, count(*) FROM {}.inbox GROUP BY consumer ORDER BY consumer"
            ).format(sql.Identifier(schema))).fetchall())
    status.consumer_lag = _lag(kafka_config, topic_prefix, registry)
    status.dlq_depth = {t: d for t, d in dlq_depths(kafka_config).items() if t.startswith(topic_prefix)}
    return status


def _exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()[0] is not None


def _lag(kafka_config: dict[str, Any], prefix: str, registry: Registry, timeout: float = 10.0) -> dict[str, dict[str, int]]:
    probe = Consumer({**kafka_config, "group.id": f"bridge-status-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        topics = probe.list_topics(timeout=timeout).topics
        watermarks: dict[tuple[str, int], int] = {}
        lag: dict[str, dict[str, int]] = {}
        for consumer in sorted(CONSUMER_NAMES):
            partitions = [
                TopicPartition(topic_name(prefix, t), p)
                for t in registry.subscriptions(consumer)
                if topic_name(prefix, t) in topics
                for p in topics[topic_name(prefix, t)].partitions
            ]
            if not partitions:
                continue
            group = Consumer({**kafka_config, "group.id": group_id(prefix, consumer), "enable.auto.commit": False})
            try:
                committed = group.committed(partitions, timeout=timeout)
            finally:
                group.close()
            per_topic: dict[str, int] = {}
            for tp in committed:
                key = (tp.topic, tp.partition)
                if key not in watermarks:
                    low, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
                    watermarks[key] = (low, high)
                low, high = watermarks[key]
                position = tp.offset if tp.offset >= 0 else low
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, high - position)
            lag[group_id(prefix, consumer)] = per_topic
        return lag
    finally:
        probe.close()
