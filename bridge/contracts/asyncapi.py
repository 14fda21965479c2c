"""An AsyncAPI 3.0 document of every topic bridge uses, from the contracts and the topic catalog.

``bridge contracts asyncapi --out asyncapi.json`` writes it. What it says:

- a **channel** per event type (address ``{prefix}{event_type}``), with one **message** per schema
  version: the envelope (``components/schemas/envelope``) whose ``payload`` is the version's payload
  schema (``components/schemas/<type>.v<n>.payload``), the contract headers, the record key (the
  envelope's subject) and the Kafka bindings (partitions, replicas, retention and cleanup policy
  from the topic catalog);
- a **send** operation per type (its producer domain's relay) and a **receive** operation per
  consumer of it, with the consumer's group id ``{prefix}{consumer}`` as the Kafka binding;
- a **DLQ channel** per type and consumer (``{topic}.dlq.{consumer}``) with the dead-letter headers,
  and a **replay channel** per consumer (``{prefix}{consumer}.dlq-replay``), with their operations.

The payload schemas are JSON Schema 2020-12; AsyncAPI's Schema Object is a superset of draft-07, and
the keywords the contracts use mean the same in both (``$defs`` is reached by JSON pointer; local
``$ref`` are rewritten to point into ``components/schemas``). Validated against the official
AsyncAPI 3.0.0 JSON Schema in ``tests/unit/test_asyncapi.py``.

Knows nothing of Kafka or PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bridge.contracts.registry import Registry
from bridge.topics.naming import dlq_topic_name, group_id, replay_topic_name, topic_name

if TYPE_CHECKING:
    from bridge.topics.catalog import Catalog, TopicSpec

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "write_asyncapi"]

ASYNCAPI_VERSION = "3.0.0"
_KAFKA_BINDING = "0.5.0"
ValueFormat = Literal["json", "avro", "registry-avro", "registry-json"]
_CONTENT_TYPES = {
    "json": "application/json",
    "avro": "application/avro",
    "registry-avro": "application/vnd.confluent.avro",
    "registry-json": "application/vnd.confluent.json",
}
_CONTRACT_HEADERS = {
    "event_id": "The envelope's event_id.",
    "event_type": "The envelope's event_type (the topic's type).",
    "schema_version": "The envelope's schema_version, as decimal text.",
    "producer": "The envelope's producer domain.",
    "tenant_id": "The envelope's tenant_id.",
    "content-type": "How the value is encoded.",
}
_OPTIONAL_HEADERS = {
    "traceparent": "W3C trace context of the emitting transaction, when it had one.",
    "tracestate": "W3C trace state, with traceparent.",
    "bridge-signature": "HMAC-SHA256 over topic, key, value and contract headers (v2;kid=…), when signing is on.",
}
_DLQ_HEADERS = {
    "dlq.original.topic": "Topic the record was read from.",
    "dlq.original.partition": "Its partition.",
    "dlq.original.offset": "Its offset.",
    "dlq.consumer": "The consumer that dead-lettered it.",
    "dlq.error.class": "Qualified class of the error.",
    "dlq.error.message": "The error, naming what is wrong and where.",
    "dlq.error.stacktrace": "The stack trace (bounded), when a handler failed.",
    "dlq.attempts": "Attempts made.",
    "dlq.failed_at": "When it was dead-lettered (RFC 3339).",
    "dlq.reason": "decode, invalid, signature, integrity, unhandled, handler or decision.",
    "dlq.value": "Present when the value was replaced by a marker because the record did not fit.",
}


def asyncapi_document(
    registry: Registry,
    catalog: Catalog,
    *,
    prefix: str | None = None,
    value_format: ValueFormat = "json",
    servers: dict[str, str] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of every topic of ``registry``.

    ``prefix`` defaults to the contracts' topic prefix; ``servers`` maps a name to a Kafka
    ``host:port`` (optional: AsyncAPI does not require servers); ``value_format`` sets the
    messages' content type (the relay's ``BRIDGE_VALUE_FORMAT``).
    """
    prefix = registry.topic_prefix if prefix is None else prefix
    content_type = _CONTENT_TYPES[value_format]
    envelope = _schema(json.loads(registry.envelope_schema_file.read_text(encoding="utf-8")), "envelope")
    schemas: dict[str, Any] = {"envelope": envelope}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    headers = _headers(_CONTRACT_HEADERS, _OPTIONAL_HEADERS)
    for name in sorted(registry.events):
        entry = registry.events[name]
        topic = topic_name(prefix, name)
        channel_messages: dict[str, Any] = {}
        for number in sorted(entry.versions):
            version = entry.versions[number]
            key = f"{name}.v{number}"
            path = registry.schema_file(version)
            if path is not None:
                source = json.loads(path.read_text(encoding="utf-8"))
                schemas[f"{key}.payload"] = _schema(source, f"{key}.payload")
                payload_ref: dict[str, Any] = {"$ref": f"#/components/schemas/{key}.payload"}
                description = str(source.get("description", ""))
            else:
                payload_ref = {"type": "object", "description": "No payload schema: validated only as an object."}
                description = "This version has no payload schema: the payload is validated only as an object."
            status = version.status
            if version.deprecated_at is not None and status == "active":
                status = f"deprecated from {version.deprecated_at.isoformat()}"
            messages[key] = _message(registry, name, number, status, content_type, headers, payload_ref)
            messages[key]["description"] = description or messages[key]["title"]
            channel_messages[f"v{number}"] = {"$ref": f"#/components/messages/{key}"}
        spec = catalog.spec_for(name)
        channels[name] = {
            "address": topic,
            "title": name,
            "description": f"Every schema version of {name}, produced by {entry.producer}. Key: the envelope's "
            "subject (events of one subject share a partition and keep their order).",
            "messages": channel_messages,
            "bindings": {"kafka": _topic_binding(topic, spec)},
        }
        refs = [{"$ref": f"#/channels/{_escape(name)}/messages/{k}"} for k in channel_messages]
        operations[f"{entry.producer}.send.{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{_escape(name)}"},
            "title": f"{entry.producer} publishes {name}",
            "summary": f"The relay of {entry.producer} publishes every committed {name} from its outbox.",
            "messages": refs,
        }
        for consumer in entry.consumers:
            group = group_id(prefix, consumer)
            operations[f"{consumer}.receive.{name}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{_escape(name)}"},
                "title": f"{consumer} consumes {name}",
                "messages": refs,
                "bindings": {
                    "kafka": {"groupId": {"type": "string", "enum": [group]}, "bindingVersion": _KAFKA_BINDING}
                },
            }
            dlq = dlq_topic_name(topic, consumer)
            dlq_channel = f"{name}.dlq.{consumer}"
            channels[dlq_channel] = {
                "address": dlq,
                "title": f"{name} dead letters of {consumer}",
                "description": f"Records of {topic} {consumer} could not apply, with the failure in dlq.* headers.",
                "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
                "bindings": {"kafka": _topic_binding(dlq, catalog.dlq)},
            }
            operations[f"{consumer}.deadLetter.{name}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{_escape(dlq_channel)}"},
                "title": f"{consumer} dead-letters {name}",
                "messages": [{"$ref": f"#/channels/{_escape(dlq_channel)}/messages/deadLetter"}],
            }
    for consumer in registry.active_consumers:
        replay = replay_topic_name(prefix, consumer)
        channel = f"{consumer}.dlq-replay"
        channels[channel] = {
            "address": replay,
            "title": f"Replays for {consumer}",
            "description": "bridge dlq replay sends dead letters back here; only this consumer's group reads it.",
            "messages": {"replayed": {"$ref": "#/components/messages/replayed"}},
            "bindings": {"kafka": _topic_binding(replay, catalog.dlq)},
        }
        operations[f"{consumer}.receive.replay"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{_escape(channel)}"},
            "title": f"{consumer} consumes its replays",
            "messages": [{"$ref": f"#/channels/{_escape(channel)}/messages/replayed"}],
            "bindings": {
                "kafka": {
                    "groupId": {"type": "string", "enum": [group_id(prefix, consumer)]},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }
    messages["deadLetter"] = {
        "name": "deadLetter",
        "title": "Dead letter",
        "summary": "The original record (key, value, headers) plus the dlq.* headers.",
        "description": "The value is the original one, or a small JSON marker (original topic, partition, "
        "offset, size, SHA-256) when the original did not fit the DLQ topic (dlq.value says so).",
        "headers": _headers({}, {**_CONTRACT_HEADERS, **_DLQ_HEADERS}),
        "payload": {"description": "The original record value, in its original encoding, or the marker."},
    }
    messages["replayed"] = {
        "name": "replayed",
        "title": "Replayed dead letter",
        "summary": "A dead letter sent back by bridge dlq replay, with bridge-replay-of naming its original topic.",
        "headers": _headers({"bridge-replay-of": "The topic the record was first read from."}, _CONTRACT_HEADERS),
        "payload": {"description": "The original record value."},
    }
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or f"{prefix or 'bridge'} event contracts",
            "version": registry.registry_version or "0.0.0",
            "description": f"Topics, messages and consumer groups of the contracts in {registry.root.name}/, "
            "generated by bridge contracts asyncapi.",
        },
        "defaultContentType": content_type,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
    if servers:
        document["servers"] = {
            name: {"host": host, "protocol": "kafka", "description": f"Kafka bootstrap server {host}."}
            for name, host in servers.items()
        }
    return document


def _message(
    registry: Registry,
    name: str,
    number: int,
    status: str,
    content_type: str,
    headers: dict[str, Any],
    payload_ref: dict[str, Any],
) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "key": {"type": "string", "description": "The envelope's subject, UTF-8."},
        "bindingVersion": _KAFKA_BINDING,
    }
    if content_type.startswith("application/vnd.confluent"):
        binding.update(
            schemaIdLocation="payload", schemaIdPayloadEncoding="confluent", schemaLookupStrategy="TopicIdStrategy"
        )
    message: dict[str, Any] = {
        "name": f"{name}.v{number}",
        "title": f"{name} v{number}",
        "summary": f"{name} schema_version {number} ({status}), produced by {registry.events[name].producer}.",
        "contentType": content_type,
        "headers": headers,
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/envelope"},
                {
                    "type": "object",
                    "properties": {
                        "event_type": {"const": name},
                        "schema_version": {"const": number},
                        "payload": payload_ref,
                    },
                },
            ]
        },
        "correlationId": {
            "description": "Shared by every event of one business flow.",
            "location": "$message.payload#/correlation_id",
        },
        "bindings": {"kafka": binding},
    }
    if status != "active":
        message["deprecated"] = True
    return message


