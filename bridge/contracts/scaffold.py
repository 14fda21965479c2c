"""``bridge init DIR``: a minimal contracts set of one's own, and a topic catalog.

Writes ``DIR/contracts/`` (``contracts.toml`` naming the organisation's domains, a registry with one
example event type, the envelope schema with those domains as its ``producer`` enum, the example's
payload schema) and ``DIR/topics/catalog.toml``. ``BRIDGE_CONTRACTS_PATH=DIR/contracts`` then
points every command and the library at it. Pure: writes files, knows nothing of a broker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.contracts.registry import ENVELOPE_SCHEMA_PATH, MANIFEST_FILE, REGISTRY_FILE
from bridge.errors import ConfigurationError
from bridge.resources import shipped_contracts

__all__ = ["Scaffold", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class Scaffold:
    """What ``bridge init`` makes."""

    domains: tuple[str, ...]
    warehouse: str = "warehouse"
    topic_prefix: str = "events."
    event_type: str = "order.placed"

    def check(self) -> None:
        problems = [
            f"{name!r} is not a name (lower-case letters, digits, - or _)"
            for name in self.domains
            if not _NAME.match(name)
        ]
        if not self.domains:
            problems.append("give at least one producing domain (--domain)")
        if not _NAME.match(self.warehouse) or self.warehouse in self.domains:
            problems.append(f"warehouse consumer {self.warehouse!r} must be a name that is not a domain")
        if not _PREFIX.match(self.topic_prefix):
            problems.append(f"topic prefix {self.topic_prefix!r}: letters, digits, '.', '_' and '-' only")
        if problems:
            raise ConfigurationError("bridge init: " + "; ".join(problems))


def scaffold(directory: Path, spec: Scaffold) -> list[Path]:
    """Write the contracts and catalog of ``spec`` under ``directory``; refuse to overwrite."""
    spec.check()
    contracts, topics = directory / "contracts", directory / "topics"
    for existing in (contracts, topics):
        if existing.exists() and any(existing.iterdir()):
            raise ConfigurationError(f"{existing} exists and is not empty: bridge init writes only new directories")
    producer = spec.domains[0]
    consumers = [*spec.domains[1:2], spec.warehouse]
    payload_path = f"contracts/{producer}/schema/payloads/{spec.event_type}-v1.json"
    files: dict[Path, str] = {
        contracts / MANIFEST_FILE: _manifest(spec),
        contracts / REGISTRY_FILE: _json(_registry(spec, producer, consumers, payload_path)),
        contracts / ENVELOPE_SCHEMA_PATH: _json(_envelope(spec)),
        directory / payload_path: _json(_payload(spec)),
        topics / "catalog.toml": _CATALOG,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


_CATALOG = """\
# How `bridge topics apply` provisions your topics: one per event type ([defaults], changed per type
# by [overrides."<event_type>"]), one DLQ per (type, consumer) and one replay topic per consumer
# ([dlq]). replication_factor and min_insync_replicas suit a three-broker cluster; on a single-node
# development broker, `bridge topics apply --fit-replication` lowers them to fit.
[defaults]
partitions = 6
replication_factor = 3
min_insync_replicas = 2
retention_ms = 604800000        # 7 days
cleanup_policy = "delete"

[dlq]
partitions = 1
replication_factor = 3
min_insync_replicas = 2
retention_ms = 2592000000       # 30 days to inspect and replay
cleanup_policy = "delete"
"""


def _json(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _manifest(spec: Scaffold) -> str:
    domains = ", ".join(json.dumps(d) for d in spec.domains)
    return (
        "# The organisation bridge works for (see bridge's README, 'Contracts of your own').\n"
        f'topic_prefix = "{spec.topic_prefix}"\n'
        f"domains = [{domains}]\n"
        f'consumers = ["{spec.warehouse}"]\n'
        f'warehouse_consumer = "{spec.warehouse}"\n'
        'compatibility = "backward"\n'
        f'avro_namespace = "{spec.topic_prefix.strip(".").replace("-", "_").replace(".", "_") or "events"}"\n'
        'topic_catalog = "../topics/catalog.toml"\n'
    )


def _registry(spec: Scaffold, producer: str, consumers: list[str], payload_path: str) -> dict[str, Any]:
    return {
        "registry_version": "0.1.0",
        "events": {
            spec.event_type: {
                "producer": producer,
                "consumers": consumers,
                "owning_contract": None,
                "schema_versions": [
                    {
                        "version": 1,
                        "payload_schema": payload_path,
                        "status": "active",
                        "registered_at": "2026-01-01",
                        "notes": "An example: replace it with your own event types.",
                    }
                ],
            }
        },
    }


def _envelope(spec: Scaffold) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads((shipped_contracts() / ENVELOPE_SCHEMA_PATH).read_text(encoding="utf-8"))
    envelope["properties"]["producer"]["enum"] = list(spec.domains)
    envelope.pop("$id", None)
    return envelope


def _payload(spec: Scaffold) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{spec.event_type} v1",
        "description": "An example payload: an order was placed.",
        "type": "object",
        "additionalProperties": False,
        "required": ["order_id", "total_cents", "placed_at"],
        "properties": {
            "order_id": {"type": "string", "minLength": 1, "description": "The order."},
            "total_cents": {"type": "integer", "minimum": 0, "description": "What it costs, in cents."},
            "placed_at": {"type": "string", "format": "date-time", "description": "When it was placed."},
            "note": {"type": ["string", "null"], "description": "Anything the customer wrote."},
        },
    }
