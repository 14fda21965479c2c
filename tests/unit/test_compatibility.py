"""The compatibility gate (bridge contracts check --against): the JSON Schema differ rule by rule in
both directions, transitive and not, published versions edited in place or removed, git refs and
directories as baselines, and the CLI's list of file#pointer problems."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.contracts import Registry
from bridge.contracts.compatibility import (
    baseline_contracts,
    check_compatibility,
    pairs_to_judge,
    reader_problems,
    require_compatible,
)
from bridge.errors import CompatibilityError, ConfigurationError
from bridge.resources import shipped_contracts

runner = CliRunner()
PAYLOADS = "contracts/credit-reservation-lock/schema/payloads"


# --- the differ, rule by rule ---------------------------------------------------------------------


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], **extra}


def backward(new: Any, old: Any) -> list[tuple[str, str]]:
    """Problems of a new schema reading old data."""
    return reader_problems(new, old, reader_is_new=True)


def forward(new: Any, old: Any) -> list[tuple[str, str]]:
    """Problems of old readers reading new data."""
    return reader_problems(old, new, reader_is_new=False)


# (name, old, new, what backward reports, what forward reports): each rule both ways.
RULES = [
    (
        "required added without default",
        obj({"a": {"type": "string"}}, ["a"], additionalProperties=False),
        obj({"a": {"type": "string"}, "b": {"type": "string"}}, ["a", "b"], additionalProperties=False),
        [("/properties/b", "required property 'b' added without a default")],
        [("/properties/b", "property 'b' added to a closed object")],
    ),
    (
        "required added with a default",
        obj({"a": {"type": "string"}}, ["a"], additionalProperties=False),
        obj({"a": {"type": "string"}, "b": {"type": "string", "default": "x"}}, ["a", "b"], additionalProperties=False),
        [],
        [("/properties/b", "property 'b' added to a closed object")],
    ),
    (
        "type narrowed",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "integer"}}),
        [("/properties/a/type", 'type narrowed from "string" to "integer"')],
        [("/properties/a/type", 'type widened from "string" to "integer"')],
    ),
    (
        "null dropped",
        obj({"a": {"type": ["string", "null"]}}),
        obj({"a": {"type": "string"}}),
        [("/properties/a/type", 'type narrowed from ["null", "string"] to "string"')],
        [],
    ),
    (
        "integer widened to number",
        obj({"a": {"type": "integer"}}),
        obj({"a": {"type": "number"}}),
        [],
        [("/properties/a/type", 'type widened from "integer" to "number"')],
    ),
    (
        "enum value removed",
        obj({"a": {"type": "string", "enum": ["x", "y"]}}),
        obj({"a": {"type": "string", "enum": ["x"]}}),
        [("/properties/a/enum", 'enum value(s) removed: "y"')],
        [],
    ),
    (
        "enum value added",
        obj({"a": {"type": "string", "enum": ["x"]}}),
        obj({"a": {"type": "string", "enum": ["x", "y"]}}),
        [],
        [("/properties/a/enum", 'enum value(s) added: "y"')],
    ),
    (
        "additionalProperties false newly set",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "string"}}, additionalProperties=False),
        [("/additionalProperties", "additionalProperties: false newly set")],
        [],
    ),
    (
        "property removed from a closed object",
        obj({"a": {"type": "string"}, "b": {"type": "string"}}, additionalProperties=False),
        obj({"a": {"type": "string"}}, additionalProperties=False),
        [("/properties/b", "property 'b' removed from a closed object")],
        [],
    ),
    (
        "minLength raised",
        obj({"a": {"type": "string", "minLength": 1}}),
        obj({"a": {"type": "string", "minLength": 3}}),
        [("/properties/a/minLength", "minLength changed from 1 to 3")],
        [],
    ),
    (
        "maxLength lowered",
        obj({"a": {"type": "string", "maxLength": 10}}),
        obj({"a": {"type": "string", "maxLength": 5}}),
        [("/properties/a/maxLength", "maxLength changed from 10 to 5")],
        [],
    ),
    (
        "maxLength added",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "string", "maxLength": 5}}),
        [("/properties/a/maxLength", "maxLength 5 added")],
        [],
    ),
    (
        "minimum raised",
        obj({"a": {"type": "integer", "minimum": 0}}),
        obj({"a": {"type": "integer", "minimum": 1}}),
        [("/properties/a/minimum", "minimum changed from 0 to 1")],
        [],
    ),
    (
        "maximum lowered",
        obj({"a": {"type": "integer", "maximum": 10}}),
        obj({"a": {"type": "integer", "maximum": 9}}),
        [("/properties/a/maximum", "maximum changed from 10 to 9")],
        [],
    ),
    (
        "pattern changed",
        obj({"a": {"type": "string", "pattern": "^a"}}),
        obj({"a": {"type": "string", "pattern": "^ab"}}),
        [("/properties/a/pattern", "pattern changed from '^a' to '^ab'")],
        [("/properties/a/pattern", "pattern changed from '^a' to '^ab'")],
    ),
    (
        "format added",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "string", "format": "email"}}),
        [("/properties/a/format", "format 'email' added")],
        [],
    ),
    (
        "minItems raised and uniqueItems set",
        obj({"a": {"type": "array", "items": {"type": "string"}}}),
        obj({"a": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}}),
        [("/properties/a/minItems", "minItems 1 added"), ("/properties/a/uniqueItems", "uniqueItems added")],
        [],
    ),
    (
        "array items narrowed",
        obj({"a": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}}}),
        obj({"a": {"type": "array", "items": {"type": "string", "enum": ["x"]}}}),
        [("/properties/a/items/enum", 'enum value(s) removed: "y"')],
        [],
    ),
    (
        "nested object",
        obj({"s": obj({"z": {"type": "string"}}, ["z"], additionalProperties=False)}),
        obj({"s": obj({"z": {"type": "string", "pattern": "^[0-9]{5}$"}}, ["z"], additionalProperties=False)}),
        [("/properties/s/properties/z/pattern", "pattern '^[0-9]{5}$' added")],
        [],
    ),
    (
        "property added to an open object",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "string"}, "b": {"type": "integer"}}),
        [("/properties/b", "property 'b' added to an open object")],
        [],
    ),
    (
        "if/then/else added",
        obj({"a": {"type": ["string", "null"]}}),
        {
            **obj({"a": {"type": ["string", "null"]}}),
            "if": {"required": ["a"]},
            "then": {"properties": {"a": {"type": "string"}}},
        },
        [("/if", "if/then/else rule added or changed")],
        [],
    ),
    (
        "$ref followed",
        {**obj({"a": {"$ref": "#/$defs/code"}}), "$defs": {"code": {"type": "string", "enum": ["x", "y"]}}},
        {**obj({"a": {"$ref": "#/$defs/code"}}), "$defs": {"code": {"type": "string", "enum": ["x"]}}},
        [("/properties/a/enum", 'enum value(s) removed: "y"')],
        [],
    ),
    (
        "descriptions only",
        obj({"a": {"type": "string", "description": "old"}}, description="old"),
        obj({"a": {"type": "string", "description": "new"}}, description="new"),
        [],
        [],
    ),
]


@pytest.mark.parametrize(("name", "old", "new", "back", "fwd"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_both_ways(name, old, new, back, fwd):
    def matches(found: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
        assert len(found) == len(expected), found
        for (pointer, message), (want_pointer, want_text) in zip(found, expected, strict=True):
            assert pointer == want_pointer, found
            assert want_text in message, found

    matches(backward(new, old), back)
    matches(forward(new, old), fwd)
    assert backward(new, new) == []
    assert forward(old, old) == []


def test_pairs_to_judge():
    assert pairs_to_judge("backward", 3, [1, 2, 3]) == [2]
    assert pairs_to_judge("backward-transitive", 3, [1, 2, 3]) == [1, 2]
    assert pairs_to_judge("full", 1, [1]) == []
    assert pairs_to_judge("none", 3, [1, 2, 3]) == []


# --- contracts directories ------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the shipped contracts (and topic catalog) to change."""
    shutil.copytree(shipped_contracts(), tmp_path / "contracts")
    shutil.copytree(shipped_contracts().parent / "topics", tmp_path / "topics")
    return tmp_path


