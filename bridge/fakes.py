"""Realistic fake payloads, generated from the payload schemas (for the demo and load tests).

Understands the keywords the contracts use: types (with null), enum, const, prefixed-UUIDv7 id
patterns, the ZIP and currency patterns, date-time / date / email formats, numeric bounds, arrays,
closed objects and ``if``/``then``/``else`` (by drawing again until the instance validates).
"""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bridge.contracts import Contracts, SchemaValidator, compile_schema
from bridge.ids import new_id

__all__ = ["PayloadFaker"]

_ID_PATTERN = re.compile(r"^\^([a-z][a-z0-9]*)_\[0-9a-f\]\{8\}")
_WORDS = ["maple", "harbor", "violin", "cello", "piano", "drums", "north", "studio", "evening", "weekly"]
_FIRST = ["Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Frances"]
_LAST = ["Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson", "Allen"]


class PayloadFaker:
    """Valid random payloads for every registered ``(event_type, schema_version)``."""

    def __init__(self, contracts: Contracts, seed: int | None = None) -> None:
        self.contracts = contracts
        self.random = random.Random(seed)
        self._schemas: dict[tuple[str, int], tuple[dict[str, Any], SchemaValidator] | None] = {}

    def payload(self, event_type: str, version: int, tenant_id: str) -> dict[str, Any]:
        """A payload that validates against the version's schema (any object when it has none)."""
        entry = self._schema(event_type, version)
        if entry is None:
            return {"tenant_id": tenant_id, "note": self.random.choice(_WORDS), "seq": self.random.randint(1, 10_000)}
        schema, validator = entry
        for _ in range(50):
            instance: dict[str, Any] = self._value(schema, "")  # a payload schema is an object schema
            if "tenant_id" in instance:
                instance["tenant_id"] = tenant_id
            if validator.is_valid(instance):
                return instance
        raise RuntimeError(f"could not generate a valid {event_type} v{version} payload")

    def subject_prefix(self, event_type: str, version: int) -> str:
        """The id prefix of the type's subject (the first id property of its payload)."""
        entry = self._schema(event_type, version)
        if entry is not None:
            for name, sub in entry[0].get("properties", {}).items():
                match = _ID_PATTERN.match(sub.get("pattern", ""))
                if name != "tenant_id" and match:
                    return match.group(1)
        return event_type.split(".", 1)[0][:3]

    def _schema(self, event_type: str, version: int) -> tuple[dict[str, Any], SchemaValidator] | None:
        key = (event_type, version)
        if key not in self._schemas:
            registered = self.contracts.registry.lookup(event_type, version)
            path = self.contracts.registry.schema_file(registered) if registered else None
            if path is None:
                self._schemas[key] = None
            else:
                import json

                schema = json.loads(path.read_text())
                self._schemas[key] = (schema, compile_schema(schema))
        return self._schemas[key]

    def _value(self, schema: dict[str, Any], name: str) -> Any:
        r = self.random
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return r.choice(schema["enum"])
        kinds = schema.get("type", "object")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if "null" in kinds and len(kinds) > 1 and r.random() < 0.2:
            return None
        kind = next(k for k in kinds if k != "null") if any(k != "null" for k in kinds) else "null"
        if kind == "object":
            required = set(schema.get("required", []))
            return {
                key: self._value(sub, key)
                for key, sub in schema.get("properties", {}).items()
                if key in required or r.random() < 0.7
            }
        if kind == "array":
            count = r.randint(max(1, schema.get("minItems", 0)), max(1, schema.get("minItems", 0)) + 2)
            items = [self._value(schema["items"], name) for _ in range(count)]
            if schema.get("uniqueItems"):
                items = list(dict.fromkeys(items))
            return items
        if kind == "integer":
            return r.randint(schema.get("minimum", 0), schema.get("maximum", max(schema.get("minimum", 0), 100)))
        if kind == "number":
            return round(r.uniform(schema.get("minimum", 0), schema.get("maximum", 1000)), 2)
        if kind == "boolean":
            return r.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name)

    def _string(self, schema: dict[str, Any], name: str) -> str:
        r = self.random
        pattern = schema.get("pattern", "")
        match = _ID_PATTERN.match(pattern)
        if match:
            return new_id(match.group(1))
        if pattern == "^[0-9]{5}$":
            return f"{r.randint(1000, 99999):05d}"
        if pattern == "^[A-Z]{3}$":
            return "USD"
        fmt = schema.get("format")
        if fmt == "date-time":
            moment = datetime.now(UTC) - timedelta(minutes=r.randint(0, 600))
            return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        if fmt == "date":
            return (date(2010, 1, 1) + timedelta(days=r.randint(0, 5000))).isoformat()
        if fmt == "email":
            return f"{r.choice(_FIRST).lower()}.{r.choice(_LAST).lower()}@example.com"
        if name == "first_name":
            return r.choice(_FIRST)
        if name == "last_name":
            return r.choice(_LAST)
        if name == "phone":
            return f"(555) {r.randint(100, 999)}-{r.randint(1000, 9999)}"
        return f"{r.choice(_WORDS)}-{r.randint(1, 999)}"
