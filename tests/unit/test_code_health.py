"""Rules of the lint gate that the tools themselves do not check."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: A mypy suppression with its error codes, then (on the same line) ``# <why>``.
_IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")
_REASON = re.compile(r"^\s+#\s*\S.{4,}")


def suppressions() -> list[tuple[str, str]]:
    """``(file:line, comment)`` of every ``type: ignore`` comment in bridge/ and tests/ (comments
    only: strings that mention one do not count)."""
    found = []
    for path in sorted([*ROOT.joinpath("bridge").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]):
        with path.open("rb") as source:
            for token in tokenize.tokenize(source.readline):
                if token.type == tokenize.COMMENT and _IGNORE.search(token.string):
                    found.append((f"{path.relative_to(ROOT)}:{token.start[0]}", token.string))
    return found


def test_every_type_ignore_names_its_error_codes_and_its_reason_on_the_line():
    if ROOT.name == "mutants":
        pytest.skip("running inside mutmut's copy of the tree, whose generated code carries its own ignores")
    found = suppressions()
    assert found, "the scan found no suppression at all: is it looking in the right place?"
    unexplained = []
    for where, comment in found:
        match = _IGNORE.search(comment)
        assert match is not None
        if not match["codes"] or not _REASON.match(match["rest"]):
            unexplained.append(f"{where}: {comment}")
    assert not unexplained, "a # type: ignore[code] needs '  # why' after it:\n" + "\n".join(unexplained)
