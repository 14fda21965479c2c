"""Avro for the contracts: record schemas derived from the envelope and payload JSON Schemas,
conversion of envelopes to and from Avro records, single-object encoding, and the Avro
schema-resolution compatibility check between versions.

Mapping (JSON Schema → Avro):

- object → record (fields in ``properties`` order; a property that is not ``required`` becomes a
  union with null, default null); nested objects → nested records named after their path;
- ``enum``/``const`` of strings → Avro enum (a union with null when null is allowed);
- ``["T", "null"]`` → ``["null", T]`` with default null;
- string ``format: date-time`` → long ``timestamp-micros``; ``format: date`` → int ``date``;
- integer → long, number → double, boolean → boolean, array → array;
- a type with ``payload_schema: null`` → the payload as a JSON string field.

What Avro cannot say (patterns, ``email``, ``minItems``, ``minLength``, bounds, ``if``/``then``) is
written into the field's ``doc``; validation stays with JSON Schema. Avro has no "absent": a
property that is not ``required`` is a null-defaulted union, marked ``"x-optional": true``, and a
null there reads back as the property being absent. Names are stable and do not
carry the version (``{avro_namespace}.credit_released.CreditReleased``, the namespace from
``contracts.toml``), so versions of a type resolve against each other by Avro's rules.

Knows nothing of Kafka or PostgreSQL.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bridge.contracts import Registry
from bridge.envelope import Envelope, format_timestamp
from bridge.errors import DecodeError

__all__ = [
    "AVRO_CONTENT_TYPE",
    "AvroCodec",
    "Incompatibility",
    "avro_schema",
    "check_evolution",
    "compatibility_problems",
    "is_avro",
    "single_object_header",
    "write_schemas",
]

AVRO_CONTENT_TYPE = b"application/avro"
_MARKER = b"\xc3\x01"
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _pascal(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)


def _namespace(namespace: str, event_type: str) -> str:
    return f"{namespace}.{event_type.replace('.', '_')}"


# --- schema derivation ------------------------------------------------------------------------------


def avro_schema(registry: Registry, event_type: str, version: int) -> dict[str, Any]:
    """The Avro record schema of an envelope carrying ``(event_type, version)``."""
    registered = registry.lookup(event_type, version)
    if registered is None:
        raise KeyError(f"{event_type} v{version} is not registered")
    base = _pascal(event_type)
    path = registry.schema_file(registered)
    if path is None:
        payload: Any = "string"
        payload_doc = "The payload as compact JSON text: this version has no payload schema."
    else:
        source = json.loads(path.read_text())
        payload = _record(source, f"{base}Payload", _Names())
        payload_doc = source.get("description", "")
    envelope = json.loads(registry.envelope_schema_file.read_text())
    doc = {name: spec.get("description", "") for name, spec in envelope["properties"].items()}
    nullable_string = ["null", "string"]
    fields = [
        {"name": "event_id", "type": "string", "doc": doc["event_id"]},
        {"name": "event_type", "type": "string", "doc": doc["event_type"]},
        {"name": "schema_version", "type": "int", "doc": doc["schema_version"]},
        {"name": "producer", "type": "string", "doc": doc["producer"]},
        {"name": "tenant_id", "type": "string", "doc": doc["tenant_id"]},
        {"name": "subject", "type": "string", "doc": doc["subject"]},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": doc["occurred_at"]},
        {"name": "recorded_at", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": doc["recorded_at"]},
        {"name": "correlation_id", "type": nullable_string, "default": None, "doc": doc["correlation_id"]},
        {"name": "causation_id", "type": nullable_string, "default": None, "doc": doc["causation_id"]},
        {"name": "payload", "type": payload, "doc": payload_doc},
    ]
    return {
        "type": "record",
        "name": base,
        "namespace": _namespace(registry.manifest.avro_namespace, event_type),
        "doc": f"Envelope v1 of {event_type} schema_version {version}, derived from the JSON Schemas by bridge.",
        "fields": fields,
    }


class _Names:
    """Record and enum names already used in one schema (Avro names must be unique)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, name: str) -> str:
        candidate, n = name, 2
        while candidate in self.used:
            candidate, n = f"{name}{n}", n + 1
        self.used.add(candidate)
        return candidate


