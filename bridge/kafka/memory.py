"""An in-memory Kafka for unit tests of engine logic: topics and partitions, consumer groups with
range assignment and committed offsets, pause and seek, and failures injected on demand.

It keeps the ports' contracts (``tests/conformance`` runs the same suite against it and a real
broker) and Kafka's partitioning (murmur2 of the key, as a Java client does), but nothing of
Kafka's durability: it serves tests of *logic*. Integration tests use a real broker.

    broker = MemoryBroker()
    broker.create_topic("sguild.credit.released", partitions=3)
    clients = broker.clients()                      # a KafkaClients, like ConfluentClients
    broker.fail_deliveries(2)                       # the next two deliveries fail (retriable)
    broker.available = False                        # nothing is acknowledged until it comes back
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.clock import Clock, SystemClock
from bridge.errors import BrokerUnavailableError, KafkaError, RecordTooLargeError, TopicNotFoundError
from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole, RebalanceListener
from bridge.kafka.records import (
    BrokerInfo,
    ClusterInfo,
    DeliveryCallback,
    Headers,
    NewTopic,
    PartitionInfo,
    Record,
    TopicInfo,
    TopicPartition,
)

__all__ = ["MemoryBroker", "murmur2", "partition_for"]

#: Kafka's default broker limit (message.max.bytes), the largest record batch a topic accepts.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def murmur2(data: bytes) -> int:
    """Kafka's Java ``Utils.murmur2`` (what ``murmur2_random`` computes for a keyed record)."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    index = length & ~3
    if extra == 3:
        h ^= data[index + 2] << 16
    if extra >= 2:
        h ^= data[index + 1] << 8
    if extra >= 1:
        h ^= data[index]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a Java client (and ``murmur2_random``) picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class _Topic:
    logs: list[list[Record]]
    config: dict[str, str]
    #: Records deleted from the front of each partition (for low watermarks).
    low: list[int]


@dataclass
class _Member:
    consumer: MemoryConsumer
    assigned: set[TopicPartition] = field(default_factory=set)


@dataclass
class _Group:
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)


