"""Test helpers for reading topics back and checking the wire contract."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def event_id(self) -> str:
        return self.headers["event_id"].decode()


def create_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = list(topics)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1, config=config or {}) for t in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


def read_all(
    bootstrap: str, topics: Iterable[str], *, expect: int, timeout: float = 60, settle: float = 1.0
) -> list[Record]:
    """Read every record of ``topics`` from the beginning until at least ``expect`` arrived and
    nothing more came for ``settle`` seconds (so duplicates are seen too)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    names = list(topics)
    metadata = consumer.list_topics(timeout=10)
    assignment = [TopicPartition(t, p, 0) for t in names for p in metadata.topics[t].partitions]
    consumer.assign(assignment)
    records: list[Record] = []
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
                # A message without error always has its topic, partition and offset.
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None
                assert partition is not None
                assert offset is not None
                records.append(
                    Record(
                        topic,
                        partition,
                        offset,
                        message.key(),
                        message.value(),
                        dict(cast(list[tuple[str, bytes]], message.headers() or [])),
                    )
                )
    finally:
        consumer.close()
    return records


def first_copy_order_violations(records: list[Record], seq_of) -> list[str]:
    """Per subject (key), the first copy of each event must come in sequence order: 1, 2, 3 …
    Duplicates may repeat a suffix; a missing or out-of-order first copy is a violation."""
    by_key: dict[bytes | None, list[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        by_key[record.key].append(record)
    problems = []
    for key, items in by_key.items():
        seen: set[int] = set()
        firsts = []
        for record in items:
            seq = seq_of(record)
            if seq not in seen:
                seen.add(seq)
                firsts.append(seq)
        if firsts != sorted(firsts):
            at = next(i for i in range(1, len(firsts)) if firsts[i] < firsts[i - 1])
            problems.append(f"{key!r}: first copies out of order at position {at}: …{firsts[max(0, at - 5) : at + 5]}…")
    return problems


def murmur2(data: bytes) -> int:
    """Kafka's Java ``Utils.murmur2``."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (
            (data[i4] & 0xFF)
            + ((data[i4 + 1] & 0xFF) << 8)
            + ((data[i4 + 2] & 0xFF) << 16)
            + ((data[i4 + 3] & 0xFF) << 24)
        )
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    index = length & ~3
    if extra == 3:
        h ^= (data[index + 2] & 0xFF) << 16
    if extra >= 2:
        h ^= (data[index + 1] & 0xFF) << 8
    if extra >= 1:
        h ^= data[index] & 0xFF
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java default partitioner picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