def _record(schema: Mapping[str, Any], name: str, names: _Names) -> dict[str, Any]:
    required = set(schema.get("required", []))
    fields = []
    for prop, sub in schema.get("properties", {}).items():
        avro_type, nullable = _type(sub, f"{name}{_pascal(prop)}", names)
        field: dict[str, Any] = {"name": prop, "type": avro_type, "doc": _doc(sub)}
        if prop not in required:
            # Avro has no "absent": an optional property is null here, and absent again in JSON.
            field["x-optional"] = True
        if nullable or prop not in required:
            if not nullable:
                field["type"] = ["null", avro_type]
            field["default"] = None
        fields.append(field)
    doc = schema.get("description", "")
    if "if" in schema:
        doc += " [JSON Schema also has an if/then/else rule between fields; validation stays with JSON Schema.]"
    return {"type": "record", "name": names.claim(name), "fields": fields, "doc": doc.strip()}


def _type(schema: Mapping[str, Any], name: str, names: _Names) -> tuple[Any, bool]:
    """(Avro type, whether it is already a union with null)."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    nullable = "null" in kinds or None in schema.get("enum", [])
    kinds = [k for k in kinds if k != "null"]
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is not None:
        symbols = [v for v in values if v is not None]
        if symbols and all(isinstance(v, str) and _SYMBOL.match(v) for v in symbols):
            base: Any = {"type": "enum", "name": names.claim(f"{name}Enum"), "symbols": symbols}
        else:
            base = _primitive(kinds[0] if kinds else "string", schema, name, names)
    else:
        base = _primitive(kinds[0] if kinds else "string", schema, name, names)
    return (["null", base], True) if nullable else (base, False)


def _primitive(kind: str, schema: Mapping[str, Any], name: str, names: _Names) -> Any:
    if kind == "object":
        return _record(schema, name, names)
    if kind == "array":
        item, _ = _type(schema.get("items", {}), f"{name}Item", names)
        return {"type": "array", "items": item}
    if kind == "integer":
        return "long"
    if kind == "number":
        return "double"
    if kind == "boolean":
        return "boolean"
    fmt = schema.get("format")
    if fmt == "date-time":
        return {"type": "long", "logicalType": "timestamp-micros"}
    if fmt == "date":
        return {"type": "int", "logicalType": "date"}
    return "string"


def _doc(schema: Mapping[str, Any]) -> str:
    keywords = ("pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "uniqueItems")
    notes = [f"{keyword} {schema[keyword]}" for keyword in keywords if keyword in schema]
    if schema.get("format") == "email":
        notes.append("format email")
    text: str = schema.get("description", "")
    if notes:
        text += f" [JSON Schema: {'; '.join(notes)}; validation stays with JSON Schema.]"
    return text.strip()


def write_schemas(registry: Registry, out: str | Path) -> list[Path]:
    """Write ``<event_type>-v<n>.avsc`` for every registered version; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in sorted(registry.events):
        for version in sorted(registry.events[event_type].versions):
            path = out / f"{event_type}-v{version}.avsc"
            path.write_text(json.dumps(avro_schema(registry, event_type, version), indent=2) + "\n")
            written.append(path)
    return written


# --- records and single-object encoding ------------------------------------------------------------


