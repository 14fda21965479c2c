"""From a Kafka record to a :class:`Delivery`: decode, verify the signature, validate against the
contracts, and check that the record is what its topic and headers say.

Every failure is a :class:`~bridge.errors.ValidationError` naming what is wrong and where
(topic/partition/offset, JSON pointer): the runner dead-letters it without retries. Pure: knows the
contracts and the record, not the broker or the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from bridge.consumer.app import Delivery
from bridge.contracts import Contracts
from bridge.envelope import decode_json_object, envelope_from_validated
from bridge.errors import IntegrityError, Violation
from bridge.kafka.records import Record

__all__ = ["CONTRACT_HEADERS", "RecordReader", "RecordVerifier", "ValueDecoder"]

#: Headers the relay writes from the envelope; a consumer checks they agree with it.
CONTRACT_HEADERS = ("event_id", "event_type", "schema_version", "producer", "tenant_id")
_TRACE_HEADERS = ("traceparent", "tracestate")
_NO_TRACE: Mapping[str, str] = MappingProxyType({})


class ValueDecoder(Protocol):
    """Bytes of one content type → the envelope as a JSON document (raises DecodeError)."""

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, Any]: ...


class RecordVerifier(Protocol):
    def check(self, record: Record) -> None:
        """Raise :class:`~bridge.errors.SignatureError` unless the record's signature verifies."""
        ...


class RecordReader:
    """Reads the records of one consumer's topics.

    ``expected_type(record)`` gives the event type the record's topic carries (``None`` when it
    cannot say). ``decoders`` maps a ``content-type`` header value
    to its decoder; JSON is built in. ``wire_format`` reads a record without a ``content-type``
    whose value starts with the Confluent wire format's magic byte 0 (what JVM producers and Kafka
    Connect write with a Schema Registry; JSON never starts with it). With
    ``missing_headers="tolerate"`` a record without the contract headers is checked on its envelope
    alone (such producers write none).
    """

    def __init__(
        self,
        contracts: Contracts,
        expected_type: Callable[[Record], str | None],
        *,
        verifier: RecordVerifier | None = None,
        decoders: Mapping[bytes, ValueDecoder] | None = None,
        wire_format: ValueDecoder | None = None,
        missing_headers: str = "dlq",
    ) -> None:
        self.contracts = contracts
        self.expected_type = expected_type
        self.verifier = verifier
        self.decoders = dict(decoders or {})
        self.wire_format = wire_format
        self.tolerate_missing_headers = missing_headers == "tolerate"

    def read(self, record: Record) -> Delivery:
        source = record.source
        if self.verifier is not None:
            self.verifier.check(record)
        headers = dict(record.headers)  # the last value of a repeated header wins, as Record.header
        document = self._decode(record, headers.get("content-type"), source)
        self.contracts.validate_envelope(document, source=source)
        envelope = envelope_from_validated(document)
        violations = self._integrity(record, headers, document)
        if violations:
            raise IntegrityError(violations, event_id=envelope.event_id, source=source)
        trace = (
            {k: v.decode("ascii", "replace") for k, v in headers.items() if k in _TRACE_HEADERS}
            if "traceparent" in headers
            else _NO_TRACE
        )
        return Delivery(envelope, record.topic, record.partition, record.offset, trace)

    def _decode(self, record: Record, content_type: bytes | None, source: str) -> dict[str, Any]:
        if content_type is not None:
            decoder = self.decoders.get(content_type)
        else:
            decoder = self.wire_format if record.value[:1] == b"\x00" else None
        if decoder is not None:
            return decoder.decode(record.value, source=source)
        return decode_json_object(record.value, source=source)

    def _integrity(self, record: Record, headers: Mapping[str, bytes], document: Mapping[str, Any]) -> list[Violation]:
        violations = []
        expected = self.expected_type(record)
        if expected is not None and document["event_type"] != expected:
            violations.append(
                Violation(
                    "/event_type",
                    f"a {document['event_type']!r} envelope on the topic of {expected!r} ({record.topic}): "
                    "records of one type only travel on that type's topic",
                )
            )
        missing = [name for name in CONTRACT_HEADERS if name not in headers]
        if missing and not self.tolerate_missing_headers:
            violations.append(
                Violation("", f"contract header(s) missing: {', '.join(missing)} (BRIDGE_CONSUMER__MISSING_HEADERS)")
            )
        for name in CONTRACT_HEADERS:
            raw = headers.get(name)
            if raw is None:
                continue
            value = raw.decode("utf-8", "replace")
            if value != str(document[name]):
                violations.append(
                    Violation(f"/{name}", f"header {name}={value!r} disagrees with the envelope's {document[name]!r}")
                )
        if record.key and record.key != document["subject"].encode():
            violations.append(Violation("/subject", f"the record key {record.key!r} is not the envelope's subject"))
        return violations
