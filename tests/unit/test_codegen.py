"""Typed payload models (bridge contracts codegen): what is generated, and the proof that a model
accepts exactly what its JSON Schema accepts, on generated and on mutated documents.

Where model and schema cannot agree, and which documents are therefore left out of the equivalence
(each is asserted below, so the list stays true):

- ``if``/``then``/``else`` (a rule between fields) is not in the models: a document breaking only
  such a rule passes the model and fails the schema. emit and the consumers validate with the
  schema anyway. Structural documents whose every violation lies under ``/if``, ``/then`` or
  ``/else`` are excluded (the mutations of ``support.schemas`` never produce one);
- a leap second (``23:59:60``) is a valid RFC 3339 date-time the model refuses (Python's
  ``datetime`` has no second 60);
- ``format: email``: the model checks with email-validator (as pydantic's ``EmailStr``), which
  refuses what jsonschema-rs lets through: a domain without a dot (``a@b``), quoted local parts,
  IP-literal domains and display names (``Ada <ada@example.com>``); bridge's reference validator
  refuses those too;
- an integer written as ``1.0``: JSON Schema counts it as an integer, the strict model does not.

No generated document and no mutation hits the last three.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from support.schemas import _strategy, example_for, mutations, strategy_for
from typer.testing import CliRunner

from bridge.cli import app
from bridge.contracts import Contracts, Registry, compile_schema
from bridge.contracts.codegen import generate_models, model_name, write_models
from bridge.contracts.scaffold import Scaffold, scaffold
from bridge.envelope import decode_envelope
from bridge.errors import ValidationError
from bridge.outbox import EventSpec, Outbox

REGISTRY = Registry.load()
CONTRACTS = Contracts(REGISTRY)
WITH_SCHEMA = sorted(
    (t, v) for t, e in REGISTRY.events.items() for v, sv in e.versions.items() if sv.payload_schema is not None
)
runner = CliRunner()


def load(source: str, name: str) -> ModuleType:
    """Import generated source as a module, warnings as errors."""
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - our own generated code
    return module


EVENTS = load(generate_models(REGISTRY), "generated_events")


def schema_of(event_type: str, version: int) -> dict[str, Any]:
    path = REGISTRY.schema_file(REGISTRY.events[event_type].versions[version])
    assert path is not None
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def accepts(model: type[pydantic.BaseModel], document: Any) -> bool:
    try:
        model.model_validate(document)
    except pydantic.ValidationError:
        return False
    return True


# --- what is generated ----------------------------------------------------------------------------


def test_one_model_per_type_and_version_with_descriptions_and_types():
    assert set(EVENTS.MODELS) == set(WITH_SCHEMA)
    released = EVENTS.model_for("credit.released", 2)
    assert released.__name__ == model_name("credit.released", 2) == "CreditReleasedV2"
    assert released.__doc__.startswith("Payload for the credit.released event_type at schema_version 2.")
    assert "if/then/else rule between fields" in released.__doc__
    assert released.model_config["extra"] == "forbid"
    fields = released.model_fields
    assert fields["released_at"].description == "Wall-clock UTC of the release."
    assert fields["credit_reservation_id"].is_required()
    captured = EVENTS.model_for("intake.captured", 2)
    submission = EVENTS.IntakeCapturedV2Submission
    assert "normalized by Growth" in submission.__doc__
    assert submission.__absent_not_null__ == frozenset()  # its optional properties all allow null
    assert captured.__event_type__ == "intake.captured"
    assert captured.__schema_version__ == 2
    source = generate_models(REGISTRY)
    assert "CrrId = Annotated[str, Strict(), StringConstraints(pattern=" in source
    assert "credit_reservation_id: CrrId = Field(" in source
    assert "released_at: DateTime = Field(" in source
    assert "email: Email | None = Field(" in source
    assert "dob: Date | None = Field(" in source


def test_typed_values_come_out_of_a_document():
    schema = schema_of("intake.captured", 2)
    document = example_for(schema)
    model = EVENTS.IntakeCapturedV2.model_validate(document)
    assert model.captured_at == datetime(2026, 5, 22, 10, 15, tzinfo=UTC)
    assert model.submission.dob.isoformat() == "2012-03-04"
    assert model.submission.email == "ada@example.com"


# --- the equivalence ------------------------------------------------------------------------------


def conditional_only(schema: dict[str, Any], document: Any) -> bool:
    """Whether every violation of ``document`` is of an if/then/else rule."""
    violations = compile_schema(schema).violations(document)
    return bool(violations) and all(v.schema_pointer.split("/")[1] in ("if", "then", "else") for v in violations)


@pytest.mark.parametrize(("event_type", "version"), WITH_SCHEMA, ids=[f"{t}-v{v}" for t, v in WITH_SCHEMA])
def test_models_accept_exactly_what_the_schemas_accept(event_type, version):
    schema = schema_of(event_type, version)
    validator = compile_schema(schema)
    model = EVENTS.model_for(event_type, version)
    example = example_for(schema)
    assert accepts(model, example)
    broken = list(mutations(schema, example))
    assert broken
    for mutation in broken:
        assert accepts(model, mutation.document) == validator.is_valid(mutation.document), str(mutation)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy_for(schema))
    def valid(document):
        instance = model.model_validate(document)
        dumped = instance.model_dump(mode="json", by_alias=True, exclude_none=False)  # as emit dumps it
        assert validator.is_valid(dumped), validator.violations(dumped)
        assert model.model_validate(dumped) == instance

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategy(schema))
    def structural(document):
        if conditional_only(schema, document):
            assert accepts(model, document)  # the one known disagreement: if/then/else is the schema's
            return
        assert accepts(model, document) == validator.is_valid(document)

    valid()
    structural()


@pytest.mark.parametrize(
    ("value", "agree"),
    [
        ("2026-05-22T10:15:00Z", True),
        ("2026-05-22t10:15:00z", True),
        ("2026-05-22T10:15:00.123456789Z", True),
        ("2026-05-22T10:15:00+05:30", True),
        ("2026-05-22T10:15:00-00:00", True),
        ("2026-05-22 10:15:00Z", True),
        ("2026-05-22T10:15:00", True),
        ("2026-02-29T10:15:00Z", True),
        ("2026-05-22T10:15:60Z", True),
        ("2026-05-22T23:59:60Z", False),  # a leap second: listed above
        (1_780_000_000, True),
    ],
)
def test_date_time_strictness(value, agree):
    schema = schema_of("credit.consumed", 1)
    document = {**example_for(schema), "consumed_at": value}
    model = EVENTS.model_for("credit.consumed", 1)
    assert (accepts(model, document) == compile_schema(schema).is_valid(document)) is agree


@pytest.mark.parametrize(
    ("email", "agree"),
    [
        ("ada@example.com", True),
        ("Ada.Lovelace+x@Example.CO.uk", True),
        ("no-at-sign", True),
        ("a..b@example.com", True),
        ("ädä@example.com", True),
        ("ada@exämple.com", True),
        ("a@b", False),  # listed above: the model is stricter
        ('"q"@example.com', False),
        ("a@[127.0.0.1]", False),
        ("Ada <ada@example.com>", False),
    ],
)
def test_email_strictness(email, agree):
    schema = schema_of("intake.captured", 2)
    document = example_for(schema)
    document["submission"]["email"] = email
    model = EVENTS.model_for("intake.captured", 2)
    assert (accepts(model, document) == compile_schema(schema).is_valid(document)) is agree
    if accepts(model, document):
        assert model.model_validate(document).submission.email == email  # kept verbatim, never normalised


# --- constructs the shipped contracts do not use --------------------------------------------------


SYNTHETIC = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "order.placed payload v1",
    "description": "An order.",
    "type": "object",
    "additionalProperties": False,
    "required": ["total", "lines", "class", "model_kind", "json", "with-dash", "note", "tags", "status"],
    "properties": {
        "total": {"type": "number", "minimum": 0, "description": "Money as a JSON number."},
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {"sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 1}},
            },
        },
        "class": {"type": "string"},
        "model_kind": {"type": "string"},
        "json": {"type": "boolean"},
        "with-dash": {"type": "integer", "exclusiveMaximum": 10},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "status": {"enum": ["open", None]},
        "placed_on": {"type": "string", "format": "date"},
        "level": {"const": 3},
        "ref": {"$ref": "#/$defs/ref"},
    },
    "$defs": {"ref": {"type": "string", "pattern": "^R[0-9]+$"}},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, dict[str, Any]]:
    root = tmp_path_factory.mktemp("shop")
    scaffold(root, Scaffold(("shop",), topic_prefix="shop."))
    payload = root / "contracts/shop/schema/payloads/order.placed-v1.json"
    payload.write_text(json.dumps(SYNTHETIC))
    module = load(generate_models(Registry.load(root / "contracts")), "generated_shop")
    return module, SYNTHETIC


def test_synthetic_constructs(synthetic):
    module, schema = synthetic
    model = module.OrderPlacedV1
    document = {
        "total": 12.5,
        "lines": [{"sku": "A1", "qty": 2, "extra": True}],
        "class": "gold",
        "model_kind": "x",
        "json": False,
        "with-dash": 9,
        "note": None,
        "tags": {"a": "b"},
        "status": None,
        "placed_on": "2026-06-01",
        "level": 3,
        "ref": "R12",
    }
    order = model.model_validate(document)
    assert order.total == Decimal("12.5")
    assert order.class_ == "gold"
    assert order.model_kind_ == "x"
    assert order.json_ is False
    assert order.with_dash == 9
    dumped = order.model_dump(mode="json", by_alias=True, exclude_none=False)
    assert dumped == document  # aliases back, the open line object keeps its extra field, numbers stay numbers
    assert isinstance(dumped["total"], float)
    assert compile_schema(schema).is_valid(dumped)
    # Built in Python by field name, dumped for emit: a Decimal total becomes a JSON number, an
    # absent optional property stays absent.
    built = model(
        total=Decimal("7"),
        lines=[{"sku": "B"}],
        class_="c",
        model_kind_="k",
        json_=True,
        with_dash=1,
        note="n",
        tags={},
        status="open",
    )
    out = built.model_dump(mode="json", by_alias=True, exclude_none=False)
    assert out["total"] == 7
    assert "placed_on" not in out
    assert "level" not in out
    assert compile_schema(schema).is_valid(out)
    assert model.__absent_not_null__ == frozenset({"placed_on", "level", "ref"})
    validator = compile_schema(schema)
    for mutation in mutations(schema, document):
        assert accepts(model, mutation.document) == validator.is_valid(mutation.document), str(mutation)
    for bad in (
        {"total": True},
        {"total": "1"},
        {"level": True},
        {"level": 4},
        {"placed_on": None},
        {"tags": {"a": 1}},
    ):
        assert not accepts(model, {**document, **bad}), bad
        assert not validator.is_valid({**document, **bad}), bad
    # Listed above: 9.0 is an integer to JSON Schema, not to the strict model.
    assert validator.is_valid({**document, "with-dash": 9.0})
    assert not accepts(model, {**document, "with-dash": 9.0})


# --- emit and handlers ----------------------------------------------------------------------------


def test_emit_accepts_a_model_and_handlers_read_one():
    released = EVENTS.CreditReleasedV2(
        tenant_id="t1",
        credit_reservation_id="crr_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        credit_account_id="cra_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        person_id="per_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        lesson_id="les_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
        prior_state="locked",
        released_credits=1,
        released_by=None,
        reason_code="auto_schedule_conflict",
        released_at=datetime(2026, 6, 1, 9, 30, 0, 250000, tzinfo=UTC),
    )
    outbox = Outbox(CONTRACTS, "revenue")
    spec = EventSpec("credit.released", 2, released.credit_reservation_id, "t1", released)
    (envelope,), write = outbox.prepare([spec])  # validated against the schema on the way
    assert envelope.payload["released_at"] == "2026-06-01T09:30:00.250000Z"
    assert envelope.payload["released_by"] is None
    assert json.loads(write.values[0])["payload"] == envelope.payload
    received = decode_envelope(envelope.to_json())  # what a consumer's handler gets
    typed = received.payload_as(EVENTS.CreditReleasedV2)
    assert typed == released
    assert typed.released_at.tzinfo is not None


def test_a_cross_field_rule_the_model_lacks_is_still_enforced_by_emit():
    wrong = EVENTS.CreditReleasedV2.model_validate(
        {**example_for(schema_of("credit.released", 2)), "reason_code": "operator_goodwill", "released_by": None}
    )  # the model has no if/then/else: an operator reason without an operator passes it...
    outbox = Outbox(CONTRACTS, "revenue")
    with pytest.raises(ValidationError, match="released_by"):  # ...and emit's schema validation refuses it
        outbox.prepare([EventSpec("credit.released", 2, wrong.credit_reservation_id, "t", wrong)])


# --- the command ----------------------------------------------------------------------------------


def test_cli_writes_the_module_and_checks_it_is_current(tmp_path):
    target = tmp_path / "myapp" / "events.py"
    written = runner.invoke(app, ["contracts", "codegen", "--out", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == write_models(REGISTRY, tmp_path / "again" / "myapp" / "events.py").read_text()
    current = runner.invoke(app, ["contracts", "codegen", "--out", str(target), "--check"])
    assert current.exit_code == 0, current.output
    target.write_text(target.read_text() + "\n# edited\n")
    stale = runner.invoke(app, ["contracts", "codegen", "--out", str(target), "--check"])
    assert stale.exit_code == 1
    assert "out of date" in stale.output
    compile(target.read_text(), str(target), "exec")


def test_generated_module_needs_only_pydantic(tmp_path):
    source = Path(write_models(REGISTRY, tmp_path / "events.py")).read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "json", "re", "datetime", "decimal", "typing", "pydantic"}
