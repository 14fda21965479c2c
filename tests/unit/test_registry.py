from __future__ import annotations

import json
import logging
import shutil
from datetime import date
from pathlib import Path

import pytest

from bridge.contracts import Contracts, Registry, check_contracts
from bridge.errors import (
    InactiveVersionError,
    ProducerMismatchError,
    RegistryError,
    SunsetVersionError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
)
from bridge.resources import shipped_contracts

SHIPPED = shipped_contracts()
RAW = json.loads((SHIPPED / "event-types-registry.json").read_text())


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


def test_shipped_contracts_have_no_problems():
    assert check_contracts() == []


def test_shipped_registry_counts(registry):
    versions = [v for e in registry.events.values() for v in e.versions.values()]
    assert len(registry.events) == 29
    assert len(versions) == 31
    assert len({v.payload_schema for v in versions if v.payload_schema}) == 24


def test_every_fact_of_the_registry_file_is_loaded(registry):
    for name, entry in RAW["events"].items():
        loaded = registry.events[name]
        assert loaded.producer == entry["producer"]
        assert list(loaded.consumers) == entry["consumers"]
        assert loaded.owning_contract == entry["owning_contract"]
        assert sorted(loaded.versions) == [v["version"] for v in entry["schema_versions"]]
        for raw in entry["schema_versions"]:
            version = loaded.versions[raw["version"]]
            assert version.payload_schema == raw["payload_schema"]
            assert version.status == raw["status"]
            assert version.registered_at.isoformat() == raw["registered_at"]
            assert (version.active_from.isoformat() if version.active_from else None) == raw.get("active_from")
            assert (version.deprecated_at.isoformat() if version.deprecated_at else None) == raw.get("deprecated_at")
            assert version.notes == raw.get("notes")
            if version.payload_schema:
                assert registry.schema_file(version).is_file()


def test_registry_is_the_seed_registry_when_the_seed_is_present():
    seed = Path(__file__).resolve().parents[3] / "shared" / "seed" / "event-types-registry.json"
    if not seed.exists():
        pytest.skip(f"seed not present at {seed} (it sits beside the checkout in the workplace)")
    assert json.loads(seed.read_text()) == RAW


def test_subscriptions_follow_the_consumers_lists(registry):
    warehouse = registry.subscriptions("platform-warehouse")
    assert "lead.created" in warehouse
    assert "credit.funded" not in warehouse
    assert registry.subscriptions("coaching") == [
        "coach.assigned",
        "credit.forfeited",
        "credit.locked",
        "credit.released",
        "credit.reserved",
    ]
    assert all(set(e.consumers) <= registry.consumer_names for e in registry.events.values())


# --- emit rules ------------------------------------------------------------------------------------

AFTER_CUTOVER = date(2026, 6, 1)


def test_emit_of_a_registered_active_version(registry):
    version = registry.resolve_for_emit("credit.released", 2, "revenue", today=AFTER_CUTOVER)
    assert version.version == 2
    assert version.payload_schema.endswith("credit.released-v2.json")


def test_unregistered_type_is_refused_with_a_suggestion(registry):
    with pytest.raises(UnknownEventTypeError, match=r"did you mean credit\.released"):
        registry.resolve_for_emit("credit.releasd", 1, "revenue")


def test_unregistered_version_is_refused(registry):
    with pytest.raises(UnknownSchemaVersionError, match="registered: 1, 2"):
        registry.resolve_for_emit("credit.released", 3, "revenue")


def test_wrong_producer_is_refused(registry):
    with pytest.raises(ProducerMismatchError, match="registered producer is 'revenue'"):
        registry.resolve_for_emit("credit.released", 2, "sales", today=AFTER_CUTOVER)


def test_version_not_yet_active_is_refused(registry):
    with pytest.raises(InactiveVersionError, match="active only from 2026-05-22"):
        registry.resolve_for_emit("credit.released", 2, "revenue", today=date(2026, 5, 10))


def test_sunset_version_is_refused(tmp_path):
    root = copy_contracts(tmp_path)
    edit_registry(root, lambda r: r["events"]["credit.released"]["schema_versions"][0].update(status="sunset"))
    registry = Registry.load(root)
    with pytest.raises(SunsetVersionError, match="emit v2"):
        registry.resolve_for_emit("credit.released", 1, "revenue", today=AFTER_CUTOVER)


def test_deprecated_version_is_allowed_counted_and_warned(caplog):
    contracts = Contracts.load()
    with caplog.at_level(logging.WARNING):
        contracts.check_emit("credit.released", 1, "revenue", today=AFTER_CUTOVER)
        contracts.check_emit("credit.released", 1, "revenue", today=AFTER_CUTOVER)
    assert contracts.deprecated_emits[("credit.released", 1)] == 2
    assert "deprecated credit.released v1" in caplog.text
    # Before its deprecated_at date, v1 is plainly active.
    contracts.check_emit("credit.released", 1, "revenue", today=date(2026, 5, 10))
    assert contracts.deprecated_emits[("credit.released", 1)] == 2