class MemoryBroker:
    """One in-memory cluster. Thread-safe; every client of one broker sees the same data."""

    def __init__(self, *, clock: Clock | None = None, brokers: int = 1) -> None:
        self.clock = clock or SystemClock()
        self.brokers = brokers
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._failures: deque[KafkaError] = deque()
        #: False: no request is answered and no record acknowledged until it is True again.
        self.available = True

    # --- set-up and inspection ----------------------------------------------------------------

    def clients(self) -> MemoryClients:
        return MemoryClients(self)

    def create_topic(self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None) -> None:
        with self._lock:
            if name not in self._topics:
                self._topics[name] = _Topic([[] for _ in range(partitions)], dict(config or {}), [0] * partitions)

    def topic_names(self) -> list[str]:
        with self._lock:
            return sorted(self._topics)

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition by partition, in offset order."""
        with self._lock:
            return [r for log in self._topics[topic].logs for r in log]

    def fail_deliveries(self, count: int = 1, error: KafkaError | None = None) -> None:
        """The next ``count`` deliveries fail with ``error`` (default: a retriable timeout)."""
        with self._lock:
            for _ in range(count):
                self._failures.append(error or BrokerUnavailableError("injected failure", code="_MSG_TIMED_OUT"))

    def committed(self, group: str) -> dict[TopicPartition, int]:
        with self._lock:
            return dict(self._groups.get(group, _Group()).committed)

    # --- what the clients call ----------------------------------------------------------------

    def _check(self) -> None:
        if not self.available:
            raise BrokerUnavailableError("the in-memory broker is unavailable", code="_TRANSPORT")

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise TopicNotFoundError(f"topic {name} does not exist", code="UNKNOWN_TOPIC_OR_PART")
        return topic

    def _append(self, topic: str, key: bytes, value: bytes, headers: Headers) -> KafkaError | None:
        """Deliver one record; the error if it fails."""
        if self._failures:
            return self._failures.popleft()
        stored = self._topics.get(topic)
        if stored is None:
            return TopicNotFoundError(f"topic {topic} does not exist", code="UNKNOWN_TOPIC_OR_PART")
        limit = int(stored.config.get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES))
        if _size(key, value, headers) > limit:
            return RecordTooLargeError(
                f"record larger than {topic}'s max.message.bytes {limit}", code="MSG_SIZE_TOO_LARGE"
            )
        partition = partition_for(key, len(stored.logs)) if key else 0
        log = stored.logs[partition]
        offset = stored.low[partition] + len(log)
        now_ms = int(time.time() * 1000)  # a record's timestamp is wall-clock epoch milliseconds
        log.append(Record(topic, partition, offset, key, value, tuple(headers), now_ms))
        self._arrived.notify_all()
        return None

    def _partition_of(self, topic: str, key: bytes) -> int:
        stored = self._topics.get(topic)
        return partition_for(key, len(stored.logs)) if stored is not None and key else 0

    def _fetch(self, tp: TopicPartition, position: int, limit: int) -> list[Record]:
        stored = self._topics.get(tp.topic)
        if stored is None or tp.partition >= len(stored.logs):
            return []
        start = max(0, position - stored.low[tp.partition])
        return stored.logs[tp.partition][start : start + limit]

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        stored = self._topic(tp.topic)
        low = stored.low[tp.partition]
        return low, low + len(stored.logs[tp.partition])

    def _join(self, group_id: str, member_id: str, consumer: MemoryConsumer) -> None:
        group = self._groups.setdefault(group_id, _Group())
        group.members[member_id] = _Member(consumer)
        self._rebalance(group)

    def _leave(self, group_id: str, member_id: str) -> None:
        group = self._groups.get(group_id)
        if group is not None and group.members.pop(member_id, None) is not None:
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Range assignment over the members, sorted by id; each member learns its changes at its
        next consume (as librdkafka calls rebalance callbacks from poll)."""
        members = sorted(group.members)
        wanted: dict[str, set[TopicPartition]] = {m: set() for m in members}
        topics = sorted({t for m in group.members.values() for t in m.consumer.subscription})
        for topic in topics:
            stored = self._topics.get(topic)
            if stored is None:
                continue
            subscribers = [m for m in members if topic in group.members[m].consumer.subscription]
            count = len(stored.logs)
            per, extra = divmod(count, len(subscribers))
            start = 0
            for index, member in enumerate(subscribers):
                take = per + (1 if index < extra else 0)
                wanted[member] |= {TopicPartition(topic, p) for p in range(start, start + take)}
                start += take
        for member_id, joined in group.members.items():
            joined.consumer._pending_assignment = wanted[member_id]
        self._arrived.notify_all()


def _size(key: bytes, value: bytes, headers: Headers) -> int:
    return len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)


class MemoryClients(KafkaClients):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer:
        return MemoryProducer(self.broker, role, max_message_bytes or 1_000_000)

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer:
        return MemoryConsumer(self.broker, group_id, commit_in_background)

    def admin(self) -> Admin:
        return MemoryAdmin(self.broker)


class MemoryProducer(Producer):
    def __init__(self, broker: MemoryBroker, role: ProducerRole, max_message_bytes: int) -> None:
        self._broker = broker
        self._role = role
        self._max_message_bytes = max_message_bytes
        self._queue: deque[tuple[str, bytes, bytes, Headers, DeliveryCallback, float]] = deque()
        #: Delivery timeout of the DLQ and replay roles; the relay's never expires.
        self.timeout = 30.0 if role != "relay" else None

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers, on_delivery: DeliveryCallback) -> bool:
        if _size(key, value, headers) > self._max_message_bytes:
            raise RecordTooLargeError(
                f"produce to {topic}: record larger than message.max.bytes {self._max_message_bytes}",
                code="MSG_SIZE_TOO_LARGE",
            )
        self._queue.append((topic, key, value, tuple(headers), on_delivery, self._broker.clock.monotonic()))
        return True

    def poll(self, timeout: float) -> int:
        return self._deliver()

    def _deliver(self) -> int:
        served = 0
        broker = self._broker
        # A failed record fails the records queued behind it for its partition too, as a failed
        # batch does in librdkafka: an idempotent producer never lets a later record through alone.
        failed: dict[tuple[str, int], KafkaError] = {}
        while self._queue:
            topic, key, value, headers, callback, queued_at = self._queue[0]
            with broker._lock:
                where = (topic, broker._partition_of(topic, key))
                if where in failed:
                    error: KafkaError | None = failed[where]
                elif not broker.available:
                    expired = self.timeout is not None and broker.clock.monotonic() - queued_at >= self.timeout
                    if not expired:
                        return served
                    error = BrokerUnavailableError("message timed out", code="_MSG_TIMED_OUT")
                else:
                    error = broker._append(topic, key, value, headers)
                if error is not None:
                    failed.setdefault(where, error)
            self._queue.popleft()
            callback(error)
            served += 1
        return served

    def flush(self, timeout: float) -> int:
        self._deliver()
        if self._queue:
            self._broker.clock.wait(timeout)
            self._deliver()
        return len(self._queue)

    def outstanding(self) -> int:
        return len(self._queue)

    def topic_exists(self, topic: str, timeout: float) -> bool:
        with self._broker._lock:
            self._broker._check()
            return topic in self._broker._topics

    def close(self, timeout: float) -> int:
        return self.flush(timeout)


class MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, group_id: str, commit_in_background: bool) -> None:
        self._broker = broker
        self._group_id = group_id
        self._member_id = f"member-{uuid.uuid4().hex[:8]}"
        self._background = commit_in_background
        self.subscription: tuple[str, ...] = ()
        self._listener: RebalanceListener | None = None
        self._assigned: set[TopicPartition] = set()
        self._pending_assignment: set[TopicPartition] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._stored: dict[TopicPartition, int] = {}
        self._closed = False
        self._joined = False

    # --- membership ---------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        with self._broker._lock:
            self.subscription = tuple(topics)
            self._listener = listener
            self._joined = True
            self._broker._join(self._group_id, self._member_id, self)

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._broker._lock:
            self._assigned = set(offsets)
            self._positions = dict(offsets)

    def crash(self) -> None:
        """Vanish without committing (a SIGKILL): the group rebalances, stored offsets are lost."""
        with self._broker._lock:
            self._closed = True
            if self._joined:
                self._broker._leave(self._group_id, self._member_id)

    def _apply_rebalance(self) -> None:
        pending = self._pending_assignment
        if pending is None or self._listener is None:
            return
        self._pending_assignment = None
        revoked = sorted(self._assigned - pending)
        added = sorted(pending - self._assigned)
        if revoked:
            self._listener.on_revoke(revoked)
            for tp in revoked:
                self._positions.pop(tp, None)
                self._paused.discard(tp)
                self._stored.pop(tp, None)
        self._assigned = set(pending)
        if added:
            group = self._broker._groups[self._group_id]
            for tp in added:
                low, _high = self._broker._watermarks(tp)
                self._positions[tp] = max(low, group.committed.get(tp, low))
            self._listener.on_assign(added)

    # --- reading ------------------------------------------------------------------------------

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        broker = self._broker
        with broker._lock:
            if not broker.available:
                # librdkafka's consume() does not raise on an outage: it returns nothing and retries.
                self._wait(timeout)
                return []
            self._apply_rebalance()
            if self._background:
                self._commit_stored()
            records = self._take(max_records)
            if not records and timeout > 0:
                self._wait(timeout)
                self._apply_rebalance()
                records = self._take(max_records)
            return records

    def _wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        broker = self._broker
        if isinstance(broker.clock, SystemClock):
            broker._arrived.wait(timeout)
        else:
            broker.clock.wait(timeout)

    def _take(self, limit: int) -> list[Record]:
        taken: list[Record] = []
        for tp in sorted(self._assigned - self._paused):
            if len(taken) >= limit:
                break
            position = self._positions.get(tp)
            if position is None:
                continue
            fetched = self._broker._fetch(tp, position, limit - len(taken))
            if fetched:
                taken += fetched
                self._positions[tp] = fetched[-1].offset + 1
        return taken

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        with self._broker._lock:
            self._paused |= set(partitions) & self._assigned

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        with self._broker._lock:
            self._paused -= set(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with self._broker._lock:
            if partition in self._assigned:
                self._positions[partition] = offset

    def assignment(self) -> list[TopicPartition]:
        with self._broker._lock:
            return sorted(self._assigned)

    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        with self._broker._lock:
            return {tp: self._positions[tp] for tp in partitions if tp in self._positions}

    # --- offsets ------------------------------------------------------------------------------

    def store_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._broker._lock:
            for tp, offset in offsets.items():
                if tp not in self._assigned:
                    raise KafkaError(f"store offsets: {tp} is not assigned to this consumer", code="_STATE")
                self._stored[tp] = offset

    def _commit_stored(self) -> None:
        group = self._broker._groups.setdefault(self._group_id, _Group())
        for tp, offset in self._stored.items():
            group.committed[tp] = offset

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        with self._broker._lock:
            self._broker._check()
            if offsets is None:
                self._commit_stored()
                return
            group = self._broker._groups.setdefault(self._group_id, _Group())
            group.committed.update(offsets)

    def committed(self, partitions: Iterable[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        with self._broker._lock:
            self._broker._check()
            group = self._broker._groups.get(self._group_id, _Group())
            return {tp: group.committed[tp] for tp in partitions if tp in group.committed}

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        with self._broker._lock:
            self._broker._check()
            return self._broker._watermarks(partition)

    def close(self) -> None:
        with self._broker._lock:
            if self._closed:
                return
            self._closed = True
            self._commit_stored()
            if self._joined:
                self._broker._leave(self._group_id, self._member_id)


class MemoryAdmin(Admin):
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    def cluster(self, timeout: float) -> ClusterInfo:
        broker = self._broker
        with broker._lock:
            broker._check()
            ids = tuple(range(1, broker.brokers + 1))
            topics = {
                name: TopicInfo(
                    name,
                    {p: PartitionInfo(p, ids[p % len(ids)], ids, ids) for p in range(len(stored.logs))},
                )
                for name, stored in broker._topics.items()
            }
            return ClusterInfo(tuple(BrokerInfo(i, "memory", 0) for i in ids), topics)

    def create_topics(self, topics: Sequence[NewTopic], timeout: float) -> dict[str, str | None]:
        outcomes: dict[str, str | None] = {}
        with self._broker._lock:
            self._broker._check()
            for topic in topics:
                if topic.name in self._broker._topics:
                    outcomes[topic.name] = "TOPIC_ALREADY_EXISTS"
                elif topic.replication_factor > self._broker.brokers:
                    outcomes[topic.name] = "INVALID_REPLICATION_FACTOR"
                else:
                    self._broker.create_topic(topic.name, topic.partitions, topic.config)
                    outcomes[topic.name] = None
        return outcomes

    def create_partitions(self, partitions: Mapping[str, int], timeout: float) -> dict[str, str | None]:
        outcomes: dict[str, str | None] = {}
        with self._broker._lock:
            self._broker._check()
            for name, count in partitions.items():
                stored = self._broker._topics.get(name)
                if stored is None:
                    outcomes[name] = "UNKNOWN_TOPIC_OR_PART"
                elif count <= len(stored.logs):
                    outcomes[name] = "INVALID_PARTITIONS"
                else:
                    grow = count - len(stored.logs)
                    stored.logs += [[] for _ in range(grow)]
                    stored.low += [0] * grow
                    outcomes[name] = None
                    for group in self._broker._groups.values():
                        if any(name in m.consumer.subscription for m in group.members.values()):
                            self._broker._rebalance(group)
        return outcomes

    def topic_configs(self, topics: Sequence[str], timeout: float) -> dict[str, dict[str, str]]:
        with self._broker._lock:
            self._broker._check()
            return {name: dict(self._broker._topic(name).config) for name in topics}

    def set_topic_configs(self, configs: Mapping[str, Mapping[str, str]], timeout: float) -> dict[str, str | None]:
        outcomes: dict[str, str | None] = {}
        with self._broker._lock:
            self._broker._check()
            for name, values in configs.items():
                stored = self._broker._topics.get(name)
                if stored is None:
                    outcomes[name] = "UNKNOWN_TOPIC_OR_PART"
                else:
                    stored.config.update(values)
                    outcomes[name] = None
        return outcomes

    def committed_offsets(
        self, group: str, partitions: Sequence[TopicPartition], timeout: float
    ) -> dict[TopicPartition, int]:
        with self._broker._lock:
            self._broker._check()
            committed = self._broker._groups.get(group, _Group()).committed
            return {tp: committed[tp] for tp in partitions if tp in committed}

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        with self._broker._lock:
            self._broker._check()
            return self._broker._watermarks(partition)

    def close(self) -> None:
        pass