def is_avro(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a record's headers say its value is Avro (``content-type: application/avro``)."""
    return any(name == "content-type" and value == AVRO_CONTENT_TYPE for name, value in headers or ())


def single_object_header(schema: Any) -> bytes:
    """``C3 01`` and the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
    Canonical Form: the header of Avro single-object encoding."""
    parsed = fastavro.parse_schema(schema, named_schemas={}) if not isinstance(schema, str) else schema
    # fastavro renders the 64-bit Rabin fingerprint as its little-endian bytes, in hex.
    return _MARKER + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Compiled:
    event_type: str
    version: int
    parsed: Any
    raw: dict[str, Any]
    fingerprint: bytes


class AvroCodec:
    """Encodes envelopes as Avro single-object encoding and decodes them back, for every registered
    ``(event_type, version)``. Schemas are compiled once."""

    #: The ``content-type`` header of records this codec writes.
    content_type = AVRO_CONTENT_TYPE

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_key: dict[tuple[str, int], _Compiled] = {}
        self._by_fingerprint: dict[bytes, _Compiled] = {}
        for event_type, entry in registry.events.items():
            for version in entry.versions:
                raw = avro_schema(registry, event_type, version)
                parsed = fastavro.parse_schema(raw, named_schemas={})
                compiled = _Compiled(event_type, version, parsed, raw, single_object_header(parsed)[2:])
                self._by_key[(event_type, version)] = compiled
                self._by_fingerprint[compiled.fingerprint] = compiled

    def schema(self, event_type: str, version: int) -> dict[str, Any]:
        return self._by_key[(event_type, version)].raw

    def parsed(self, event_type: str, version: int) -> Any:
        return self._by_key[(event_type, version)].parsed

    def encode(self, document: Mapping[str, Any]) -> bytes:
        """A validated envelope document → ``C3 01`` + 8-byte little-endian fingerprint + Avro binary."""
        compiled = self._by_key[(document["event_type"], document["schema_version"])]
        buffer = io.BytesIO()
        buffer.write(_MARKER)
        buffer.write(compiled.fingerprint)
        fastavro.schemaless_writer(buffer, compiled.parsed, to_record(document, compiled.raw))
        return buffer.getvalue()

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, Any]:
        """Single-object bytes → the envelope as a JSON document. Raises :class:`DecodeError`."""
        if len(data) < 10 or data[:2] != _MARKER:
            raise DecodeError("not Avro single-object encoding (no C3 01 marker)", source=source)
        compiled = self._by_fingerprint.get(bytes(data[2:10]))
        if compiled is None:
            raise DecodeError(
                f"unknown Avro schema fingerprint {bytes(data[2:10])[::-1].hex()}: written with a schema this "
                "consumer's contracts do not have",
                source=source,
            )
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[10:]), compiled.parsed, None)
        except Exception as exc:  # noqa: BLE001 - any corrupt body is a decode error
            raise DecodeError(
                f"corrupt Avro body for {compiled.event_type} v{compiled.version}: {exc}", source=source
            ) from None
        # fastavro types any message; the schema is a record, and a record reads back as a dict.
        return from_record(cast("dict[str, Any]", record), compiled.raw)

    def encode_envelope(self, envelope: Envelope) -> bytes:
        return self.encode(json.loads(envelope.to_json()))


