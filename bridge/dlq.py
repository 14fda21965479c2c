"""Dead-letter topics: publishing poison records, and listing, showing and replaying them.

A DLQ record keeps the original key and value bytes unchanged, and the original headers plus
(DESIGN.md) ``dlq.original.topic``, ``dlq.original.partition``, ``dlq.original.offset``,
``dlq.consumer``, ``dlq.error.class``, ``dlq.error.message``, ``dlq.attempts``, ``dlq.failed_at``,
and Spring Kafka's ``kafka_dlt-original-topic``, ``-original-partition`` (4-byte big-endian int),
``-original-offset`` (8-byte big-endian long), ``-exception-fqcn`` and ``-exception-message``, so
existing tools can read them.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bridge.envelope import format_timestamp, parse_timestamp
from bridge.errors import BridgeError
from bridge.topics import dlq_topic_name

__all__ = [
    "DLQ_HEADERS",
    "DeadLetter",
    "DlqPublishError",
    "DlqPublisher",
    "DlqRecord",
    "ReplayReport",
    "dlq_depths",
    "read_dlq",
    "replay",
]

#: Headers bridge adds to a dead-lettered record (and strips again on replay).
DLQ_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.consumer",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.attempts",
    "dlq.failed_at",
    "kafka_dlt-original-topic",
    "kafka_dlt-original-partition",
    "kafka_dlt-original-offset",
    "kafka_dlt-exception-fqcn",
    "kafka_dlt-exception-message",
)
_MAX_ERROR_MESSAGE = 4000


class DlqPublishError(BridgeError):
    """Publishing to a DLQ topic failed: the source offset must not be committed."""


@dataclass(frozen=True)
class DeadLetter:
    """A poison record on its way to the DLQ."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    error_class: str
    error_message: str
    attempts: int

    def dlq_headers(self, consumer: str, failed_at: datetime | None = None) -> list[tuple[str, bytes]]:
        failed_at = failed_at or datetime.now(UTC)
        message = self.error_message[:_MAX_ERROR_MESSAGE]
        original = [(k, v) for k, v in self.headers if k not in DLQ_HEADERS]
        return original + [
            ("dlq.original.topic", self.topic.encode()),
            ("dlq.original.partition", str(self.partition).encode()),
            ("dlq.original.offset", str(self.offset).encode()),
            ("dlq.consumer", consumer.encode()),
            ("dlq.error.class", self.error_class.encode()),
            ("dlq.error.message", message.encode()),
            ("dlq.attempts", str(self.attempts).encode()),
            ("dlq.failed_at", format_timestamp(failed_at).encode()),
            ("kafka_dlt-original-topic", self.topic.encode()),
            ("kafka_dlt-original-partition", struct.pack(">i", self.partition)),
            ("kafka_dlt-original-offset", struct.pack(">q", self.offset)),
            ("kafka_dlt-exception-fqcn", self.error_class.encode()),
            ("kafka_dlt-exception-message", message.encode()),
        ]


class DlqPublisher:
    """Publishes dead letters and waits for Kafka's acknowledgement of every one."""

    def __init__(self, kafka_config: dict[str, Any], consumer: str, *, timeout: float = 30.0) -> None:
        self.consumer = consumer
        self.timeout = timeout
        config = dict(kafka_config)
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                # Finite here: a DLQ publish that cannot complete must surface, so the source
                # offset stays uncommitted and the record is retried.
                "message.timeout.ms": int(timeout * 1000),
                "linger.ms": 0,
                "client.id": f"bridge-dlq-{consumer}",
            }
        )
        self._producer = Producer(config)

    def publish(self, letters: Iterable[DeadLetter]) -> None:
        """Publish and wait; raise :class:`DlqPublishError` unless every record was acknowledged."""
        errors: list[str] = []
        pending = 0

        def delivered(err: KafkaError | None, msg: Any) -> None:
            nonlocal pending
            pending -= 1
            if err is not None:
                errors.append(f"{msg.topic()}: {err.str()}")

        now = datetime.now(UTC)
        for letter in letters:
            topic = dlq_topic_name(letter.topic, self.consumer)
            try:
                self._producer.produce(
                    topic, key=letter.key, value=letter.value, headers=letter.dlq_headers(self.consumer, now),
                    on_delivery=delivered,
                )
            except (KafkaException, BufferError) as exc:
                raise DlqPublishError(f"cannot publish to {topic}: {exc}") from exc
            pending += 1
        deadline = time.monotonic() + self.timeout + 5
        while pending > 0 and time.monotonic() < deadline:
            self._producer.poll(0.1)
        if pending > 0:
            errors.append(f"{pending} record(s) not acknowledged within {self.timeout:.0f} s")
        if errors:
            raise DlqPublishError("DLQ publish failed: " + "; ".join(errors))

    def close(self) -> None:
        self._producer.flush(self.timeout)


