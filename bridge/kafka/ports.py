"""What bridge's engines need from Kafka, as small protocols.

Two implementations: :mod:`bridge.kafka.confluent` (librdkafka, the real thing) and
:mod:`bridge.kafka.memory` (an in-memory broker for unit tests of engine logic). Both pass one
conformance suite (``tests/conformance``), so an engine that works on one works on the other.

The contracts below are what the engines rely on; an implementation that breaks one is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

from bridge.kafka.records import ClusterInfo, DeliveryCallback, Headers, NewTopic, Record, TopicPartition

__all__ = ["Admin", "Consumer", "KafkaClients", "Producer", "ProducerRole", "RebalanceListener"]

#: Which safety profile a producer gets (see :meth:`KafkaClients.producer`).
ProducerRole = Literal["relay", "dlq", "replay"]


class Producer(Protocol):
    """Sends records and reports, for each one, whether the broker acknowledged it.

    - ``produce`` enqueues; it never blocks. A record the client refuses at once (too large,
      unknown topic) raises the matching :class:`~bridge.errors.KafkaError`; a full local queue
      returns ``False`` (serve delivery reports with ``poll`` and try again).
    - Every enqueued record gets exactly one delivery callback, from ``poll`` or ``flush`` on the
      calling thread: ``None`` when acknowledged, else the error.
    - Records of one key to one topic are delivered, and reported, in the order produced.
    """

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers, on_delivery: DeliveryCallback) -> bool:
        """Enqueue one record; ``False`` when the local queue is full (nothing was enqueued)."""
        ...

    def poll(self, timeout: float) -> int:
        """Serve delivery callbacks, waiting up to ``timeout`` seconds for one; return how many ran."""
        ...

    def flush(self, timeout: float) -> int:
        """Serve callbacks until nothing is outstanding or ``timeout`` passes; return what remains."""
        ...

    def outstanding(self) -> int:
        """Records enqueued whose delivery has not been reported yet."""
        ...

    def topic_exists(self, topic: str, timeout: float) -> bool:
        """Whether the topic exists; raises :class:`~bridge.errors.BrokerUnavailableError` when no
        broker can say."""
        ...

    def close(self, timeout: float) -> int:
        """Flush for up to ``timeout`` seconds and release the client; return what was left."""
        ...


class RebalanceListener(Protocol):
    """Told when partitions are assigned to or taken from a consumer. Called from ``consume``."""

    def on_assign(self, partitions: Sequence[TopicPartition]) -> None: ...

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """The partitions go to another member; offsets stored so far are still committable here."""
        ...


class Consumer(Protocol):
    """A member of a consumer group (or a standalone reader after ``assign``).

    - Offsets are never stored automatically: the engine stores the next offset to read with
      ``store_offsets`` once a record's effects are durable; stored offsets are committed in the
      background, on ``commit``, on revoke (by the engine) and on ``close``.
    - ``consume`` waits up to ``timeout`` for the *first* record, then returns whatever else is
      already buffered, without waiting for more (latency over batch fill).
    - A paused partition returns nothing until resumed; ``seek`` moves where it will read next.
    """

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read these partitions from these offsets, outside any group management."""
        ...

    def consume(self, max_records: int, timeout: float) -> list[Record]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset each partition will return (partitions with no position are left out)."""
        ...

    def store_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Mark ``offset`` (the next one to read) as committable for each partition."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit synchronously: the given offsets, or everything stored. Nothing stored is no error."""
        ...

    def committed(self, partitions: Iterable[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        """The group's committed offsets (partitions without one are left out)."""
        ...

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        """(low, high): the first offset held and the offset the next record will get."""
        ...

    def close(self) -> None:
        """Commit what is stored, leave the group, release the client. Idempotent."""
        ...


class Admin(Protocol):
    """Cluster metadata and topic management."""

    def cluster(self, timeout: float) -> ClusterInfo:
        """Brokers and topics; raises :class:`~bridge.errors.BrokerUnavailableError` when none answers."""
        ...

    def create_topics(self, topics: Sequence[NewTopic], timeout: float) -> dict[str, str | None]:
        """Create topics; per topic, ``None`` or the error's name (``TOPIC_ALREADY_EXISTS``, …)."""
        ...

    def create_partitions(self, partitions: Mapping[str, int], timeout: float) -> dict[str, str | None]:
        """Grow topics to these partition counts; per topic, ``None`` or the error's name."""
        ...

    def topic_configs(self, topics: Sequence[str], timeout: float) -> dict[str, dict[str, str]]: ...

    def set_topic_configs(self, configs: Mapping[str, Mapping[str, str]], timeout: float) -> dict[str, str | None]: ...

    def committed_offsets(
        self, group: str, partitions: Sequence[TopicPartition], timeout: float
    ) -> dict[TopicPartition, int]:
        """A group's committed offsets (partitions without one are left out)."""
        ...

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]: ...

    def close(self) -> None: ...


class KafkaClients(Protocol):
    """Builds every Kafka client bridge uses, with its safety settings applied in one place.

    Producer roles: ``relay`` (idempotent, ``acks=all``, Java-compatible partitioner, no message
    timeout: a finite one can fail an earlier record while later ones succeed), ``dlq`` and
    ``replay`` (the same, with a finite timeout so a failure surfaces). Consumers never store
    offsets on their own.
    """

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer: ...

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer: ...

    def admin(self) -> Admin: ...
