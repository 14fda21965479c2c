from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from support.schemas import example_payload

from bridge.contracts import Contracts
from bridge.envelope import Envelope, decode_envelope
from bridge.errors import ValidationError
from bridge.ids import new_event_id

CONTRACTS = Contracts.load()


def released_payload() -> dict[str, Any]:
    return example_payload(CONTRACTS, "credit.released", 2)


def envelope(**changes) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": new_event_id(),
        "event_type": "credit.released",
        "schema_version": 2,
        "producer": "revenue",
        "tenant_id": "t_acme",
        "subject": "crr_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        "occurred_at": datetime(2026, 6, 1, 10, tzinfo=UTC),
        "recorded_at": datetime(2026, 6, 1, 10, tzinfo=UTC),
        "payload": released_payload(),
    }
    fields.update(changes)
    return Envelope(**fields)


@pytest.mark.parametrize("engine", ["rust", "jsonschema"])
def test_a_valid_event_passes(engine):
    Contracts(CONTRACTS.registry, engine=engine).validate(envelope())


@pytest.mark.parametrize("engine", ["rust", "jsonschema"])
def test_envelope_and_payload_violations_are_reported_together(engine):
    document = json.loads(envelope().to_json())
    document["event_id"] = "evt_not-a-uuid"
    document["producer"] = "finance"
    document["payload"]["released_credits"] = 7
    del document["payload"]["reason_code"]
    with pytest.raises(ValidationError) as info:
        Contracts(CONTRACTS.registry, engine=engine).validate_envelope(document, source="sguild.credit.released/0/17")
    pointers = {v.pointer for v in info.value.violations}
    assert pointers == {"/event_id", "/producer", "/payload/released_credits", "/payload/reason_code"}
    assert "sguild.credit.released/0/17" in str(info.value)


def test_unknown_type_or_version_is_not_a_validation_error():
    # Consumers skip types registered after they were deployed; the envelope itself is still checked.
    CONTRACTS.validate(envelope(event_type="credit.refunded", schema_version=1, payload={"x": 1}))
    CONTRACTS.validate(envelope(schema_version=7, payload={"x": 1}))
    with pytest.raises(ValidationError, match="/event_type"):
        CONTRACTS.validate(envelope(event_type="Credit Released"))


def test_decoded_wire_bytes_validate():
    decoded = decode_envelope(envelope().to_json())
    CONTRACTS.validate(decoded)


def test_envelope_schema_and_structural_decoder_agree_on_fields():
    schema = json.loads(CONTRACTS.registry.envelope_schema_file.read_text())
    from bridge.envelope import ENVELOPE_FIELDS

    assert tuple(schema["required"]) == ENVELOPE_FIELDS
    assert list(schema["properties"]) == list(ENVELOPE_FIELDS)
    assert schema["additionalProperties"] is False
