"""The AsyncAPI export (bridge contracts asyncapi), validated against the official AsyncAPI 3.0.0
JSON Schema.

``tests/data/asyncapi-3.0.0.json`` is ``schemas/3.0.0.json`` of the npm package ``@asyncapi/specs``
6.11.1 (Apache-2.0, Copyright 2016-2025 AsyncAPI Initiative), vendored unchanged so the test runs
offline: ``npm pack @asyncapi/specs@6.11.1`` and take that one file to refresh it. It bundles every
definition it refers to (the draft-07 meta-schema and the Kafka bindings included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry as RefRegistry
from referencing import Resource
from referencing.jsonschema import DRAFT7
from typer.testing import CliRunner

from bridge.cli import app
from bridge.contracts import Registry
from bridge.contracts.asyncapi import asyncapi_document
from bridge.topics.catalog import Catalog, catalog_path

SPEC_FILE = Path(__file__).resolve().parents[1] / "data" / "asyncapi-3.0.0.json"
REGISTRY = Registry.load()
CATALOG = Catalog.load(catalog_path(REGISTRY))
runner = CliRunner()


def spec_validator() -> jsonschema.Draft7Validator:
    spec = json.loads(SPEC_FILE.read_text())
    resources = [
        (uri, Resource.from_contents(schema, default_specification=DRAFT7))
        for uri, schema in spec["definitions"].items()
    ]
    return jsonschema.Draft7Validator(spec, registry=RefRegistry().with_resources(resources))


VALIDATOR = spec_validator()
DOCUMENT = asyncapi_document(REGISTRY, CATALOG, servers={"local": "127.0.0.1:9092"})


def spec_errors(document: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message[:200]}" for e in VALIDATOR.iter_errors(document)]


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def test_the_document_is_valid_asyncapi_3():
    assert DOCUMENT["asyncapi"] == "3.0.0"
    assert spec_errors(DOCUMENT) == []


def test_the_validator_does_reject_what_the_specification_forbids():
    broken = json.loads(json.dumps(DOCUMENT))
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2's verb
    broken["channels"]["credit.released"]["bindings"]["kafka"]["partitions"] = 0
    assert len(spec_errors(broken)) >= 2


def test_every_reference_resolves_and_operations_use_their_channels_messages():
    for ref in refs(DOCUMENT):
        resolve(DOCUMENT, ref)
    for operation in DOCUMENT["operations"].values():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/")


def test_a_channel_per_event_type_with_its_versions_and_kafka_bindings():
    channels = DOCUMENT["channels"]
    for name, entry in REGISTRY.events.items():
        channel = channels[name]
        assert channel["address"] == f"sguild.{name}"
        assert sorted(channel["messages"]) == [f"v{v}" for v in sorted(entry.versions)]
        binding = channel["bindings"]["kafka"]
        assert binding["partitions"] == CATALOG.spec_for(name).partitions
        assert binding["topicConfiguration"]["retention.ms"] == CATALOG.spec_for(name).retention_ms
    assert channels["credit.released"]["bindings"]["kafka"]["partitions"] == 12
    assert channels["lead.created"]["bindings"]["kafka"]["partitions"] == 6
    message = DOCUMENT["components"]["messages"]["credit.released.v2"]
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    assert message["headers"]["required"] == [
        "event_id",
        "event_type",
        "schema_version",
        "producer",
        "tenant_id",
        "content-type",
    ]
    assert message["payload"]["allOf"][1]["properties"]["payload"] == {
        "$ref": "#/components/schemas/credit.released.v2.payload"
    }
    assert DOCUMENT["components"]["messages"]["credit.released.v1"]["deprecated"] is True  # deprecated_at set
    assert "deprecated" not in message


def test_consumers_group_ids_dlq_and_replay_channels():
    operations = DOCUMENT["operations"]
    channels = DOCUMENT["channels"]
    send = operations["revenue.send.credit.released"]
    assert send["action"] == "send"
    for consumer in REGISTRY.events["credit.released"].consumers:
        receive = operations[f"{consumer}.receive.credit.released"]
        assert receive["action"] == "receive"
        assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": [f"sguild.{consumer}"]}
        dlq = channels[f"credit.released.dlq.{consumer}"]
        assert dlq["address"] == f"sguild.credit.released.dlq.{consumer}"
        assert dlq["bindings"]["kafka"]["partitions"] == CATALOG.dlq.partitions
        assert operations[f"{consumer}.deadLetter.credit.released"]["action"] == "send"
    for consumer in REGISTRY.active_consumers:
        assert channels[f"{consumer}.dlq-replay"]["address"] == f"sguild.{consumer}.dlq-replay"
        assert operations[f"{consumer}.receive.replay"]["bindings"]["kafka"]["groupId"]["enum"] == [
            f"sguild.{consumer}"
        ]
    dead = DOCUMENT["components"]["messages"]["deadLetter"]
    assert {"dlq.original.topic", "dlq.original.offset", "dlq.reason"} <= set(dead["headers"]["properties"])


def message_validator(key: str) -> jsonschema.Draft202012Validator:
    """The message's payload schema, resolved inside the document (as an AsyncAPI tool would)."""
    return jsonschema.Draft202012Validator(
        {**DOCUMENT, "$ref": f"#/components/messages/{key}/payload"}, format_checker=jsonschema.FormatChecker()
    )


