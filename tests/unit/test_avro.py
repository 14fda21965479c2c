"""Avro schemas derived from the contracts: they parse, payloads round-trip, evolution is judged
by Avro's resolution rules, and single-object encoding names what is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from support.schemas import strategy_for

from bridge.avro import AvroCodec, avro_schema, check_evolution, compatibility_problems
from bridge.contracts import Registry
from bridge.envelope import Envelope, format_timestamp, parse_timestamp
from bridge.errors import DecodeError

REGISTRY = Registry.load()
CODEC = AvroCodec(REGISTRY)
ALL = sorted((t, v) for t, e in REGISTRY.events.items() for v in e.versions)
WITH_SCHEMA = [(t, v) for t, v in ALL if REGISTRY.events[t].versions[v].payload_schema]


@pytest.mark.parametrize(("event_type", "version"), ALL, ids=[f"{t}-v{v}" for t, v in ALL])
def test_every_derived_schema_parses_with_fastavro(event_type, version):
    schema = avro_schema(REGISTRY, event_type, version)
    fastavro.parse_schema(schema, named_schemas={})
    assert schema["namespace"] == "sguild." + event_type.replace(".", "_")
    assert "v" not in schema["name"][-2:]  # names carry no version: versions resolve by name


def test_what_avro_cannot_say_is_documented():
    schema = avro_schema(REGISTRY, "intake.amended", 1)
    payload = next(f for f in schema["fields"] if f["name"] == "payload")["type"]
    fields = {f["name"]: f for f in payload["fields"]}
    assert "pattern ^fsm_" in fields["form_submission_id"]["doc"]
    assert "minItems 1" in fields["changed_fields"]["doc"]
    submission = {f["name"]: f for f in fields["submission"]["type"]["fields"]}
    assert "format email" in submission["email"]["doc"]
    assert submission["dob"]["type"] == ["null", {"type": "int", "logicalType": "date"}]
    assert fields["amended_at"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["changed_fields"]["type"]["items"]["type"] == "enum"


def canonical(value, schema: dict[str, Any]):
    """The JSON document Avro gives back: timestamps normalized, optional nulls absent."""
    if (isinstance(value, dict) and schema.get("type") == "object") or "properties" in schema:
        required = set(schema.get("required", []))
        return {
            k: canonical(v, schema["properties"][k]) for k, v in value.items() if not (v is None and k not in required)
        }
    if isinstance(value, list):
        return [canonical(v, schema.get("items", {})) for v in value]
    if isinstance(value, str) and schema.get("format") == "date-time":
        return format_timestamp(parse_timestamp(value))
    return value


def envelope_document(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    now = datetime(2026, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)
    envelope = Envelope(
        "evt_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        event_type,
        version,
        REGISTRY.events[event_type].producer,
        "t1",
        "s1",
        now,
        now,
        payload,
        "corr-1",
        None,
    )
    return cast(dict[str, Any], json.loads(envelope.to_json()))


@pytest.mark.parametrize(("event_type", "version"), WITH_SCHEMA, ids=[f"{t}-v{v}" for t, v in WITH_SCHEMA])
def test_generated_payloads_round_trip_through_avro(event_type, version):
    entry = REGISTRY.lookup(event_type, version)
    assert entry is not None
    schema_file = REGISTRY.schema_file(entry)
    assert schema_file is not None
    json_schema = json.loads(schema_file.read_text())

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(strategy_for(json_schema))
    def check(payload):
        document = envelope_document(event_type, version, payload)
        back = CODEC.decode(CODEC.encode(document))
        assert back == {**document, "payload": canonical(payload, json_schema)}

    check()


def test_schemaless_payloads_travel_as_json_text():
    document = envelope_document("lesson.scheduled", 1, {"any": ["thing", 1, None], "nested": {"ok": True}})
    assert CODEC.decode(CODEC.encode(document)) == document


def test_single_object_encoding_errors_name_what_is_wrong():
    encoded = CODEC.encode(envelope_document("lesson.scheduled", 1, {}))
    assert encoded[:2] == b"\xc3\x01"
    with pytest.raises(DecodeError, match="no C3 01 marker"):
        CODEC.decode(b'{"json": true}', source="t/0/1")
    with pytest.raises(DecodeError, match="unknown Avro schema fingerprint") as info:
        CODEC.decode(encoded[:2] + b"\x00" * 8 + encoded[10:], source="t/0/2")
    assert "t/0/2" in str(info.value)
    with pytest.raises(DecodeError, match="corrupt Avro body"):
        CODEC.decode(encoded[:12])


def test_evolution_report_for_the_shipped_contracts():
    report = {(i.event_type, i.reader, i.writer): i.problems for i in check_evolution(REGISTRY)}
    assert set(report) == {("credit.released", 2, 1), ("intake.captured", 2, 1)}
    assert "reason_code" in report[("credit.released", 2, 1)][0]
    assert "no default" in report[("credit.released", 2, 1)][0]


def record(*fields, name="R"):
    return {"type": "record", "name": name, "fields": list(fields)}


@pytest.mark.parametrize(
    ("reader", "writer"),
    [
        (
            record({"name": "a", "type": "string"}, {"name": "b", "type": ["null", "string"], "default": None}),
            record({"name": "a", "type": "string"}),
        ),
        (record({"name": "n", "type": "long"}), record({"name": "n", "type": "int"})),
        (
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y", "z"]}}),
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}}),
        ),
        (record({"name": "a", "type": ["null", "string"], "default": None}), record({"name": "a", "type": "string"})),
        (
            record({"name": "a", "type": "string"}),
            record({"name": "a", "type": "string"}, {"name": "gone", "type": "int"}),
        ),
    ],
)
def test_crafted_compatible_pairs(reader, writer):
    assert compatibility_problems(reader, writer) == []


@pytest.mark.parametrize(
    ("reader", "writer", "message"),
    [
        (
            record({"name": "a", "type": "string"}, {"name": "b", "type": "string"}),
            record({"name": "a", "type": "string"}),
            "requires field 'b'",
        ),
        (record({"name": "n", "type": "int"}), record({"name": "n", "type": "long"}), "long cannot be read as int"),
        (
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x"]}}),
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}}),
            "lacks symbol(s) y",
        ),
        (
            record({"name": "a", "type": "string"}),
            record({"name": "a", "type": ["null", "string"], "default": None}),
            "null cannot be read as string",
        ),
        (
            record({"name": "a", "type": "string"}, name="R2"),
            record({"name": "a", "type": "string"}),
            "cannot be read as record R2",
        ),
    ],
)
def test_crafted_incompatible_pairs(reader, writer, message):
    problems = compatibility_problems(reader, writer)
    assert any(message in p for p in problems), problems


def test_single_object_header_matches_the_avro_specification():
    from bridge.avro import single_object_header

    # The Avro specification's example: the header for the schema "int".
    assert single_object_header("int") == bytes.fromhex("c3018f5c393f1ad57572")