def _headers(required: dict[str, str], optional: dict[str, str]) -> dict[str, Any]:
    properties = {name: {"type": "string", "description": text} for name, text in {**required, **optional}.items()}
    return {"type": "object", "required": list(required), "properties": properties}


def _topic_binding(topic: str, spec: TopicSpec) -> dict[str, Any]:
    return {
        "topic": topic,
        "partitions": spec.partitions,
        "replicas": spec.replication_factor,
        "topicConfiguration": {
            "cleanup.policy": [p.strip() for p in spec.cleanup_policy.split(",")],
            "retention.ms": spec.retention_ms,
        },
        "bindingVersion": _KAFKA_BINDING,
    }


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _schema(source: dict[str, Any], component: str) -> dict[str, Any]:
    """A JSON Schema as a component: without ``$schema``/``$id`` (the document is the resource), its
    local ``$ref`` pointing into ``components/schemas/<component>``."""
    base = f"#/components/schemas/{_escape(component)}"

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#/") else rewrite(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    schema: dict[str, Any] = rewrite({k: v for k, v in source.items() if k not in ("$schema", "$id")})
    if "$id" in source:
        schema["x-source-id"] = source["$id"]
    return schema


def write_asyncapi(document: dict[str, Any], out: str | Path) -> Path:
    """Write the document as JSON (``.json``) or YAML (``.yaml``/``.yml``, needs PyYAML)."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped,unused-ignore]  # untyped unless the dev extra's types-PyYAML is installed

        target.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    else:
        target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target
