"""The README's Configuration table lists every setting of the one settings model: a setting added
to bridge.config without its row there fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from bridge.config import BridgeSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def variables(model: type[BaseModel], prefix: str = "BRIDGE_") -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from variables(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def documented() -> set[str]:
    """Every variable a row of the Configuration table names, ``__FIELD`` shorthand expanded."""
    text = README.read_text(encoding="utf-8")
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| `BRIDGE_"):
            continue
        first = row.split("|")[1]
        full = re.findall(r"`(BRIDGE_[A-Z0-9_]+)`", first)
        names.update(full)
        section = full[0].rsplit("__", 1)[0] + "__" if "__" in full[0] else ""
        names.update(section + short for short in re.findall(r"`__([A-Z0-9_]+)`", first))
    return names


def test_every_setting_has_its_row_in_the_readme() -> None:
    if README.parent.name == "mutants":
        pytest.skip("running inside mutmut's copy of the tree, which has no README")
    missing = sorted(set(variables(BridgeSettings)) - documented())
    assert missing == [], f"README.md, Configuration: no row for {', '.join(missing)}"
