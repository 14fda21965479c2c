"""Test helpers that read the payload schemas: a deterministic valid example, hypothesis strategies of
valid instances, and every single-constraint mutation of an example.

They understand the subset of JSON Schema the contracts use (type lists, enum, const, pattern,
formats, min/max, minLength, minItems, uniqueItems, closed objects, ``if``/``then``/``else``).
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from bridge.contracts import Contracts, compile_schema
from bridge.errors import json_pointer

UUID7_EXAMPLE = "0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b"
EMAIL_REGEX = r"[a-z]{1,12}(\.[a-z]{1,6})?@[a-z]{2,10}\.(com|org|net|io)"


def types_of(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


# --- one deterministic valid example ---------------------------------------------------------------


def example_for(schema: dict[str, Any]) -> Any:
    """A valid instance with every property present, or ``AssertionError`` if none can be made."""
    validator = compile_schema(schema)
    instance = _full(schema)
    # if/then/else couples fields (an operator reason needs released_by, an auto one forbids it):
    # null out the nullable fields the validator points at until the instance is valid.
    for _ in range(5):
        violations = validator.violations(instance)
        if not violations:
            return instance
        for violation in violations:
            _set(instance, violation.pointer, None)
    raise AssertionError(f"cannot build a valid example of {schema.get('title')}: {violations}")


def _full(schema: dict[str, Any]) -> Any:
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return next(v for v in schema["enum"] if v is not None)
    kinds = [k for k in types_of(schema) if k != "null"] or ["null"]
    kind = kinds[0]
    if kind == "object":
        return {name: _full(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return (
            [_full(schema["items"])] * max(1, schema.get("minItems", 1))
            if not schema.get("uniqueItems")
            else [_full(schema["items"])]
        )
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return schema.get("minimum", 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string_example(schema)


def _string_example(schema: dict[str, Any]) -> str:
    if "pattern" in schema and schema["pattern"].endswith(r"[0-9a-f]{12}$"):
        prefix = schema["pattern"][1:].split("_", 1)[0]
        return f"{prefix}_{UUID7_EXAMPLE}"
    if schema.get("pattern") == "^[0-9]{5}$":
        return "02134"
    if schema.get("pattern") == "^[A-Z]{3}$":
        return "USD"
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-05-22T10:15:00.000000Z"
    if fmt == "date":
        return "2012-03-04"
    if fmt == "email":
        return "ada@example.com"
    return "example"


def _set(instance: Any, pointer: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    target = instance
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if parts:
        key = int(parts[-1]) if isinstance(target, list) else parts[-1]
        target[key] = value


# --- hypothesis strategies -------------------------------------------------------------------------


def strategy_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid instances of ``schema`` (cross-field rules enforced by filtering with the validator)."""
    validator = compile_schema(schema)
    return _strategy(schema).filter(validator.is_valid)


def _strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    options = [_typed(schema, kind) for kind in types_of(schema)]
    return st.one_of(options) if len(options) > 1 else options[0]


def _typed(schema: dict[str, Any], kind: str) -> st.SearchStrategy[Any]:
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**31)), max_value=schema.get("maximum", 2**31))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "array":
        return st.lists(
            _strategy(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 4),
            unique_by=(lambda x: repr(x)) if schema.get("uniqueItems") else None,
        )
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: _strategy(v) for k, v in properties.items() if k in required},
            optional={k: _strategy(v) for k, v in properties.items() if k not in required},
        )
    return _string(schema)


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    fmt = schema.get("format")
    if fmt == "date-time":
        return st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
            lambda d: d.isoformat().replace("+00:00", "Z")
        )
    if fmt == "date":
        return st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)).map(date.isoformat)
    if fmt == "email":
        return st.from_regex(EMAIL_REGEX, fullmatch=True)
    alphabet = st.characters(blacklist_categories=["Cs"])
    return st.text(alphabet, min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 40))


# --- mutations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One broken constraint: where (JSON pointer), which keyword, and the broken document."""

    pointer: str
    keyword: str
    document: Any

    def __str__(self) -> str:
        return f"{self.keyword} at {self.pointer or '/'}"


def mutations(schema: dict[str, Any], example: Any) -> Iterator[Mutation]:
    """For every constraint the example exercises, a copy of the example that breaks only it."""
    yield from _mutate(schema, example, [], example)


def _mutate(schema: dict[str, Any], value: Any, path: list[str | int], root: Any) -> Iterator[Mutation]:
    def broken(new_value: Any, keyword: str) -> Mutation:
        return Mutation(json_pointer(path), keyword, _with(root, path, new_value))

    kinds = types_of(schema)
    if kinds and value is not None:
        wrong = 12345 if "integer" not in kinds and "number" not in kinds else "not-a-number"
        if "object" in kinds or "array" in kinds:
            wrong = "not-a-container"
        yield broken(wrong, "type")
    if "const" in schema:
        yield broken(f"{schema['const']}-not", "const")
    if "enum" in schema:
        yield broken("definitely-not-in-the-enum", "enum")
    if isinstance(value, str):
        if "pattern" in schema:
            yield broken(value + "!", "pattern")
        if "format" in schema:
            yield broken(
                {"date-time": "2026-02-30T25:61:00Z", "date": "2026-02-30", "email": "no-at-sign"}[schema["format"]],
                "format",
            )
        if schema.get("minLength", 0) > 0:
            yield broken("", "minLength")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema:
            yield broken(schema["minimum"] - 1, "minimum")
        if "maximum" in schema:
            yield broken(schema["maximum"] + 1, "maximum")
    if isinstance(value, list):
        if schema.get("minItems", 0) > 0:
            yield broken([], "minItems")
        if schema.get("uniqueItems") and value:
            yield broken([*value, value[0]], "uniqueItems")
        for i, item in enumerate(value):
            yield from _mutate(schema["items"], item, [*path, i], root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            yield Mutation(json_pointer([*path, name]), "required", _without(root, [*path, name]))
        if schema.get("additionalProperties") is False:
            extra = [*path, "unexpected_field"]
            yield Mutation(json_pointer(extra), "additionalProperties", _with(root, extra, 1))
        for name, sub in properties.items():
            if name in value:
                yield from _mutate(sub, value[name], [*path, name], root)


def _without(root: Any, path: list[str | int]) -> Any:
    document = copy.deepcopy(root)
    target = document
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return document


def _with(root: Any, path: list[str | int], value: Any) -> Any:
    if not path:
        return copy.deepcopy(value)
    document = copy.deepcopy(root)
    _set(document, json_pointer(path), value)
    return document


# --- envelopes -------------------------------------------------------------------------------------

SAFE_TEXT = st.text(string.ascii_letters + string.digits + "-_:é✓", min_size=1, max_size=30)


def timestamps() -> st.SearchStrategy[datetime]:
    """Aware datetimes in UTC and in other offsets (the envelope normalizes them to UTC)."""
    offsets = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])
    return st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=offsets)


def example_payload(contracts: Contracts, event_type: str, version: int) -> dict[str, Any]:
    """A valid payload of ``event_type`` ``version``, made from its schema."""
    found = contracts.registry.lookup(event_type, version)
    assert found is not None, f"{event_type} v{version} is not registered"
    schema_file = contracts.registry.schema_file(found)
    assert schema_file is not None, f"{event_type} v{version} has no payload schema"
    payload: dict[str, Any] = example_for(json.loads(schema_file.read_text()))
    return payload