# --- operating the DLQ -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqRecord:
    """A record read back from a DLQ topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.decode("utf-8", errors="replace") if value is not None else None

    @property
    def event_id(self) -> str | None:
        return self.header("event_id")

    @property
    def event_type(self) -> str | None:
        return self.header("event_type")

    @property
    def failed_at(self) -> datetime | None:
        text = self.header("dlq.failed_at")
        return parse_timestamp(text) if text else None

    def summary(self) -> dict[str, Any]:
        return {
            "dlq": f"{self.topic}/{self.partition}/{self.offset}",
            "event_id": self.event_id,
            "event_type": self.event_type,
            "original": f"{self.header('dlq.original.topic')}/{self.header('dlq.original.partition')}/"
            f"{self.header('dlq.original.offset')}",
            "consumer": self.header("dlq.consumer"),
            "error_class": self.header("dlq.error.class"),
            "error_message": self.header("dlq.error.message"),
            "attempts": self.header("dlq.attempts"),
            "failed_at": self.header("dlq.failed_at"),
            "key": self.key.decode("utf-8", errors="replace") if self.key is not None else None,
            "value": self.value.decode("utf-8", errors="replace") if self.value is not None else None,
        }


def dlq_depths(kafka_config: dict[str, Any], timeout: float = 10.0) -> dict[str, int]:
    """Records currently held per DLQ topic (high minus low watermark, summed over partitions)."""
    consumer = _reader(kafka_config)
    try:
        topics = consumer.list_topics(timeout=timeout).topics
        depths = {}
        for name, meta in sorted(topics.items()):
            if ".dlq." not in name:
                continue
            total = 0
            for partition in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=timeout)
                total += max(0, high - low)
            depths[name] = total
        return depths
    finally:
        consumer.close()


def read_dlq(kafka_config: dict[str, Any], topic: str, *, timeout: float = 10.0) -> Iterator[DlqRecord]:
    """Every record currently in a DLQ topic, oldest first per partition."""
    consumer = _reader(kafka_config)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise BridgeError(f"DLQ topic {topic} does not exist")
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            if high > low:
                ends[partition] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = dict(ends)
        deadline = time.monotonic() + timeout * 3
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(message.error())
            yield DlqRecord(
                message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                dict(message.headers() or []),
            )
            if message.offset() + 1 >= remaining.get(message.partition(), 0):
                remaining.pop(message.partition(), None)
    finally:
        consumer.close()


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[str]
    skipped: int
    dry_run: bool


def replay(
    kafka_config: dict[str, Any],
    topic: str,
    *,
    event_ids: set[str] | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    rate: float | None = None,
) -> ReplayReport:
    """Republish DLQ records to their original topic (original key, value and headers).

    Filters by event id and by failure time. Replaying twice is harmless: the consumers' inbox
    skips events already applied. ``rate`` limits records per second.
    """
    records = list(read_dlq(kafka_config, topic))
    chosen = [
        record
        for record in records
        if (event_ids is None or record.event_id in event_ids)
        and (since is None or (record.failed_at is not None and record.failed_at >= since))
    ]
    names = [r.event_id or f"{r.partition}/{r.offset}" for r in chosen]
    if dry_run or not chosen:
        return ReplayReport(names, len(records) - len(chosen), dry_run)
    producer = Producer({**kafka_config, "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})
    errors: list[str] = []
    interval = 1.0 / rate if rate else 0.0
    for record in chosen:
        original = record.header("dlq.original.topic")
        if not original:
            errors.append(f"{record.topic}/{record.partition}/{record.offset}: no dlq.original.topic header")
            continue
        headers = [(k, v) for k, v in record.headers.items() if k not in DLQ_HEADERS]
        producer.produce(
            original, key=record.key, value=record.value, headers=headers,
            on_delivery=lambda err, msg: errors.append(err.str()) if err else None,
        )
        if interval:
            producer.flush(30)
            time.sleep(interval)
    producer.flush(60)
    if errors:
        raise BridgeError("replay failed: " + "; ".join(errors))
    return ReplayReport(names, len(records) - len(chosen), False)


def _reader(kafka_config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            **kafka_config,
            "group.id": f"bridge-dlq-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
