"""Every payload schema: a valid example passes, and breaking any single constraint fails with a
JSON pointer to the broken field, in both validation engines. Plus the notes-driven rules."""

from __future__ import annotations

import json
import re
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.schemas import example_for, mutations, strategy_for

from bridge.contracts import Contracts, Registry
from bridge.errors import ValidationError, Violation

REGISTRY = Registry.load()
CONTRACTS = {engine: Contracts(REGISTRY, engine=engine) for engine in ("rust", "jsonschema")}
PAIRS = sorted(
    (name, number)
    for name, entry in REGISTRY.events.items()
    for number, version in entry.versions.items()
    if version.payload_schema
)
IDS = [f"{name}-v{number}" for name, number in PAIRS]


def schema_of(event_type: str, version: int) -> dict[str, Any]:
    entry = REGISTRY.lookup(event_type, version)
    assert entry is not None
    path = REGISTRY.schema_file(entry)
    assert path is not None
    return cast(dict[str, Any], json.loads(path.read_text()))


def violations(engine: str, event_type: str, version: int, payload) -> list[Violation]:
    try:
        CONTRACTS[engine].validate_payload(event_type, version, payload)
    except ValidationError as exc:
        return exc.violations
    return []


def test_there_are_24_payload_schemas():
    assert len(PAIRS) == 24


@pytest.mark.parametrize("engine", ["rust", "jsonschema"])
@pytest.mark.parametrize(("event_type", "version"), PAIRS, ids=IDS)
def test_example_passes_and_every_single_constraint_break_fails_with_its_pointer(engine, event_type, version):
    schema = schema_of(event_type, version)
    example = example_for(schema)
    assert violations(engine, event_type, version, example) == []
    broken = list(mutations(schema, example))
    assert len(broken) >= 8, "an example should exercise the schema's constraints"
    for mutation in broken:
        found = violations(engine, event_type, version, mutation.document)
        pointers = {v.pointer for v in found}
        assert "/payload" + mutation.pointer in pointers, f"{mutation}: {found}"


@pytest.mark.parametrize(("event_type", "version"), PAIRS, ids=IDS)
def test_house_style(event_type, version):
    """Descriptions everywhere, tenant_id, closed objects, prefixed UUIDv7 ids, a stable $id."""
    entry = REGISTRY.lookup(event_type, version)
    assert entry is not None
    path = REGISTRY.schema_file(entry)
    assert path is not None
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schema/payloads/{event_type}-v{version}.json")
    assert schema["title"] == f"{event_type} payload v{version}"
    assert "tenant_id" in schema["required"]

    def walk(node: dict[str, Any], where: str, described: bool = True) -> None:
        # Array items may go undescribed (the seed's intake.amended does so): the array says it all.
        assert node.get("description") or not described, f"{path.name}{where}: no description"
        kinds = node.get("type", [])
        if "object" in (kinds if isinstance(kinds, list) else [kinds]):
            assert node.get("additionalProperties") is False, f"{path.name}{where}: object not closed"
            for name, sub in node.get("properties", {}).items():
                if name.endswith("_id") and name not in {"tenant_id", "provider_payment_id", "provider_refund_id"}:
                    assert re.fullmatch(r"\^[a-z]{3}_.*7\[0-9a-f\]\{3\}.*\$", sub.get("pattern", "")), (
                        f"{path.name}{where}/{name}: ids are prefixed UUIDv7"
                    )
                walk(sub, f"{where}/properties/{name}")
        if "items" in node:
            walk(node["items"], f"{where}/items", described=False)

    walk(schema, "")


# --- rules from the registry notes -----------------------------------------------------------------


def valid(event_type: str, version: int) -> dict[str, Any]:
    payload: dict[str, Any] = example_for(schema_of(event_type, version))
    return payload


def pointers(event_type: str, version: int, payload: dict[str, Any]) -> set[str]:
    return {v.pointer for v in violations("rust", event_type, version, payload)}


def test_customer_handoff_carries_exactly_its_four_facts():
    schema = schema_of("customer.handoff", 1)
    assert set(schema["required"]) == {
        "tenant_id",
        "person_id",
        "first_lesson_id",
        "credit_reservation_id",
        "handoff_at",
    }


def test_credit_released_v2_requires_a_reason_code_from_its_two_subsets():
    payload = valid("credit.released", 2)
    del payload["reason_code"]
    assert "/payload/reason_code" in pointers("credit.released", 2, payload)
    # v1 has no reason_code at all.
    v1 = valid("credit.released", 1)
    assert "/payload/reason_code" in pointers("credit.released", 1, {**v1, "reason_code": "auto_unfunded_at_lock"})


@pytest.mark.parametrize(
    ("reason", "released_by", "ok"),
    [
        ("auto_coach_unavailable", None, True),
        ("auto_coach_unavailable", "op_17", False),
        ("operator_goodwill", "op_17", True),
        ("operator_goodwill", None, False),
    ],
)
def test_credit_released_v2_operator_reasons_name_the_operator(reason, released_by, ok):
    payload = {**valid("credit.released", 2), "reason_code": reason, "released_by": released_by}
    assert (pointers("credit.released", 2, payload) == set()) is ok
    if not ok:
        assert "/payload/released_by" in pointers("credit.released", 2, payload)


@pytest.mark.parametrize(("path", "ok"), [("invoice_paid", True), ("active_charge", True), ("wire_transfer", False)])
def test_payment_received_payment_path(path, ok):
    payload = valid("payment.received", 1)
    payload.update(payment_path=path, invoice_id=payload["invoice_id"] if path == "invoice_paid" else None)
    assert (pointers("payment.received", 1, payload) == set()) is ok


@pytest.mark.parametrize(("attempt", "ok"), [(0, False), (1, True), (4, True), (5, False)])
def test_lead_reached_attempt_number_is_1_to_4(attempt, ok):
    payload = {**valid("lead.reached", 1), "attempt_number": attempt}
    assert (pointers("lead.reached", 1, payload) == set()) is ok


@pytest.mark.parametrize(("reason", "ok"), [("late_cancel", True), ("no_show", True), ("coach_cancel", False)])
def test_credit_forfeited_reason(reason, ok):
    payload = {**valid("credit.forfeited", 1), "forfeiture_reason": reason}
    assert (pointers("credit.forfeited", 1, payload) == set()) is ok


def test_types_without_a_payload_schema_accept_any_object_only():
    contracts = CONTRACTS["rust"]
    contracts.validate_payload("lesson.scheduled", 1, {"anything": [1, 2]})
    with pytest.raises(ValidationError, match="/payload: must be an object"):
        contracts.validate_payload("lesson.scheduled", 1, ["not", "an", "object"])


# --- generated payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(("event_type", "version"), PAIRS, ids=IDS)
def test_generated_payloads_pass_and_mutated_ones_fail_with_a_pointer(event_type, version):
    schema = schema_of(event_type, version)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(payload=strategy_for(schema), pick=st.integers(min_value=0))
    def check(payload, pick):
        for engine in ("rust", "jsonschema"):
            assert violations(engine, event_type, version, payload) == [], (engine, payload)
        candidates = list(mutations(schema, payload))
        mutation = candidates[pick % len(candidates)]
        for engine in ("rust", "jsonschema"):
            found = {v.pointer for v in violations(engine, event_type, version, mutation.document)}
            assert "/payload" + mutation.pointer in found, (engine, str(mutation), found)

    check()