def to_record(document: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """An envelope document (JSON values) → an Avro record value for ``schema``."""
    record: dict[str, Any] = _to(document, schema)  # a record schema gives a dict
    return record


def from_record(record: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """An Avro record value → the envelope document (JSON values), the inverse of :func:`to_record`."""
    document: dict[str, Any] = _from(record, schema)  # a record schema gives a dict
    return document


def _branch(avro_type: Any, value: Any) -> Any:
    if isinstance(avro_type, list):
        if value is None:
            return "null"
        return next(t for t in avro_type if t != "null")
    return avro_type


def _to(value: Any, avro_type: Any) -> Any:
    avro_type = _branch(avro_type, value)
    if value is None or avro_type == "null":
        return None
    if avro_type == "string" and not isinstance(value, str):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)  # a schema-less payload
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "timestamp-micros":
            return datetime.fromisoformat(value)
        if logical == "date":
            return date.fromisoformat(value)
        if avro_type["type"] == "record":
            return {
                f["name"]: _to(value.get(f["name"]), f["type"])
                for f in avro_type["fields"]
                if f["name"] in value or not isinstance(f["type"], list)
            }
        if avro_type["type"] == "array":
            return [_to(item, avro_type["items"]) for item in value]
    return value


def _from(value: Any, avro_type: Any, *, top: bool = True) -> Any:
    avro_type = _branch(avro_type, value)
    if value is None:
        return None
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "timestamp-micros":
            return format_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))
        if logical == "date":
            return value.isoformat()
        if avro_type["type"] == "record":
            out = {}
            for field in avro_type["fields"]:
                name = field["name"]
                if name == "payload" and field["type"] == "string" and top:
                    out[name] = json.loads(value[name])
                elif value.get(name) is not None or not _optional(field):
                    out[name] = _from(value.get(name), field["type"], top=False)
            return out
        if avro_type["type"] == "array":
            return [_from(item, avro_type["items"], top=False) for item in value]
    return value


def _optional(field: Mapping[str, Any]) -> bool:
    # A JSON Schema property that is not required comes back absent when null; required nullable
    # ones (and the envelope's correlation_id/causation_id) come back as null.
    return bool(field.get("x-optional"))


# --- evolution --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incompatibility:
    event_type: str
    reader: int
    writer: int
    problems: list[str]

    def __str__(self) -> str:
        return f"{self.event_type}: a v{self.reader} reader cannot read v{self.writer} data: " + "; ".join(
            self.problems
        )


def check_evolution(registry: Registry) -> list[Incompatibility]:
    """For each type with several versions: can a reader of the newest read each older version?"""
    found = []
    for event_type, entry in sorted(registry.events.items()):
        versions = sorted(entry.versions)
        if len(versions) < 2:
            continue
        newest = versions[-1]
        reader = avro_schema(registry, event_type, newest)
        for old in versions[:-1]:
            problems = compatibility_problems(reader, avro_schema(registry, event_type, old))
            if problems:
                found.append(Incompatibility(event_type, newest, old, problems))
    return found


def compatibility_problems(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (Avro's resolution rules);
    ``[]`` when it can."""
    reader, writer = _unlogical(reader), _unlogical(writer)
    here = path or "/"
    if isinstance(writer, list):
        problems = []
        for branch in writer:
            problems += compatibility_problems(reader, branch, path)
        return problems
    if isinstance(reader, list):
        for branch in reader:
            if not compatibility_problems(branch, writer, path):
                return []
        return [f"{here}: no branch of the reader's union {_type_name(reader)} reads {_type_name(writer)}"]
    r_kind, w_kind = _kind(reader), _kind(writer)
    promotions = {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
    if r_kind != w_kind and (w_kind, r_kind) not in promotions:
        return [f"{here}: {w_kind} cannot be read as {r_kind}"]
    if r_kind == "record":
        if reader.get("name") != writer.get("name"):
            return [f"{here}: record {writer.get('name')} cannot be read as record {reader.get('name')}"]
        written = {f["name"]: f for f in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            at = f"{path}/{field['name']}"
            if field["name"] in written:
                problems += compatibility_problems(field["type"], written[field["name"]]["type"], at)
            elif "default" not in field:
                problems.append(
                    f"{at}: the reader requires field {field['name']!r}, which older data lacks, and it has no default"
                )
        return problems
    if r_kind == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{here}: the reader's enum lacks symbol(s) {', '.join(missing)}"]
        return []
    if r_kind == "array":
        return compatibility_problems(reader["items"], writer["items"], f"{path}/items")
    return []


def _unlogical(schema: Any) -> Any:
    if isinstance(schema, dict) and "logicalType" in schema and schema.get("type") in ("int", "long"):
        return schema["type"]
    return schema


def _kind(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema.get("type")


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_type_name(s) for s in schema) + "]"
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("type"))
    return str(schema)
