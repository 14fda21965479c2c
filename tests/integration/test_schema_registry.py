"""Schema Registry mode against a real registry (Apicurio Registry's Confluent API, started by the
fixture, or BRIDGE_TEST_SCHEMA_REGISTRY_URL): the relay registers the envelope+payload schema of each
(type, version) and writes the Confluent wire format; a bridge consumer reads and applies it; a plain
confluent-kafka AvroDeserializer decodes it too (what a JVM or Kafka Connect consumer does); and
``contracts check --registry`` reports an incompatible local change with the registry's verdict."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from support.consumer import APP_TYPE, applied, consumer_thread, counting_app, create_applied_table
from support.kafka import create_topics, read_all
from support.outbox import CONTRACTS, relay_thread, wait_until
from support.schemas import example_for
from typer.testing import CliRunner

from bridge.avro import avro_schema
from bridge.cli import app
from bridge.config import SchemaRegistrySettings
from bridge.envelope import Envelope
from bridge.errors import DecodeError
from bridge.resources import shipped_contracts
from bridge.schema_registry import (
    SchemaRegistryDecoder,
    SchemaRegistryEncoder,
    SchemaRegistryRefusedError,
    SchemaRegistryUnavailableError,
    client_for,
    registry_schema,
)

pytestmark = pytest.mark.integration
REGISTRY = CONTRACTS.registry
RELEASED = "credit.released"


def released_payload() -> dict[str, Any]:
    path = REGISTRY.schema_file(REGISTRY.events[RELEASED].versions[2])
    assert path is not None
    payload: dict[str, Any] = example_for(json.loads(path.read_text()))
    return payload


def envelope_document(event_type: str, version: int, payload: dict[str, Any], subject: str = "s1") -> dict[str, Any]:
    now = datetime(2026, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)
    producer = REGISTRY.events[event_type].producer
    envelope = Envelope(
        "evt_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b", event_type, version, producer, "t1", subject, now, now, payload
    )
    document: dict[str, Any] = json.loads(envelope.to_json())
    return document


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_relay_writes_the_wire_format_and_a_consumer_applies_it(relay_env, schema_registry_service, fmt):
    url = schema_registry_service.url
    registry_settings = SchemaRegistrySettings(url=url, format=fmt)
    settings = relay_env.settings(schema_registry=registry_settings)
    topic, released_topic = relay_env.topic(APP_TYPE), relay_env.topic(RELEASED)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching", released_topic])
    create_applied_table(relay_env)
    with psycopg.connect(relay_env.database_url) as conn:
        coached = [
            relay_env.outbox("delivery").emit(conn, APP_TYPE, 1, f"coa_{i}", "t", {"seq": 1, "coach": f"c{i}"})
            for i in range(3)
        ]
        payload = released_payload()
        released = relay_env.outbox("revenue").emit(conn, RELEASED, 2, payload["credit_reservation_id"], "t", payload)
        conn.commit()
    with relay_thread(relay_env, settings) as relay:
        wait_until(lambda: relay.published == 4, message="publication in the Confluent wire format")
    client = SchemaRegistryClient({"url": url})
    content_type = f"application/vnd.confluent.{fmt}".encode()
    records = read_all(relay_env.bootstrap, [topic, released_topic], expect=4)
    for record in records:
        assert record.headers["content-type"] == content_type
        assert record.value is not None
        assert record.value[0] == 0  # magic byte, then the 4-byte big-endian schema id
        schema_id = int.from_bytes(record.value[1:5], "big")
        event_type = record.headers["event_type"].decode()
        version = int(record.headers["schema_version"])
        registered = client.get_schema(schema_id)  # the id resolves in the registry...
        expected, _ = registry_schema(REGISTRY, event_type, version, fmt)
        assert registered.schema_type == expected.schema_type  # ...to the envelope+payload schema
        assert json.loads(registered.schema_str or "") == json.loads(expected.schema_str or "")
        subject = f"{relay_env.prefix}{event_type}-value"  # the topic-name strategy
        assert schema_id in [client.get_version(subject, v).schema_id for v in client.get_versions(subject)]
        assert client.get_compatibility(subject) == "BACKWARD"  # the contracts' mode, set on the subject
    if fmt == "avro":
        # What a JVM or Kafka Connect consumer does: a stock deserializer, the writer's schema by id.
        (record,) = [r for r in records if r.topic == released_topic]
        assert record.value is not None
        value = AvroDeserializer(client)(record.value, SerializationContext(released_topic, MessageField.VALUE))
        assert isinstance(value, dict)
        assert value["event_id"] == released.event_id
        assert value["payload"]["reason_code"] == payload["reason_code"]
        assert value["payload"]["released_at"] == datetime(2026, 5, 22, 10, 15, tzinfo=UTC)
    with consumer_thread(relay_env, counting_app(relay_env.schema), settings) as runner:
        wait_until(lambda: runner.applied == 3, message="the consumer to apply the registry records")
        assert runner.dead_lettered == 0
    assert sorted(row[0] for row in applied(relay_env)) == sorted(e.event_id for e in coached)


def test_records_round_trip_and_errors_name_what_is_wrong(schema_registry_service, unique_name):
    url = schema_registry_service.url
    prefix = unique_name("sr") + "."
    encoder = SchemaRegistryEncoder(
        REGISTRY, client_for(SchemaRegistrySettings(url=url)), topic_prefix=prefix, compatibility="backward", url=url
    )
    decoder = SchemaRegistryDecoder(client_for(SchemaRegistrySettings(url=url)), url=url, retry_for=0)
    for event_type, version in [(RELEASED, 2), ("intake.captured", 2), ("lesson.scheduled", 1)]:
        path = REGISTRY.schema_file(REGISTRY.events[event_type].versions[version])
        payload = example_for(json.loads(path.read_text())) if path is not None else {"free": [1, {"x": None}]}
        document = envelope_document(event_type, version, payload)
        assert decoder.decode(encoder.encode(document)) == document
    data = encoder.encode(envelope_document(RELEASED, 2, released_payload()))
    with pytest.raises(DecodeError, match="magic byte 0"):
        decoder.decode(b'{"json": true}', source="t/0/1")
    with pytest.raises(DecodeError, match="unknown schema id 2147483647"):
        decoder.decode(b"\x00\x7f\xff\xff\xff" + data[5:], source="t/0/2")
    with pytest.raises(DecodeError, match="corrupt value"):
        decoder.decode(data[:7], source="t/0/3")
    dead = SchemaRegistryDecoder(client_for(SchemaRegistrySettings(url="http://127.0.0.1:9")), retry_for=0)
    with pytest.raises(SchemaRegistryUnavailableError) as unavailable:
        dead.decode(data)
    assert unavailable.value.retriable


def test_an_incompatible_version_is_refused_with_the_registry_status(schema_registry_service, unique_name):
    url = schema_registry_service.url
    prefix = unique_name("sr") + "."
    encoder = SchemaRegistryEncoder(
        REGISTRY, client_for(SchemaRegistrySettings(url=url)), topic_prefix=prefix, compatibility="backward", url=url
    )
    v1 = {k: v for k, v in released_payload().items() if k != "reason_code"}
    encoder.encode(envelope_document(RELEASED, 1, v1))
    # v2 adds the required reason_code without a default: BACKWARD refuses it (HTTP 409). The shipped
    # contracts published both together; on a registry that pair needs another mode for the subject
    # (BRIDGE_SCHEMA_REGISTRY__COMPATIBILITY). FORWARD accepts it (a v1 reader skips reason_code). On
    # Apicurio, a subject set to NONE falls back to the global rule, so NONE would not do there.
    with pytest.raises(SchemaRegistryRefusedError) as refused:
        encoder.encode(envelope_document(RELEASED, 2, released_payload()))
    assert refused.value.status == 409
    assert refused.value.subject == f"{prefix}{RELEASED}-value"
    assert "the relay cannot publish it" in str(refused.value)
    relaxed = SchemaRegistryEncoder(
        REGISTRY, client_for(SchemaRegistrySettings(url=url)), topic_prefix=prefix, compatibility="forward", url=url
    )
    assert relaxed.encode(envelope_document(RELEASED, 2, released_payload()))[0] == 0


def test_contracts_check_registry_reports_an_incompatible_local_change(
    schema_registry_service, unique_name, tmp_path, monkeypatch
):
    url = schema_registry_service.url
    prefix = unique_name("sr") + "."
    encoder = SchemaRegistryEncoder(
        REGISTRY, client_for(SchemaRegistrySettings(url=url)), topic_prefix=prefix, compatibility="backward", url=url
    )
    encoder.schema_id(RELEASED, 2)  # what a relay registered
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", prefix)
    runner = CliRunner()
    same = runner.invoke(app, ["contracts", "check", "--registry", url])
    assert same.exit_code == 0, same.output
    assert "1 version(s) registered as they are" in same.output
    assert "credit.released v1" in same.output  # not registered: compatible under BACKWARD, said as a note
    root = tmp_path / "contracts"
    shutil.copytree(shipped_contracts(), root)
    shutil.copytree(shipped_contracts().parent / "topics", tmp_path / "topics")
    payloads = Path("contracts/credit-reservation-lock/schema/payloads")
    v3 = json.loads((root.parent / payloads / "credit.released-v2.json").read_text())
    v3["properties"]["channel"] = {"type": "string", "description": "How the release was requested."}
    v3["required"].append("channel")
    (root.parent / payloads / "credit.released-v3.json").write_text(json.dumps(v3))
    registry_file = root / "event-types-registry.json"
    document = json.loads(registry_file.read_text())
    document["events"][RELEASED]["schema_versions"].append(
        {
            "version": 3,
            "payload_schema": str(payloads / "credit.released-v3.json"),
            "status": "active",
            "registered_at": "2026-06-01",
        }
    )
    registry_file.write_text(json.dumps(document))
    changed = runner.invoke(app, ["contracts", "check", "--path", str(root), "--registry", url])
    assert changed.exit_code == 1, changed.output
    subject = f"{prefix}{RELEASED}-value"
    assert f"refuses credit.released v3 under subject {subject} (BACKWARD)" in changed.output
    assert "credit.released-v3.json#/properties/channel" in changed.output
    assert "the reader requires field 'channel', which older data lacks, and it has no default" in changed.output
    assert avro_schema(REGISTRY, RELEASED, 2)["name"] == "CreditReleased"


def test_a_consumer_reads_wire_format_records_of_a_producer_that_writes_no_headers(relay_env, schema_registry_service):
    """A JVM producer or Kafka Connect with a Schema Registry writes the Confluent wire format and
    none of bridge's headers (no content-type): the consumer reads the value by its schema id."""
    url = schema_registry_service.url
    topic = relay_env.topic(APP_TYPE)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching"])
    create_applied_table(relay_env)
    encoder = SchemaRegistryEncoder(
        REGISTRY,
        client_for(SchemaRegistrySettings(url=url)),
        topic_prefix=relay_env.prefix,
        compatibility="backward",
        url=url,
    )
    documents = [envelope_document(APP_TYPE, 1, {"seq": 1}, subject=f"coa_{i}") for i in range(3)]
    for i, document in enumerate(documents):
        document["event_id"] = f"evt_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a7{i}"
    producer = Producer({"bootstrap.servers": relay_env.bootstrap})
    for document in documents:
        producer.produce(topic, key=document["subject"].encode(), value=encoder.encode(document))  # no headers
    producer.flush(30)
    settings = relay_env.settings(
        schema_registry=SchemaRegistrySettings(url=url), consumer={"missing_headers": "tolerate"}
    )
    with consumer_thread(relay_env, counting_app(relay_env.schema), settings) as runner:
        wait_until(lambda: runner.applied + runner.dead_lettered == 3, message="the headerless records")
        assert runner.dead_lettered == 0
    assert sorted(row[0] for row in applied(relay_env)) == sorted(d["event_id"] for d in documents)
