"""Bridge-owned Kafka value types: what the ports take and give. No field is ever ``None``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.errors import KafkaError

__all__ = [
    "BrokerInfo",
    "ClusterInfo",
    "DeliveryCallback",
    "Headers",
    "NewTopic",
    "PartitionInfo",
    "Record",
    "TopicInfo",
    "TopicPartition",
    "header_value",
]

#: Record headers, in order (a name may repeat, as Kafka allows).
Headers = Sequence[tuple[str, bytes]]

#: Called once per produced record, from ``Producer.poll``/``flush``: ``None`` when the broker
#: acknowledged it, else the error.
DeliveryCallback = Callable[[KafkaError | None], None]


# TopicPartition and Record are named tuples, not frozen dataclasses: one of each is made per
# record consumed, and a frozen dataclass costs five times as much to build (1.1 µs against 0.2,
# measured for bench/consume_inbox.py). They stay immutable, hashable and ordered.


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


class Record(NamedTuple):
    """A record read from a topic. A missing key or value reads as ``b""``."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers = ()
    #: The record's timestamp in milliseconds since the epoch (0 when the broker gave none).
    timestamp_ms: int = 0

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def source(self) -> str:
        """``topic/partition/offset``: where the record was read, for error messages."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        return header_value(self.headers, name)


def header_value(headers: Headers, name: str) -> bytes | None:
    """The last value of header ``name`` in ``headers``, or ``None``."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    #: Broker id of the leader, -1 when the partition has none (its replicas are all down).
    leader: int
    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]

    @property
    def under_replicated(self) -> bool:
        return len(self.in_sync) < len(self.replicas)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: dict[int, PartitionInfo] = field(default_factory=dict)

    @property
    def replication_factor(self) -> int:
        return min((len(p.replicas) for p in self.partitions.values()), default=0)


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What the cluster looks like now: its brokers and its topics (internal ones left out)."""

    brokers: tuple[BrokerInfo, ...]
    topics: dict[str, TopicInfo]


@dataclass(frozen=True, slots=True)
class NewTopic:
    """A topic to create."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
