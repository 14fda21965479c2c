"""Operating the DLQ: how deep each DLQ topic is, reading its records back, and replaying them.

Replay sends records back *to the consumer that dead-lettered them* by default: on its own replay
topic ``{prefix}{consumer}.dlq-replay``, which only that consumer's group reads, so no other group
sees the event again. ``to_source=True`` republishes to the original topic instead (every group
sees it; inboxes skip what they applied). Either way ``dlq.*`` headers are stripped and
``bridge-replay-of`` names the original topic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.clock import Clock, SystemClock
from bridge.dlq.letters import DLQ_HEADERS
from bridge.envelope import parse_timestamp
from bridge.errors import BridgeError, ConfigurationError, KafkaError, TopicNotFoundError
from bridge.kafka.ports import KafkaClients
from bridge.kafka.records import Record, TopicPartition
from bridge.topics.naming import replay_topic_name

__all__ = ["REPLAY_OF_HEADER", "DlqRecord", "ReplayReport", "dlq_depths", "read_dlq", "replay"]

#: Names the original topic of a replayed record (the consumer checks the envelope against it).
REPLAY_OF_HEADER = "bridge-replay-of"


@dataclass(frozen=True)
class DlqRecord:
    """A record read back from a DLQ topic."""

    record: Record

    def header(self, name: str) -> str | None:
        value = self.record.header(name)
        return value.decode("utf-8", errors="replace") if value is not None else None

    def _envelope_field(self, name: str) -> str | None:
        # Headers may be missing (a hand-made record): the envelope in the value still says.
        try:
            document = json.loads(self.record.value)
        except (ValueError, UnicodeDecodeError):
            return None
        value = document.get(name) if isinstance(document, dict) else None
        return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None

    @property
    def event_id(self) -> str | None:
        return self.header("event_id") or self._envelope_field("event_id")

    @property
    def event_type(self) -> str | None:
        return self.header("event_type") or self._envelope_field("event_type")

    @property
    def reason(self) -> str | None:
        return self.header("dlq.reason")

    @property
    def consumer(self) -> str | None:
        return self.header("dlq.consumer")

    @property
    def failed_at(self) -> datetime | None:
        text = self.header("dlq.failed_at")
        return parse_timestamp(text) if text else None

    def summary(self) -> dict[str, Any]:
        record = self.record
        return {
            "dlq": record.source,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "original": f"{self.header('dlq.original.topic')}/{self.header('dlq.original.partition')}/"
            f"{self.header('dlq.original.offset')}",
            "consumer": self.consumer,
            "reason": self.reason,
            "error_class": self.header("dlq.error.class"),
            "error_message": self.header("dlq.error.message"),
            "stacktrace": self.header("dlq.error.stacktrace"),
            "attempts": self.header("dlq.attempts"),
            "failed_at": self.header("dlq.failed_at"),
            "value_replaced": self.header("dlq.value") is not None,
            "key": record.key.decode("utf-8", errors="replace"),
            "value": record.value.decode("utf-8", errors="replace"),
        }


def dlq_depths(clients: KafkaClients, *, prefix: str = "", timeout: float = 10.0) -> dict[str, int]:
    """Records currently held per DLQ topic (high minus low watermark, summed over partitions)."""
    admin = clients.admin()
    try:
        cluster = admin.cluster(timeout)
        depths = {}
        for name, topic in sorted(cluster.topics.items()):
            if ".dlq." not in name or not name.startswith(prefix):
                continue
            total = 0
            for partition in topic.partitions:
                low, high = admin.watermarks(TopicPartition(name, partition), timeout)
                total += max(0, high - low)
            depths[name] = total
        return depths
    finally:
        admin.close()


def read_dlq(
    clients: KafkaClients, topic: str, *, timeout: float = 10.0, clock: Clock | None = None
) -> Iterator[DlqRecord]:
    """Every record currently in a DLQ topic, oldest first per partition."""
    clock = clock or SystemClock()
    admin = clients.admin()
    try:
        meta = admin.cluster(timeout).topics.get(topic)
        if meta is None:
            raise TopicNotFoundError(f"DLQ topic {topic} does not exist", code="UNKNOWN_TOPIC_OR_PART")
        ends = {}
        starts = {}
        for partition in meta.partitions:
            tp = TopicPartition(topic, partition)
            low, high = admin.watermarks(tp, timeout)
            if high > low:
                ends[tp], starts[tp] = high, low
    finally:
        admin.close()
    if not ends:
        return
    reader = clients.consumer(
        f"bridge-dlq-reader-{uuid.uuid4().hex[:8]}", client_id="bridge-dlq-reader", commit_in_background=False
    )
    try:
        reader.assign(starts)
        remaining = dict(ends)
        deadline = clock.monotonic() + timeout * 3
        while remaining and clock.monotonic() < deadline:
            for record in reader.consume(500, 0.5):
                if record.tp not in remaining:
                    continue
                yield DlqRecord(record)
                if record.offset + 1 >= remaining[record.tp]:
                    remaining.pop(record.tp)
    finally:
        reader.close()


@dataclass(frozen=True)
class ReplayReport:
    #: (event id or partition/offset, reason) of each record chosen.
    replayed: list[tuple[str, str]]
    skipped: int
    dry_run: bool
    target: str


def replay(
    clients: KafkaClients,
    topic: str,
    *,
    topic_prefix: str,
    event_ids: set[str] | None = None,
    reasons: set[str] | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    to_source: bool = False,
    timeout: float = 30.0,
    clock: Clock | None = None,
) -> ReplayReport:
    """Send DLQ records back (see the module docstring for where). Filters by event id, reason and
    failure time. Replaying twice is harmless: the consumer's inbox applies an event once.
    ``rate`` limits records per second."""
    clock = clock or SystemClock()
    records = list(read_dlq(clients, topic, clock=clock))
    chosen = [
        r
        for r in records
        if (event_ids is None or r.event_id in event_ids)
        and (reasons is None or r.reason in reasons)
        and (since is None or (r.failed_at is not None and r.failed_at >= since))
    ]
    consumer = topic.rsplit(".dlq.", 1)[1] if ".dlq." in topic else None
    if consumer is None:
        raise ConfigurationError(f"{topic} is not a DLQ topic ({{topic}}.dlq.{{consumer}})")
    target = "the original topics" if to_source else replay_topic_name(topic_prefix, consumer)
    names = [(r.event_id or f"{r.record.partition}/{r.record.offset}", r.reason or "?") for r in chosen]
    if dry_run or not chosen:
        return ReplayReport(names, len(records) - len(chosen), dry_run, target)
    producer = clients.producer("replay", client_id="bridge-dlq-replay")
    if not to_source and not producer.topic_exists(target, timeout):
        raise TopicNotFoundError(
            f"replay topic {target} does not exist: run bridge topics apply (or replay with --to-source)",
            code="UNKNOWN_TOPIC_OR_PART",
        )
    errors: list[str] = []

    def delivered(error: KafkaError | None) -> None:
        if error is not None:
            errors.append(str(error))

    interval = 1.0 / rate if rate else 0.0
    for chosen_record in chosen:
        original = chosen_record.header("dlq.original.topic")
        if not original:
            errors.append(f"{chosen_record.record.source}: no dlq.original.topic header")
            continue
        if chosen_record.header("dlq.value") is not None:
            errors.append(
                f"{chosen_record.record.source}: its value was replaced by a marker (too large); "
                "replay the original from its topic"
            )
            continue
        headers = [(k, v) for k, v in chosen_record.record.headers if k not in DLQ_HEADERS and k != REPLAY_OF_HEADER]
        headers.append((REPLAY_OF_HEADER, original.encode()))
        destination = original if to_source else target
        record = chosen_record.record
        while not producer.produce(destination, record.key, record.value, headers, delivered):
            producer.poll(0.05)
        if interval:
            producer.flush(timeout)
            clock.wait(interval)
    left = producer.close(timeout)
    if left:
        errors.append(f"{left} record(s) not acknowledged within {timeout:.0f} s")
    if errors:
        raise BridgeError("replay failed: " + "; ".join(errors))
    return ReplayReport(names, len(records) - len(chosen), False, target)
