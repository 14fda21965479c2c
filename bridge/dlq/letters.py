"""What a dead letter carries: the poison record and why it failed, as Kafka headers.

A DLQ record keeps the original key, value and headers, and adds (docs/design.md, "Wire contract")
``dlq.original.topic``, ``dlq.original.partition``, ``dlq.original.offset``, ``dlq.consumer``,
``dlq.error.class``, ``dlq.error.message``, ``dlq.attempts``, ``dlq.failed_at``, bridge's
``dlq.reason`` (what kind of
failure, for ``bridge dlq replay --reason``) and ``dlq.error.stacktrace``, plus Spring Kafka's
``kafka_dlt-*`` headers so existing tools read them.

A record that would not fit the DLQ topic as it is (its value near the topic's size limit, say)
is dead-lettered in a form that fits: the value is replaced by a small JSON marker naming where
the original is (topic, partition, offset), its size and SHA-256, and ``dlq.value`` says so.
Poison must never block a partition because its dead letter is too big.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, replace
from datetime import datetime

from bridge.envelope import format_timestamp
from bridge.errors import DecodeError, IntegrityError, SignatureError, ValidationError
from bridge.kafka.records import Headers

__all__ = ["DLQ_HEADERS", "REASONS", "DeadLetterRecord", "Reason", "fitted", "reason_of"]

#: Headers bridge adds to a dead-lettered record (and strips again on replay).
DLQ_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.consumer",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.error.stacktrace",
    "dlq.attempts",
    "dlq.failed_at",
    "dlq.reason",
    "dlq.value",
    "kafka_dlt-original-topic",
    "kafka_dlt-original-partition",
    "kafka_dlt-original-offset",
    "kafka_dlt-exception-fqcn",
    "kafka_dlt-exception-message",
    "kafka_dlt-exception-stacktrace",
)

#: Why a record was dead-lettered (the ``dlq.reason`` header).
Reason = str
REASONS = ("decode", "invalid", "signature", "integrity", "unhandled", "handler", "decision")


def reason_of(error: ValidationError) -> Reason:
    """The ``dlq.reason`` of a record that could not be read."""
    if isinstance(error, DecodeError):
        return "decode"
    if isinstance(error, SignatureError):
        return "signature"
    if isinstance(error, IntegrityError):
        return "integrity"
    return "invalid"


_MAX_MESSAGE = 4000
_MAX_STACKTRACE = 16_000
#: Bytes kept free below the topic limit for the record batch's own framing.
_FRAMING = 512


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A poison record on its way to the DLQ."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers
    error_class: str
    error_message: str
    attempts: int
    reason: Reason = "invalid"
    stacktrace: str = ""
    #: Set when the value was replaced by a marker to fit the DLQ topic.
    value_replaced: bool = False

    def dlq_headers(self, consumer: str, failed_at: datetime) -> list[tuple[str, bytes]]:
        message = self.error_message[:_MAX_MESSAGE].encode()
        trace = self.stacktrace[-_MAX_STACKTRACE:].encode()
        original = [(k, v) for k, v in self.headers if k not in DLQ_HEADERS]
        added = [
            ("dlq.original.topic", self.topic.encode()),
            ("dlq.original.partition", str(self.partition).encode()),
            ("dlq.original.offset", str(self.offset).encode()),
            ("dlq.consumer", consumer.encode()),
            ("dlq.error.class", self.error_class.encode()),
            ("dlq.error.message", message),
            ("dlq.attempts", str(self.attempts).encode()),
            ("dlq.failed_at", format_timestamp(failed_at).encode()),
            ("dlq.reason", self.reason.encode()),
            ("kafka_dlt-original-topic", self.topic.encode()),
            ("kafka_dlt-original-partition", struct.pack(">i", self.partition)),
            ("kafka_dlt-original-offset", struct.pack(">q", self.offset)),
            ("kafka_dlt-exception-fqcn", self.error_class.encode()),
            ("kafka_dlt-exception-message", message),
        ]
        if trace:
            added += [("dlq.error.stacktrace", trace), ("kafka_dlt-exception-stacktrace", trace)]
        if self.value_replaced:
            added.append(("dlq.value", b"replaced: the original did not fit the DLQ topic"))
        return original + added


def _size(letter: DeadLetterRecord, headers: Headers) -> int:
    return len(letter.key) + len(letter.value) + sum(len(k) + len(v) + 8 for k, v in headers)


def fitted(
    letter: DeadLetterRecord, consumer: str, failed_at: datetime, limit: int
) -> tuple[DeadLetterRecord, list[tuple[str, bytes]]]:
    """The letter and its headers, made to fit ``limit`` bytes (the DLQ topic's
    ``max.message.bytes``): as it is when it fits, else with its value replaced by a marker, its
    stack trace dropped and, if still too large, its original headers reduced to the contract's."""
    headers = letter.dlq_headers(consumer, failed_at)
    budget = max(1024, limit - _FRAMING)
    if _size(letter, headers) <= budget:
        return letter, headers
    marker = json.dumps(
        {
            "bridge_dlq_marker": 1,
            "original": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
            "size": len(letter.value),
            "sha256": hashlib.sha256(letter.value).hexdigest(),
            "reason": letter.error_message[:500],
        },
        separators=(",", ":"),
    ).encode()
    smaller = replace(letter, value=marker, value_replaced=True, stacktrace=letter.stacktrace[-2000:])
    headers = smaller.dlq_headers(consumer, failed_at)
    if _size(smaller, headers) <= budget:
        return smaller, headers
    kept = ("event_id", "event_type", "schema_version", "producer", "tenant_id", "content-type")
    smallest = replace(
        smaller,
        key=smaller.key[:1024],
        headers=[(k, v[:1024]) for k, v in smaller.headers if k in kept],
        stacktrace="",
        error_message=smaller.error_message[:1000],
    )
    return smallest, smallest.dlq_headers(consumer, failed_at)