def registry_doc(root: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((root / "contracts/event-types-registry.json").read_text())
    return document


def save_registry(root: Path, document: dict[str, Any]) -> None:
    (root / "contracts/event-types-registry.json").write_text(json.dumps(document, indent=2))


def add_version(root: Path, event_type: str, version: int, schema: dict[str, Any]) -> str:
    path = f"{PAYLOADS}/{event_type}-v{version}.json"
    (root / path).write_text(json.dumps(schema, indent=2))
    document = registry_doc(root)
    document["events"][event_type]["schema_versions"].append(
        {"version": version, "payload_schema": path, "status": "active", "registered_at": "2026-06-01"}
    )
    save_registry(root, document)
    return path


def payload(root: Path, event_type: str, version: int) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((root / f"{PAYLOADS}/{event_type}-v{version}.json").read_text())
    return schema


def problems_of(root: Path, baseline: Path, **kwargs: Any) -> list[str]:
    report = check_compatibility(root / "contracts", baseline, display_root=root, **kwargs)
    return [str(p) for p in report.problems]


def test_the_shipped_contracts_pass_against_themselves():
    report = check_compatibility(shipped_contracts(), shipped_contracts())
    assert report.ok, report.problems
    assert report.judged == []  # credit.released v2 and intake.captured v2 were published with v1
    require_compatible(report)


def test_nothing_published_yet_judges_every_later_version():
    # Without a baseline the pre-existing pairs are new, and they do break backward.
    report = check_compatibility(shipped_contracts(), None)
    assert [(t, v, old) for t, v, old in report.judged] == [("credit.released", 2, [1]), ("intake.captured", 2, [1])]
    assert any("required property 'reason_code' added without a default" in p.message for p in report.problems)
    with pytest.raises(CompatibilityError, match="incompatible change"):
        require_compatible(report)


def test_a_compatible_new_version_passes(tree):
    v3 = payload(tree, "credit.released", 2)
    v3["properties"]["note"] = {"type": ["string", "null"], "description": "optional"}
    add_version(tree, "credit.released", 3, v3)
    report = check_compatibility(tree / "contracts", shipped_contracts())
    assert report.ok, report.problems
    assert report.judged == [("credit.released", 3, [2])]


def test_transitive_judges_every_earlier_version(tree):
    # v1 allows x and y, v2 only x (published together); a new v3 like v2 reads v2 data, not v1's.
    base = {
        "type": "object",
        "additionalProperties": False,
        "required": ["a"],
        "properties": {"a": {"type": "string", "enum": ["x", "y"]}},
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }
    narrowed = {**base, "properties": {"a": {"type": "string", "enum": ["x"]}}}
    document = registry_doc(tree)
    document["events"]["credit.consumed"]["schema_versions"][0]["payload_schema"] = (
        f"{PAYLOADS}/credit.consumed-v1.json"
    )
    save_registry(tree, document)
    (tree / f"{PAYLOADS}/credit.consumed-v1.json").write_text(json.dumps(base))
    add_version(tree, "credit.consumed", 2, narrowed)
    baseline = tree / "baseline"
    shutil.copytree(tree / "contracts", baseline)
    add_version(tree, "credit.consumed", 3, narrowed)  # same as v2: fine against v2, not against v1
    assert problems_of(tree, baseline, mode="backward") == []
    transitive = problems_of(tree, baseline, mode="backward-transitive")
    assert transitive == [
        f"{PAYLOADS}/credit.consumed-v3.json#/properties/a/enum: backward: v3 cannot read v1 data: "
        'enum value(s) removed: "y"',
        f"{PAYLOADS}/credit.consumed-v3.json#/properties/a: backward: v3 cannot read v1 data (Avro): "
        "the reader's enum lacks symbol(s) y",
    ]
    forward = problems_of(tree, baseline, mode="forward-transitive")
    assert forward == []  # old readers read every new value


def test_the_mode_comes_from_contracts_toml(tree):
    manifest = tree / "contracts/contracts.toml"
    manifest.write_text(manifest.read_text().replace('compatibility = "backward"', 'compatibility = "forward"'))
    v3 = payload(tree, "credit.released", 2)
    del v3["properties"]["reason_code"]["enum"][-1]  # fine for forward, not for backward
    add_version(tree, "credit.released", 3, v3)
    assert check_compatibility(tree / "contracts", shipped_contracts()).mode == "forward"
    assert problems_of(tree, shipped_contracts()) == []
    assert len(problems_of(tree, shipped_contracts(), mode="backward")) == 2  # JSON and Avro


def test_a_crafted_breaking_change_fails_with_the_expected_list(tree):
    v3 = payload(tree, "credit.released", 2)
    v3["properties"]["released_by"]["type"] = "string"
    v3["properties"]["prior_state"]["enum"] = ["locked"]
    v3["properties"]["channel"] = {"type": "string", "description": "How the release was requested."}
    v3["required"].append("channel")
    add_version(tree, "credit.released", 3, v3)
    consumed = tree / f"{PAYLOADS}/credit.consumed-v1.json"
    schema = json.loads(consumed.read_text())
    schema["properties"]["tenant_id"]["minLength"] = 2
    consumed.write_text(json.dumps(schema, indent=2))
    document = registry_doc(tree)
    del document["events"]["coach.assigned"]
    document["events"]["lead.created"]["schema_versions"][0]["registered_at"] = "2026-01-01"
    document["events"]["credit.released"]["schema_versions"][0]["status"] = "sunset"  # governance: allowed
    document["events"]["credit.released"]["schema_versions"][0]["notes"] = "sunset early"
    save_registry(tree, document)
    v3_file = f"{PAYLOADS}/credit.released-v3.json"
    registry_file = "contracts/event-types-registry.json"
    assert problems_of(tree, shipped_contracts(), baseline_label="HEAD") == [
        f"{registry_file}#/events/coach.assigned: event type removed (published in HEAD)",
        f"{PAYLOADS}/credit.consumed-v1.json#/properties/tenant_id/minLength: credit.consumed v1 is published "
        "(in HEAD) and its payload schema was edited in place (changed at /properties/tenant_id/minLength); "
        "publish it as v2 instead",
        f"{registry_file}#/events/lead.created/schema_versions/0/registered_at: lead.created v1 is published "
        '(in HEAD): registered_at changed from "2026-05-14" to "2026-01-01"; only deprecated_at, notes, status '
        "may change, publish a new version instead",
        f"{v3_file}#/properties/channel: backward: v3 cannot read v2 data: required property 'channel' added "
        "without a default: older data may lack it",
        f'{v3_file}#/properties/prior_state/enum: backward: v3 cannot read v2 data: enum value(s) removed: "reserved"',
        f"{v3_file}#/properties/released_by/type: backward: v3 cannot read v2 data: type narrowed from "
        '["null", "string"] to "string"',
        f"{v3_file}#/properties/prior_state: backward: v3 cannot read v2 data (Avro): the reader's enum lacks "
        "symbol(s) reserved",
        f"{v3_file}#/properties/released_by: backward: v3 cannot read v2 data (Avro): null cannot be read as string",
        f"{v3_file}#/properties/channel: backward: v3 cannot read v2 data (Avro): the reader requires field "
        "'channel', which older data lacks, and it has no default",
    ]


def test_a_removed_version_and_an_edited_envelope(tree):
    document = registry_doc(tree)
    document["events"]["credit.released"]["schema_versions"].pop(0)
    save_registry(tree, document)
    envelope = tree / "contracts/event-envelope/schema/envelope-v1.json"
    schema = json.loads(envelope.read_text())
    schema["properties"]["tenant_id"]["maxLength"] = 100
    envelope.write_text(json.dumps(schema))
    assert problems_of(tree, shipped_contracts(), baseline_label="HEAD") == [
        "contracts/event-envelope/schema/envelope-v1.json#/properties/tenant_id/maxLength: the envelope schema "
        "(published in HEAD) was edited in place (changed at /properties/tenant_id/maxLength); publish a new "
        "envelope version instead",
        "contracts/event-types-registry.json#/events/credit.released/schema_versions: credit.released v1 removed "
        "(published in HEAD): mark it deprecated or sunset instead",
    ]


def test_mode_none_judges_no_new_version_but_still_guards_what_was_published(tree):
    v3 = payload(tree, "credit.released", 2)
    v3["properties"]["prior_state"]["enum"] = ["locked"]
    add_version(tree, "credit.released", 3, v3)
    assert problems_of(tree, shipped_contracts(), mode="none") == []
    document = registry_doc(tree)
    del document["events"]["lead.created"]
    save_registry(tree, document)
    assert len(problems_of(tree, shipped_contracts(), mode="none")) == 1


# --- git baselines --------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def repo(tree: Path) -> Path:
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-qm", "contracts")
    return tree


def test_a_git_ref_is_read_with_git_archive(repo):
    with baseline_contracts("HEAD", repo / "contracts") as (baseline, label):
        assert baseline is not None
        assert label == "HEAD"
        assert (baseline / "event-types-registry.json").is_file()
        assert check_compatibility(repo / "contracts", baseline).ok
    assert not baseline.exists()  # the temporary copy is gone


def test_a_ref_without_contracts_means_everything_is_new(repo):
    (repo / "README").write_text("x")
    git(repo, "rm", "-rq", "contracts")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "no contracts yet")
    git(repo, "checkout", "-q", "HEAD~1", "--", "contracts")
    with baseline_contracts("HEAD", repo / "contracts") as (baseline, _):
        assert baseline is None


