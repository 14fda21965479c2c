"""An outbox row as a Kafka record: topic, key, value and the contract headers (docs/design.md, "Wire contract").

Everything that depends only on the event type (its topic, its type, version and producer headers)
is computed once per type, not once per row: this runs for every event the relay sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.outbox.source import OutboxRow
from bridge.topics.naming import topic_name

__all__ = ["JSON_CONTENT_TYPE", "EncodedRecord", "RecordEncoder", "RecordSigner", "ValueEncoder"]

JSON_CONTENT_TYPE = b"application/json"
_TRACE_HEADERS = ("traceparent", "tracestate")


class ValueEncoder(Protocol):
    """Turns an envelope document into record value bytes (Avro, a Schema Registry format)."""

    content_type: bytes

    def encode(self, document: Mapping[str, Any]) -> bytes: ...


class RecordSigner(Protocol):
    def header(self, topic: str, key: bytes, value: bytes, headers: Mapping[str, bytes]) -> tuple[str, bytes]: ...


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class RecordEncoder:
    """Encodes rows for one topic prefix, value format and signer."""

    def __init__(
        self, topic_prefix: str, *, value_encoder: ValueEncoder | None = None, signer: RecordSigner | None = None
    ) -> None:
        self.topic_prefix = topic_prefix
        self.value_encoder = value_encoder
        self.signer = signer
        self._content_type = value_encoder.content_type if value_encoder is not None else JSON_CONTENT_TYPE
        self._per_type: dict[tuple[str, int, str], tuple[str, tuple[tuple[str, bytes], ...]]] = {}

    def topic(self, event_type: str) -> str:
        return self._type_parts(event_type, 1, "")[0]

    def _type_parts(self, event_type: str, version: int, producer: str) -> tuple[str, tuple[tuple[str, bytes], ...]]:
        key = (event_type, version, producer)
        parts = self._per_type.get(key)
        if parts is None:
            fixed = (
                ("event_type", event_type.encode()),
                ("schema_version", str(version).encode()),
                ("producer", producer.encode()),
            )
            parts = self._per_type[key] = (topic_name(self.topic_prefix, event_type), fixed)
        return parts

    def encode(self, row: OutboxRow) -> EncodedRecord:
        topic, fixed = self._type_parts(row.event_type, row.schema_version, row.producer)
        value = row.value
        if self.value_encoder is not None:
            value = self.value_encoder.encode(json.loads(value))
        headers = [
            ("event_id", row.event_id.encode()),
            *fixed,
            ("tenant_id", row.tenant_id.encode()),
            ("content-type", self._content_type),
        ]
        if row.headers:
            headers += [(name, str(row.headers[name]).encode()) for name in _TRACE_HEADERS if name in row.headers]
        key = row.subject.encode()
        if self.signer is not None:
            headers.append(self.signer.header(topic, key, value, dict(headers)))
        return EncodedRecord(topic, key, value, headers)
