"""The event envelope: a value type, its wire encoding and a decoder that says what is wrong.

The wire form is compact UTF-8 JSON. Encoding is deterministic: envelope fields in a fixed order,
payload keys sorted at every level, no whitespace, timestamps as RFC 3339 UTC with microseconds
(``2026-05-22T10:00:00.000000Z``). The same envelope therefore always encodes to the same bytes,
which is what signatures and deduplication by content need.

This module checks the envelope's *structure* (fields present, of the right JSON types, timestamps
parseable). Patterns, registered types and payload schemas are the business of
:mod:`bridge.contracts`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, TypeVar

import msgspec

from bridge.errors import DecodeError, ValidationError, Violation, json_pointer

__all__ = [
    "ENVELOPE_FIELDS",
    "Envelope",
    "decode_envelope",
    "decode_json_object",
    "decode_json_strictly",
    "envelope_from_validated",
    "format_timestamp",
    "parse_timestamp",
]

#: Envelope v1 fields, in wire order.
ENVELOPE_FIELDS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "schema_version",
    "producer",
    "tenant_id",
    "subject",
    "occurred_at",
    "recorded_at",
    "correlation_id",
    "causation_id",
    "payload",
)

_STRING_FIELDS = ("event_id", "event_type", "producer", "tenant_id", "subject")
_NULLABLE_STRING_FIELDS = ("correlation_id", "causation_id")
_TIMESTAMP_FIELDS = ("occurred_at", "recorded_at")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$")


class _Validates(Protocol):
    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...


_M = TypeVar("_M", bound=_Validates)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event: who emitted what, about which subject, when, and its payload."""

    event_id: str
    event_type: str
    schema_version: int
    producer: str
    tenant_id: str
    subject: str
    occurred_at: datetime
    recorded_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None

    def __post_init__(self) -> None:
        for name in _TIMESTAMP_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"Envelope.{name} must be a timezone-aware datetime, got {value!r}")

    def payload_as(self, model: type[_M]) -> _M:
        """The payload as a typed model (for example one made by ``bridge contracts codegen``):
        ``model.model_validate(payload)``, so a handler can work with fields, not a dict."""
        return model.model_validate(self.payload)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (timestamps as RFC 3339 strings), in wire order."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "producer": self.producer,
            "tenant_id": self.tenant_id,
            "subject": self.subject,
            "occurred_at": format_timestamp(self.occurred_at),
            "recorded_at": format_timestamp(self.recorded_at),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "payload": self.payload,
        }

    def to_json(self) -> bytes:
        """Deterministic compact UTF-8 JSON, the record value on the wire."""
        head = self.to_dict()
        payload = head.pop("payload")
        try:
            payload_json = json.dumps(
                payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                "payload", [Violation("/payload", f"not representable as JSON: {exc}")], event_id=self.event_id
            ) from None
        head_json = json.dumps(head, separators=(",", ":"), ensure_ascii=False)
        return (head_json[:-1] + ',"payload":' + payload_json + "}").encode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Envelope:
        """Build from a decoded JSON object, checking the envelope's structure.

        Raises :class:`ValidationError` listing every missing, extra or mistyped field.
        """
        violations = _structure_violations(data)
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        if violations:
            raise ValidationError("envelope", violations, event_id=event_id, source=source)
        return cls(
            event_id=data["event_id"],
            event_type=data["event_type"],
            schema_version=data["schema_version"],
            producer=data["producer"],
            tenant_id=data["tenant_id"],
            subject=data["subject"],
            occurred_at=parse_timestamp(data["occurred_at"]),
            recorded_at=parse_timestamp(data["recorded_at"]),
            correlation_id=data["correlation_id"],
            causation_id=data["causation_id"],
            payload=data["payload"],
        )


def envelope_from_validated(data: Mapping[str, Any]) -> Envelope:
    """Build from a document already validated against the envelope schema (the consumer's hot
    path: the structure checks of :meth:`Envelope.from_dict` would only repeat the schema's)."""
    return Envelope(
        data["event_id"],
        data["event_type"],
        data["schema_version"],
        data["producer"],
        data["tenant_id"],
        data["subject"],
        datetime.fromisoformat(data["occurred_at"]),
        datetime.fromisoformat(data["recorded_at"]),
        data["payload"],
        data["correlation_id"],
        data["causation_id"],
    )


def decode_envelope(data: bytes, *, source: str | None = None) -> Envelope:
    """Decode wire bytes into an :class:`Envelope`.

    Raises :class:`DecodeError` for invalid UTF-8, invalid JSON, NaN/Infinity, duplicate keys or a
    value that is not an object, and :class:`ValidationError` for missing, extra or mistyped fields.
    ``source`` (for example ``topic/partition/offset``) is carried into the error message.
    """
    return Envelope.from_dict(decode_json_object(data, source=source), source=source)