def test_consumers_look_up_unknown_types_without_raising(registry):
    assert registry.lookup("credit.refunded", 1) is None
    assert registry.lookup("credit.released", 9) is None
    assert registry.lookup("credit.released", 2).version == 2


# --- broken contracts ------------------------------------------------------------------------------


def copy_contracts(tmp_path: Path) -> Path:
    root = tmp_path / "contracts"
    shutil.copytree(SHIPPED, root)
    return root


def edit_registry(root: Path, change) -> None:
    path = root / "event-types-registry.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))


def problems_of(root: Path) -> list[tuple[str, str, str]]:
    return [(Path(p.file).name, p.pointer, p.message) for p in check_contracts(root)]


def test_every_problem_of_a_broken_set_is_reported_at_once(tmp_path):
    root = copy_contracts(tmp_path)

    def breakage(r):
        released = r["events"]["credit.released"]["schema_versions"]
        released[0]["status"] = "retired"
        released.append(dict(released[1]))  # duplicate version 2
        r["events"]["lead.created"]["producer"] = "marketing"
        r["events"]["lead.created"]["consumers"].append("finance")
        r["events"]["lead.reached"]["schema_versions"][0]["registered_at"] = "2026-13-45"
        r["events"]["lead.reached"]["schema_versions"][0]["colour"] = "blue"
        r["events"]["payment.failed"]["schema_versions"][0]["payload_schema"] = (
            "contracts/payment-flow/schema/payloads/payment.failed-v9.json"
        )
        r["events"]["refund.initiated"]["schema_versions"][0]["payload_schema"] = "../../etc/passwd"

    edit_registry(root, breakage)
    (root / "refund-flow/schema/payloads/refund.completed-v1.json").write_text('{"type": ')
    lead = root / "lead-lifecycle/schema/payloads/lead.created-v1.json"
    schema = json.loads(lead.read_text())
    schema["properties"]["lead_id"]["type"] = 12
    lead.write_text(json.dumps(schema))

    found = problems_of(root)
    registry_file = "event-types-registry.json"
    expected = [
        (registry_file, "/events/credit.released/schema_versions/0/status", "unknown status 'retired'"),
        (registry_file, "/events/credit.released/schema_versions/2/version", "duplicate version 2"),
        (registry_file, "/events/lead.created/producer", "unknown domain 'marketing'"),
        (registry_file, "/events/lead.created/consumers/1", "unknown consumer 'finance'"),
        (registry_file, "/events/lead.reached/schema_versions/0/registered_at", "invalid date '2026-13-45'"),
        (registry_file, "/events/lead.reached/schema_versions/0/colour", "unknown field 'colour'"),
        (registry_file, "/events/payment.failed/schema_versions/0/payload_schema", "does not follow the naming rule"),
        (registry_file, "/events/payment.failed/schema_versions/0/payload_schema", "does not exist"),
        (registry_file, "/events/refund.initiated/schema_versions/0/payload_schema", "points outside"),
        ("refund.completed-v1.json", "", "invalid JSON at line 1 column 10"),
        ("lead.created-v1.json", "/properties/lead_id/type", "invalid JSON Schema"),
    ]
    for file, pointer, message in expected:
        assert any(f == file and p == pointer and message in m for f, p, m in found), (file, pointer, message, found)
    with pytest.raises(RegistryError) as info:
        Registry.load(root)
    assert len(info.value.problems) == len(found)
    assert "unknown status 'retired'" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1 column 2"),
        ("[]", "must be a JSON object"),
        ("{}", "missing or not an object"),
    ],
)
def test_unreadable_registry_file(tmp_path, content, message):
    root = copy_contracts(tmp_path)
    (root / "event-types-registry.json").write_text(content)
    assert any(message in m for _, _, m in problems_of(root))


def test_missing_envelope_schema_and_directory(tmp_path):
    root = copy_contracts(tmp_path)
    (root / "event-envelope/schema/envelope-v1.json").unlink()
    assert ("envelope-v1.json", "", "file not found") in problems_of(root)
    assert "does not exist" in problems_of(tmp_path / "nowhere")[0][2]


def test_empty_versions_and_bad_version_numbers(tmp_path):
    root = copy_contracts(tmp_path)

    def breakage(r):
        r["events"]["lesson.scheduled"]["schema_versions"] = []
        r["events"]["lesson.attended"]["schema_versions"][0]["version"] = 0
        r["events"]["lesson.cancelled"]["schema_versions"][0]["deprecated_at"] = "2020-01-01"
        r["events"]["Bad Name"] = r["events"].pop("coach.assigned")

    edit_registry(root, breakage)
    messages = {(p, m.split(" (")[0]) for _, p, m in problems_of(root)}
    assert ("/events/lesson.scheduled/schema_versions", "must be a non-empty list of schema versions") in messages
    assert ("/events/lesson.attended/schema_versions/0/version", "must be an integer >= 1, got 0") in messages
    assert ("/events/lesson.cancelled/schema_versions/0/deprecated_at", "is before registered_at") in messages
    assert any(p == "/events/Bad Name" for p, _ in messages)
