"""The consumer's lean parser (msgspec, :func:`bridge.envelope.decode_json_object`) accepts and refuses
exactly what the strict reference decoder (:func:`bridge.envelope.decode_json_strictly`) does, with
the same error messages, on generated documents: valid ones, and ones broken in every way the
strict decoder knows (duplicate keys at any depth, NaN and Infinity, out-of-range numbers, lone
surrogates, invalid UTF-8, truncation, a top level that is not an object, escaped colons)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.envelope import decode_json_object, decode_json_strictly
from bridge.errors import DecodeError

keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
objects = st.dictionaries(keys, values, max_size=6)

#: Fragments that break a document the way attackers and buggy producers do.
BREAKERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    '"\\ud800"',
    '"\\udc00x"',
    '"a\\u003ab"',
    '{"k": 1, "k": 2}',
    '{"a": {"b": 1, "b": 1}}',
    "[1, 2,]",
    "01",
    "tru",
]


def outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", decode(data))
    except DecodeError as exc:
        return ("error", str(exc))


def same(left: Any, right: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, float):
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    return bool(left == right)


def check(data: bytes) -> None:
    lean, strict = outcome(decode_json_object, data), outcome(decode_json_strictly, data)
    assert lean[0] == strict[0], (data, lean, strict)
    if lean[0] == "error":
        assert lean[1] == strict[1], data
    else:
        assert same(lean[1], strict[1]), data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(objects)
def test_valid_documents_decode_to_the_same_values(document: dict[str, Any]) -> None:
    check(json.dumps(document).encode())
    check(json.dumps(document, ensure_ascii=False).encode())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(objects, st.sampled_from(BREAKERS), st.integers(min_value=0, max_value=10_000))
@example({"a": 1}, '{"k": 1, "k": 2}', 0)
def test_broken_documents_are_refused_alike(document: dict[str, Any], breaker: str, where: int) -> None:
    """A breaker in value position of a new key, somewhere in the document."""
    text = json.dumps(document)
    position = [i for i, ch in enumerate(text) if ch == "{"]
    at = position[where % len(position)] + 1
    broken = text[:at] + f'"zz{where}": {breaker}' + ("," if text[at] != "}" else "") + text[at:]
    check(broken.encode())


@settings(max_examples=300)
@given(objects, st.integers(min_value=0, max_value=10_000))
def test_a_key_repeated_anywhere_is_refused_alike(document: dict[str, Any], which: int) -> None:
    text = json.dumps(document)
    if not document:
        return
    key = json.dumps(list(document)[which % len(document)])
    check((text[:-1] + f", {key}: 0" + "}").encode())


@settings(max_examples=300)
@given(objects, st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=3))
def test_truncated_or_corrupted_bytes_are_refused_alike(document: dict[str, Any], cut: int, junk: bytes) -> None:
    data = json.dumps(document, ensure_ascii=False).encode()
    check(data[: cut % (len(data) + 1)])
    position = cut % (len(data) + 1)
    check(data[:position] + junk + data[position:])


@given(values)
def test_a_top_level_that_is_not_an_object_is_refused_alike(value: Any) -> None:
    if isinstance(value, dict):
        return
    check(json.dumps(value).encode())