def test_bad_baselines_are_usage_errors(repo, tmp_path):
    with (
        pytest.raises(ConfigurationError, match="not a git ref"),
        baseline_contracts("no-such-ref", repo / "contracts"),
    ):
        pass
    (tmp_path / "empty").mkdir()
    with (
        pytest.raises(ConfigurationError, match=r"no event-types-registry\.json"),
        baseline_contracts(str(tmp_path / "empty"), repo / "contracts"),
    ):
        pass


def test_cli_gate_against_head_passes_then_fails_with_every_problem(repo, monkeypatch):
    monkeypatch.chdir(repo)
    ok = runner.invoke(app, ["contracts", "check", "--path", "contracts", "--against", "HEAD"])
    assert ok.exit_code == 0, ok.output
    assert "compatible with HEAD (mode backward): no new versions to judge" in ok.output
    v3 = payload(repo, "credit.released", 2)
    v3["properties"]["prior_state"]["enum"] = ["locked"]
    add_version(repo, "credit.released", 3, v3)
    document = registry_doc(repo)
    del document["events"]["coach.assigned"]
    save_registry(repo, document)
    failed = runner.invoke(app, ["contracts", "check", "--path", "contracts", "--against", "HEAD"])
    assert failed.exit_code == 1, failed.output
    assert "3 incompatible change(s) against HEAD (mode backward)" in failed.output
    assert "contracts/event-types-registry.json#/events/coach.assigned: event type removed" in failed.output
    assert (
        f"{PAYLOADS}/credit.released-v3.json#/properties/prior_state/enum: backward: v3 cannot read v2 data: "
        'enum value(s) removed: "reserved"' in failed.output
    )
    unknown = runner.invoke(app, ["contracts", "check", "--path", "contracts", "--against", "HEAD", "--mode", "x"])
    assert unknown.exit_code == 2


def test_the_repository_contracts_pass_against_head():
    """What the pre-commit hook runs, on this repository (skipped while contracts/ has local edits)."""
    root = shipped_contracts()
    status = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip("not a git checkout")
    if status.stdout.strip():
        pytest.skip("contracts/ has uncommitted changes")
    with baseline_contracts("HEAD", root) as (baseline, _):
        assert check_compatibility(Registry.load(root), baseline).ok