def envelope(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": "evt_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        "event_type": event_type,
        "schema_version": version,
        "producer": REGISTRY.events[event_type].producer,
        "tenant_id": "t1",
        "subject": "s1",
        "occurred_at": "2026-06-01T10:00:00Z",
        "recorded_at": "2026-06-01T10:00:00Z",
        "correlation_id": None,
        "causation_id": None,
        "payload": payload,
    }


def test_message_schemas_mean_what_the_contracts_mean():
    from support.schemas import example_for

    schema_file = REGISTRY.schema_file(REGISTRY.events["credit.released"].versions[2])
    assert schema_file is not None
    example = example_for(json.loads(schema_file.read_text()))
    validator = message_validator("credit.released.v2")
    assert validator.is_valid(envelope("credit.released", 2, example))
    operator_without_operator = {**example, "reason_code": "operator_goodwill", "released_by": None}
    assert not validator.is_valid(envelope("credit.released", 2, operator_without_operator))  # $defs via if/then
    assert not validator.is_valid(envelope("credit.released", 1, example))  # another version's message
    assert not validator.is_valid({**envelope("credit.released", 2, example), "extra": 1})  # the envelope is closed
    schemaless = message_validator("lesson.scheduled.v1")
    assert schemaless.is_valid(envelope("lesson.scheduled", 1, {"anything": True}))


def test_schema_registry_format_is_described():
    document = asyncapi_document(REGISTRY, CATALOG, value_format="registry-avro")
    assert spec_errors(document) == []
    assert document["defaultContentType"] == "application/vnd.confluent.avro"
    binding = document["components"]["messages"]["credit.released.v2"]["bindings"]["kafka"]
    assert binding["schemaIdLocation"] == "payload"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_cli_writes_a_valid_document(tmp_path, monkeypatch, suffix):
    if suffix == ".yaml":
        yaml = pytest.importorskip("yaml")
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", "stage.")
    out = tmp_path / f"asyncapi{suffix}"
    result = runner.invoke(app, ["contracts", "asyncapi", "--out", str(out), "--server", "dev=127.0.0.1:9092"])
    assert result.exit_code == 0, result.output
    assert "wrote AsyncAPI 3.0.0 with" in result.output
    text = out.read_text()
    document = yaml.safe_load(text) if suffix == ".yaml" else json.loads(text)
    assert spec_errors(document) == []
    assert document["channels"]["credit.released"]["address"] == "stage.credit.released"
    assert document["servers"]["dev"] == {
        "host": "127.0.0.1:9092",
        "protocol": "kafka",
        "description": "Kafka bootstrap server 127.0.0.1:9092.",
    }
    bad = runner.invoke(app, ["contracts", "asyncapi", "--out", str(out), "--server", "nohost"])
    assert bad.exit_code == 2
