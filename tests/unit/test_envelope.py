from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.schemas import SAFE_TEXT, timestamps

from bridge.envelope import ENVELOPE_FIELDS, Envelope, decode_envelope, format_timestamp
from bridge.errors import DecodeError, ValidationError
from bridge.ids import new_event_id

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | SAFE_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(SAFE_TEXT, children, max_size=3),
    max_leaves=10,
)

envelopes = st.builds(
    Envelope,
    event_id=st.builds(new_event_id),
    event_type=st.sampled_from(["credit.released", "lead.created", "intake.captured"]),
    schema_version=st.integers(min_value=1, max_value=9),
    producer=st.sampled_from(["growth", "revenue", "sales"]),
    tenant_id=SAFE_TEXT,
    subject=SAFE_TEXT,
    occurred_at=timestamps(),
    recorded_at=timestamps(),
    payload=st.dictionaries(SAFE_TEXT, json_values, max_size=5),
    correlation_id=st.none() | SAFE_TEXT,
    causation_id=st.none() | SAFE_TEXT,
)


def sample(**changes) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": "evt_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        "event_type": "credit.released",
        "schema_version": 2,
        "producer": "revenue",
        "tenant_id": "t_acme",
        "subject": "crr_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6c",
        "occurred_at": datetime(2026, 5, 22, 10, 0, tzinfo=UTC),
        "recorded_at": datetime(2026, 5, 22, 10, 0, 1, 500, tzinfo=UTC),
        "payload": {"b": 1, "a": {"z": [1, 2], "y": "é"}},
    }
    fields.update(changes)
    return Envelope(**fields)


@given(envelopes)
def test_encoding_round_trips(envelope):
    decoded = decode_envelope(envelope.to_json())
    assert decoded.to_json() == envelope.to_json()
    assert decoded.occurred_at == envelope.occurred_at
    assert decoded.payload == json.loads(json.dumps(envelope.payload))


@given(envelopes)
def test_encoding_is_deterministic_whatever_the_payload_key_order(envelope):
    reordered = dataclasses.replace(envelope, payload=dict(reversed(list(envelope.payload.items()))))
    assert reordered.to_json() == envelope.to_json()


def test_wire_form_is_compact_utf8_json_in_field_order_with_sorted_payload():
    value = sample().to_json()
    text = value.decode("utf-8")
    assert " " not in text.replace("crr_", "")  # compact
    assert "é" in text  # UTF-8, not \\u escapes
    assert list(json.loads(text)) == list(ENVELOPE_FIELDS)
    assert text.endswith('"payload":{"a":{"y":"é","z":[1,2]},"b":1}}')
    assert '"recorded_at":"2026-05-22T10:00:01.000500Z"' in text


def test_timestamps_are_normalized_to_utc():
    local = datetime(2026, 5, 22, 5, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert format_timestamp(local) == "2026-05-22T10:00:00.000000Z"


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        sample(occurred_at=datetime(2026, 5, 22))


def test_nan_in_a_payload_cannot_be_encoded():
    with pytest.raises(ValidationError, match="/payload"):
        sample(payload={"x": float("nan")}).to_json()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"event_id": "\xff\xfe"}', "invalid UTF-8 at byte 14"),
        (b'{"event_id": ', "invalid JSON at line 1 column 14"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"text"', "must be a JSON object, got string"),
        (b"null", "must be a JSON object, got null"),
        (b"", "invalid JSON at line 1 column 1"),
    ],
)
def test_decode_names_what_is_wrong(data, message):
    with pytest.raises(DecodeError, match=message) as info:
        decode_envelope(data, source="sguild.credit.released/3/1042")
    assert "sguild.credit.released/3/1042" in str(info.value)


def test_decode_lists_missing_extra_and_mistyped_fields():
    document = json.loads(sample().to_json())
    del document["subject"]
    del document["payload"]
    document["schema_version"] = "2"
    document["occurred_at"] = "yesterday"
    document["colour"] = "blue"
    with pytest.raises(ValidationError) as info:
        decode_envelope(json.dumps(document).encode())
    pointers = {v.pointer for v in info.value.violations}
    assert pointers == {"/subject", "/payload", "/schema_version", "/occurred_at", "/colour"}
    assert info.value.event_id == document["event_id"]
    assert "evt_0190a1b2" in str(info.value)


def test_decode_refuses_timestamps_without_offset():
    document = json.loads(sample().to_json())
    document["recorded_at"] = "2026-05-22T10:00:00"
    with pytest.raises(ValidationError, match="no UTC offset"):
        decode_envelope(json.dumps(document).encode())