def decode_json_object(data: bytes, *, source: str | None = None) -> dict[str, Any]:
    """Strictly decode bytes holding one JSON object (the first half of :func:`decode_envelope`).

    Refused, each with a :class:`DecodeError` saying where: invalid UTF-8 (byte offset), invalid
    JSON (line and column), NaN and Infinity, a lone surrogate escape, a key repeated in one object,
    a value that is not an object. The consumer's hot path: parsed once, by msgspec (it keeps big
    integers exact and refuses NaN, like the strict reference decoder :func:`decode_json_strictly`,
    which ``tests/unit/test_lean_decode.py`` checks it against on generated documents).
    """
    received: object = data  # checked, not trusted: a caller may hand over a str
    if type(received) is not bytes:
        if not isinstance(received, (bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(received).__name__}", source=source)
        data = bytes(received)
    try:
        value = _DECODER.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        # Refused: the reference decoder says where (byte offset, line and column) and why.
        return decode_json_strictly(data, source=source)
    if type(value) is not dict:
        raise DecodeError(f"the envelope must be a JSON object, got {_json_type(value)}", source=source)
    if _repeats_a_key(data, value):
        return decode_json_strictly(data, source=source)  # it will say which key, and raise
    return value


def decode_json_strictly(data: bytes, *, source: str | None = None) -> dict[str, Any]:
    """The reference decoder: Python's ``json`` with every strictness check written out. Slower;
    used to explain a refusal, and as the yardstick of :func:`decode_json_object`."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}", source=source) from None
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_reject_duplicates
        )
    except _StrictJsonError as exc:
        raise DecodeError(str(exc), source=source) from None
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}", source=source
        ) from None
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deeply", source=source) from None
    try:
        # A lone surrogate (\ud800) decodes in Python but is no text: PostgreSQL refuses it too.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("invalid JSON: a lone surrogate escape is not a character", source=source) from None
    if not isinstance(value, dict):
        raise DecodeError(f"the envelope must be a JSON object, got {_json_type(value)}", source=source)
    return value


_DECODER = msgspec.json.Decoder()


def _repeats_a_key(data: bytes, value: dict[str, Any]) -> bool:
    """Whether some object of the text repeats a key (msgspec keeps the last one silently).

    Exact, without a second parse: outside strings a ``:`` only ever separates a key from its
    value, so the text's colons minus those inside the decoded strings count the keys written;
    the decoded objects count the keys kept. An escaped colon (``\\u003a``) would hide one
    inside a string, so such text is checked by the reference decoder instead.
    """
    if b"\\u003" in data:
        return True
    kept = 0
    in_strings = 0
    pending: list[Any] = [value]
    while pending:
        node = pending.pop()
        if type(node) is dict:
            kept += len(node)
            for key, item in node.items():
                if ":" in key:
                    in_strings += key.count(":")
                kind = type(item)
                if kind is str:
                    if ":" in item:
                        in_strings += item.count(":")
                elif kind is dict or kind is list:
                    pending.append(item)
        else:
            for item in node:
                kind = type(item)
                if kind is str:
                    if ":" in item:
                        in_strings += item.count(":")
                elif kind is dict or kind is list:
                    pending.append(item)
    return data.count(b":") - in_strings > kept


def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: ``2026-05-22T10:00:00.000000Z``."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"  # faster than strftime


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an offset or ``Z``; raise ``ValueError`` saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 date-time string, got {_json_type(value)}")
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time (e.g. 2026-05-22T10:00:00Z)")
    if match.group("offset") is None:
        raise ValueError(f"{value!r} has no UTC offset (RFC 3339 requires Z or ±hh:mm)")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date-time: {exc}") from None


class _StrictJsonError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _StrictJsonError(f"invalid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _StrictJsonError(f"invalid JSON: the number {text} is out of range")
    return number


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _StrictJsonError(f"invalid JSON: duplicate key {key!r} in an object")
        result[key] = value
    return result


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _structure_violations(data: Mapping[str, Any]) -> list[Violation]:
    violations = [Violation(f"/{name}", "required field is missing") for name in ENVELOPE_FIELDS if name not in data]
    violations += [
        Violation(json_pointer([name]), "unexpected field (the envelope allows no additional fields)")
        for name in data
        if name not in ENVELOPE_FIELDS
    ]
    for name in _STRING_FIELDS:
        if name in data and not isinstance(data[name], str):
            violations.append(Violation(f"/{name}", f"must be a string, got {_json_type(data[name])}"))
    for name in _NULLABLE_STRING_FIELDS:
        if name in data and data[name] is not None and not isinstance(data[name], str):
            violations.append(Violation(f"/{name}", f"must be a string or null, got {_json_type(data[name])}"))
    version = data.get("schema_version")
    if "schema_version" in data and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        violations.append(Violation("/schema_version", f"must be an integer >= 1, got {version!r}"))
    for name in _TIMESTAMP_FIELDS:
        if name in data:
            try:
                parse_timestamp(data[name])
            except (ValueError, TypeError) as exc:
                violations.append(Violation(f"/{name}", str(exc)))
    if "payload" in data and not isinstance(data["payload"], dict):
        violations.append(Violation("/payload", f"must be an object, got {_json_type(data['payload'])}"))
    return violations
