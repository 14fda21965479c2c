"""Helpers for the cluster tests: replicated topics, a writer emitting at a steady rate, reading a
topic back with each record's broker append time, and the figures of a bounce (how long the relay's
deliveries stalled)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from bridge.outbox import EventSpec
from support.kafka import Record, first_copy_order_violations
from support.outbox import Env, seq_of


def create_replicated_topics(
    bootstrap: str, topics: Iterable[str], *, partitions: int, replication_factor: int, config: dict[str, str]
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor, config=config) for t in topics],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


@dataclass(frozen=True)
class TimedRecord(Record):
    #: When the partition leader appended the record (the topic uses LogAppendTime), ms since the epoch.
    appended_ms: int = 0

    @property
    def recorded_ms(self) -> int:
        """When the event was written to the outbox (the envelope's ``recorded_at``)."""
        assert self.value is not None
        recorded = json.loads(self.value)["recorded_at"]
        return int(datetime.fromisoformat(recorded.replace("Z", "+00:00")).timestamp() * 1000)


def read_timed(
    bootstrap: str, topics: Iterable[str], *, expect: int, timeout: float = 120, settle: float = 2.0
) -> list[TimedRecord]:
    """Every record of ``topics`` from the beginning (duplicates too), with its broker append time;
    until at least ``expect`` arrived and nothing more came for ``settle`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    names = list(topics)
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, 0) for t in names for p in metadata.topics[t].partitions])
    records: list[TimedRecord] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.2)
            if not batch:
                if len(records) >= expect and time.monotonic() - quiet_since >= settle:
                    break
                continue
            quiet_since = time.monotonic()
            for message in batch:
                if message.error():
                    raise AssertionError(f"consume error: {message.error()}")
                kind, stamp = message.timestamp()
                assert kind == TIMESTAMP_LOG_APPEND_TIME, "the cluster tests' topics use LogAppendTime"
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None
                assert partition is not None
                assert offset is not None
                raw = message.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {name: value for name, value in pairs if isinstance(value, bytes)}
                key, value = message.key(), message.value()
                assert not isinstance(key, str)
                assert not isinstance(value, str)
                records.append(TimedRecord(topic, partition, offset, key, value, headers, stamp))
    finally:
        consumer.close()
    return records


class SteadyWriter(threading.Thread):
    """Emits ``rate`` events per second of ``event_type`` for its subjects (payload ``{"seq": n}``,
    numbered per subject in commit order) in small transactions, until stopped."""

    def __init__(self, env: Env, event_type: str, subjects: list[str], *, rate: float, batch: int = 10) -> None:
        super().__init__(daemon=True)
        self.env, self.event_type, self.subjects, self.rate, self.batch = env, event_type, subjects, rate, batch
        self.committed: list[str] = []
        self.maybe: list[str] = []  # a commit that raised may or may not have happened
        self.counters = dict.fromkeys(subjects, 0)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:
            self.error = exc
            raise

    def _write(self) -> None:
        outbox = self.env.outbox()
        interval = self.batch / self.rate
        turn = 0
        next_at = time.monotonic()
        with psycopg.connect(self.env.database_url) as conn:
            while not self.stop.is_set():
                specs = []
                for _ in range(self.batch):
                    subject = self.subjects[turn % len(self.subjects)]
                    turn += 1
                    self.counters[subject] += 1
                    specs.append(EventSpec(self.event_type, 1, subject, "t", {"seq": self.counters[subject]}))
                ids = []
                try:
                    ids = [e.event_id for e in outbox.emit_batch(conn, specs)]
                    conn.commit()
                    self.committed += ids
                except psycopg.OperationalError:
                    self.maybe += ids
                    raise
                next_at += interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def check_topic_delivery(writer: SteadyWriter, records: list[TimedRecord]) -> tuple[int, int, int]:
    """Every committed event is on the topic (none lost), nothing unknown is, and per subject the
    first copies come in commit order. Returns (lost, reordered, duplicates) — lost and reordered
    are asserted to be 0 by the caller, so they show in its figures."""
    assert writer.error is None, f"the writer crashed: {writer.error!r}"
    seen = [r.event_id for r in records]
    unique = set(seen)
    lost = len(set(writer.committed) - unique)
    unknown = unique - set(writer.committed) - set(writer.maybe)
    assert not unknown, f"{len(unknown)} events on the topic that no writer committed"
    reordered = len(first_copy_order_violations(list(records), seq_of))
    return lost, reordered, len(seen) - len(unique)


@dataclass
class Bounce:
    """One disturbance of the cluster: which nodes were killed, and when (wall clock, seconds)."""

    name: str
    killed: list[int] = field(default_factory=list)
    killed_at: float = 0.0
    restarted_at: float = 0.0
    in_sync_at: float = 0.0


def stall_figures(records: list[TimedRecord], start: float, end: float) -> dict[str, float]:
    """How the relay's deliveries stalled between ``start`` and ``end`` (wall clock seconds), from the
    first copy of each event on the topic:

    - ``global_gap_s``: the longest time no partition appended anything (no delivery at all);
    - ``partition_gap_s``: the longest time one partition appended nothing (the partitions whose
      leader was killed wait for a new one);
    - ``max_latency_s``: the longest an event emitted in the window took from the outbox to the
      broker (``recorded_at`` to append time).
    """
    first: dict[str, TimedRecord] = {}
    for record in sorted(records, key=lambda r: (r.appended_ms, r.offset)):
        first.setdefault(record.event_id, record)
    lo, hi = int(start * 1000), int(end * 1000)
    inside = [r for r in first.values() if lo <= r.appended_ms <= hi]
    stamps = sorted([lo, *(r.appended_ms for r in inside), hi])
    per_partition: dict[int, list[int]] = {r.partition: [lo, hi] for r in first.values()}
    for record in inside:
        per_partition[record.partition].append(record.appended_ms)
    partition_gap = max((_longest_gap(sorted(v)) for v in per_partition.values()), default=hi - lo)
    latencies = [r.appended_ms - r.recorded_ms for r in first.values() if lo <= r.recorded_ms <= hi]
    return {
        "global_gap_s": round(_longest_gap(stamps) / 1000, 2),
        "partition_gap_s": round(partition_gap / 1000, 2),
        "max_latency_s": round(max(latencies, default=0) / 1000, 2),
        "events_in_window": len(inside),
    }


def _longest_gap(stamps: list[int]) -> int:
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0)


def scrape(port: int, name: str) -> float:
    """The sum of a metric's samples (every label set) served by a bridge process on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def outbox_counts(env: Env) -> tuple[int, int]:
    """(waiting, quarantined) rows of the test's outbox."""
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE failed_at IS NULL), count(*) FILTER (WHERE failed_at IS NOT NULL) "
                "FROM {}.outbox"
            ).format(sql.Identifier(env.schema))
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
