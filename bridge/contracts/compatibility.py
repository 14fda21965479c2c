"""The compatibility gate: compare the contracts with a baseline (a git ref or a directory) and list
every change that breaks what was published.

Three kinds of problem, each named with its file and JSON pointer:

- a **published version edited in place**: a ``(type, version)`` of the baseline whose payload schema
  (as canonical JSON) or registry entry changed. Governance may still move ``status``,
  ``deprecated_at`` and ``notes``; everything else of a published version is frozen;
- a **removed** type or version (present in the baseline, absent now); the envelope schema edited;
- a **new version that breaks the compatibility mode** (``contracts.toml``'s ``compatibility``, or
  ``--mode``), with Confluent's meaning: ``backward`` = a reader of the new version reads data of the
  earlier one; ``forward`` = readers of the earlier version read new data; ``full`` = both;
  ``-transitive`` = against every earlier version, else only the latest earlier one.

New versions are judged twice: on the JSON Schemas themselves, by :func:`reader_problems` (a
rule-based differ: can every document the writer's schema accepts pass the reader's?), and on the
derived Avro schemas, by :func:`bridge.avro.compatibility_problems` (Avro's resolution rules).
Only changes relative to the baseline are judged: versions published together in the baseline are
not judged again.

Knows nothing of Kafka or PostgreSQL.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from bridge.contracts.registry import (
    ENVELOPE_SCHEMA_PATH,
    REGISTRY_FILE,
    CompatibilityMode,
    Registry,
    _resolve_schema_path,
)
from bridge.errors import CompatibilityError, ConfigurationError, Problem, json_pointer

__all__ = [
    "MODES",
    "CompatibilityReport",
    "Snapshot",
    "baseline_contracts",
    "check_compatibility",
    "pairs_to_judge",
    "reader_problems",
    "require_compatible",
]

MODES: tuple[str, ...] = get_args(CompatibilityMode)

#: Fields of a published version that governance may still change.
GOVERNANCE_FIELDS = frozenset({"status", "deprecated_at", "notes"})

_OBJECT_ONLY: dict[str, Any] = {"type": "object"}
_ANY_TYPES = frozenset({"string", "integer", "number", "boolean", "object", "array", "null"})
#: Keywords the differ cannot compare structurally: a reader that adds or changes one may reject
#: data the writer's schema accepts, so such a change is reported (conservatively).
_OPAQUE = (
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "contains",
    "minContains",
    "maxContains",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "contentEncoding",
    "contentMediaType",
)


# --- snapshots --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    entry: dict[str, Any]
    index: int
    schema_path: Path | None
    schema: Any  # the payload schema document, None when the version names none (or it is missing)


@dataclass(frozen=True)
class Snapshot:
    """A contracts directory read as raw documents (no rule checks): what it publishes."""

    root: Path
    types: dict[str, dict[str, Any]]
    versions: dict[tuple[str, int], _Version]
    envelope: Any

    @classmethod
    def read(cls, root: Path) -> Snapshot:
        """Read what can be read; an absent registry is an empty snapshot (nothing published)."""
        document = _read_json(root / REGISTRY_FILE)
        events = document.get("events") if isinstance(document, dict) else None
        types: dict[str, dict[str, Any]] = {}
        versions: dict[tuple[str, int], _Version] = {}
        for name, entry in (events or {}).items():
            if not isinstance(entry, dict):
                continue
            types[name] = entry
            for index, raw in enumerate(entry.get("schema_versions") or []):
                if not isinstance(raw, dict) or not isinstance(raw.get("version"), int):
                    continue
                path = raw.get("payload_schema")
                schema_path = _resolve_schema_path(root, path) if isinstance(path, str) else None
                schema = _read_json(schema_path) if schema_path is not None else None
                versions[(name, raw["version"])] = _Version(raw, index, schema_path, schema)
        return cls(root, types, versions, _read_json(root / ENVELOPE_SCHEMA_PATH))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@contextlib.contextmanager
def baseline_contracts(against: str, contracts_dir: Path) -> Iterator[tuple[Path | None, str]]:
    """The baseline to compare ``contracts_dir`` with, as a directory, and a label for messages.

    ``against`` is a directory (a contracts directory, or one holding ``contracts/``), else a git
    ref (``HEAD``, ``origin/main``, a tag): the contracts directory as it was at that ref, read
    with ``git archive`` into a temporary directory. ``None`` when the ref has no contracts there
    yet (everything is new).
    """
    candidate = Path(against)
    if candidate.is_dir():
        for root in (candidate, candidate / "contracts"):
            if (root / REGISTRY_FILE).is_file():
                yield root, str(candidate)
                return
        raise ConfigurationError(f"--against {against}: no {REGISTRY_FILE} in {candidate} or {candidate / 'contracts'}")
    toplevel = _git(contracts_dir, "rev-parse", "--show-toplevel", what="find the git work tree").strip()
    if not toplevel:
        raise ConfigurationError(
            f"--against {against}: {contracts_dir} is not in a git work tree; pass a baseline directory instead"
        )
    try:
        relative = contracts_dir.resolve().relative_to(Path(toplevel).resolve()).as_posix()
    except ValueError:
        raise ConfigurationError(f"--against {against}: {contracts_dir} is outside the work tree {toplevel}") from None
    commit = _git(contracts_dir, "rev-parse", "--verify", "--quiet", f"{against}^{{commit}}", what="resolve")
    if not commit.strip():
        raise ConfigurationError(f"--against {against}: not a directory, and not a git ref of {toplevel}")
    listed = _git(Path(toplevel), "ls-tree", "--name-only", commit.strip(), "--", relative or ".", what="list")
    if not listed.strip():
        yield None, against
        return
    archive = subprocess.run(
        ["git", "-C", toplevel, "archive", "--format=tar", commit.strip(), "--", relative or "."],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        message = archive.stderr.decode("utf-8", "replace").strip()
        raise ConfigurationError(f"--against {against}: git archive failed: {message}")
    work = Path(tempfile.mkdtemp(prefix="bridge-baseline-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(work, filter="data")
        yield work / relative, against
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _git(cwd: Path, *args: str, what: str) -> str:
    directory = cwd if cwd.is_dir() else cwd.parent
    try:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ConfigurationError(f"git is needed to {what} a baseline ref; pass a baseline directory instead") from None
    return result.stdout if result.returncode == 0 else ""


# --- the check ---------------------------------------------------------------------------------------


@dataclass
class CompatibilityReport:
    """What :func:`check_compatibility` found: every problem, and which new versions it judged."""

    mode: str
    baseline: str
    problems: list[Problem] = field(default_factory=list)
    #: ``(event_type, new version, earlier versions it was judged against)``.
    judged: list[tuple[str, int, list[int]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def require_compatible(report: CompatibilityReport) -> None:
    """Raise :class:`CompatibilityError` listing every problem of ``report``."""
    if report.problems:
        raise CompatibilityError(report.problems, mode=report.mode)


def pairs_to_judge(mode: str, version: int, earlier: list[int]) -> list[int]:
    """The earlier versions a new ``version`` is judged against: all of them when the mode is
    transitive, else the latest one; none for ``none``."""
    before = sorted(v for v in earlier if v < version)
    if mode == "none" or not before:
        return []
    return before if mode.endswith("-transitive") else before[-1:]


def check_compatibility(
    current: Path | Registry,
    baseline: Path | None,
    *,
    mode: str | None = None,
    baseline_label: str = "the baseline",
    display_root: Path | None = None,
) -> CompatibilityReport:
    """Compare the contracts at ``current`` with ``baseline`` (``None``: nothing published yet).

    ``mode`` overrides ``contracts.toml``'s ``compatibility``. File names in problems are shown
    relative to ``display_root`` (default: the working directory) when they are under it.
    """
    registry = current if isinstance(current, Registry) else Registry.load(current)
    chosen = mode or registry.manifest.compatibility
    if chosen not in MODES:
        raise ConfigurationError(f"unknown compatibility mode {chosen!r} (one of {', '.join(MODES)})")
    report = CompatibilityReport(chosen, baseline_label)
    now = Snapshot.read(registry.root)
    base = Snapshot.read(baseline) if baseline is not None else None
    show = _Display(display_root)
    if base is not None:
        report.problems += _published_changes(base, now, show, baseline_label)
    for name in sorted(registry.events):
        numbers = sorted(registry.events[name].versions)
        for number in numbers:
            if base is not None and (name, number) in base.versions:
                continue
            against = pairs_to_judge(chosen, number, numbers)
            if not against:
                continue
            report.judged.append((name, number, against))
            for old in against:
                report.problems += _judge(registry, now, name, number, old, chosen, show)
    return report


class _Display:
    def __init__(self, root: Path | None) -> None:
        self.root = (root or Path.cwd()).resolve()

    def __call__(self, path: Path) -> str:
        try:
            return Path(os.path.relpath(path.resolve(), self.root)).as_posix() if self._under(path) else str(path)
        except ValueError:
            return str(path)

    def _under(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)


def _published_changes(base: Snapshot, now: Snapshot, show: _Display, label: str) -> list[Problem]:
    problems: list[Problem] = []
    registry_file = show(now.root / REGISTRY_FILE)
    if base.envelope is not None and _canonical(base.envelope) != _canonical(now.envelope):
        first = _differences(base.envelope, now.envelope)
        problems.append(
            Problem(
                show(now.root / ENVELOPE_SCHEMA_PATH),
                first[0] if first else "",
                f"the envelope schema (published in {label}) was edited in place ({_summary(first)}); "
                "publish a new envelope version instead",
            )
        )
    problems += [
        Problem(registry_file, json_pointer(["events", name]), f"event type removed (published in {label})")
        for name in sorted(base.types)
        if name not in now.types
    ]
    for (name, number), old in sorted(base.versions.items()):
        if name not in now.types:
            continue
        new = now.versions.get((name, number))
        if new is None:
            problems.append(
                Problem(
                    registry_file,
                    json_pointer(["events", name, "schema_versions"]),
                    f"{name} v{number} removed (published in {label}): mark it deprecated or sunset instead",
                )
            )
            continue
        at: list[str | int] = ["events", name, "schema_versions", new.index]
        for key in sorted((set(old.entry) | set(new.entry)) - GOVERNANCE_FIELDS):
            if key == "version" or _canonical(old.entry.get(key)) == _canonical(new.entry.get(key)):
                continue
            problems.append(
                Problem(
                    registry_file,
                    json_pointer([*at, key]),
                    f"{name} v{number} is published (in {label}): {key} changed from "
                    f"{_short(old.entry.get(key))} to {_short(new.entry.get(key))}; only "
                    f"{', '.join(sorted(GOVERNANCE_FIELDS))} may change, publish a new version instead",
                )
            )
        if old.schema is not None and _canonical(old.schema) != _canonical(new.schema):
            first = _differences(old.schema, new.schema)
            where = new.schema_path or old.schema_path
            problems.append(
                Problem(
                    show(where) if where is not None else registry_file,
                    first[0] if first else "",
                    f"{name} v{number} is published (in {label}) and its payload schema was edited in place "
                    f"({_summary(first)}); publish it as v{max(v for t, v in now.versions if t == name) + 1} instead",
                )
            )
    return problems


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _summary(pointers: list[str]) -> str:
    if not pointers:
        return "no longer readable"
    shown = ", ".join(p or "/" for p in pointers[:3])
    more = f" and {len(pointers) - 3} more" if len(pointers) > 3 else ""
    return f"changed at {shown}{more}"


def _differences(old: Any, new: Any, path: list[str | int] | None = None) -> list[str]:
    """JSON pointers where two documents differ (the deepest common container of each change)."""
    path = path or []
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                found.append(json_pointer([*path, key]))
            else:
                found += _differences(old[key], new[key], [*path, key])
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            found += _differences(a, b, [*path, index])
        return found
    return [] if _canonical(old) == _canonical(new) else [json_pointer(path)]


# --- judging one pair ------------------------------------------------------------------------------


def _judge(
    registry: Registry, now: Snapshot, name: str, new: int, old: int, mode: str, show: _Display
) -> list[Problem]:
    """Problems of ``new`` against ``old`` under ``mode`` (JSON Schema and Avro)."""
    new_version, old_version = now.versions[(name, new)], now.versions[(name, old)]
    new_schema = new_version.schema if new_version.schema is not None else _OBJECT_ONLY
    old_schema = old_version.schema if old_version.schema is not None else _OBJECT_ONLY
    file = show(new_version.schema_path) if new_version.schema_path else show(now.root / REGISTRY_FILE)
    prefix_pointer = (
        "" if new_version.schema_path else json_pointer(["events", name, "schema_versions", new_version.index])
    )
    directions: list[Literal["backward", "forward"]] = []
    if mode.startswith(("backward", "full")):
        directions.append("backward")
    if mode.startswith(("forward", "full")):
        directions.append("forward")
    problems: list[Problem] = []
    for direction in directions:
        reader_is_new = direction == "backward"
        reader, writer = (new_schema, old_schema) if reader_is_new else (old_schema, new_schema)
        label = (
            f"{direction}: v{new} cannot read v{old} data"
            if reader_is_new
            else f"{direction}: v{old} readers cannot read v{new} data"
        )
        for pointer, message in reader_problems(reader, writer, reader_is_new=reader_is_new):
            problems.append(Problem(file, prefix_pointer + pointer, f"{label}: {message}"))
        problems += _avro_problems(registry, name, new, old, reader_is_new, file, prefix_pointer, label)
    return problems


def _avro_problems(
    registry: Registry, name: str, new: int, old: int, reader_is_new: bool, file: str, prefix: str, label: str
) -> list[Problem]:
    from bridge.avro import avro_schema, compatibility_problems

    new_avro, old_avro = avro_schema(registry, name, new), avro_schema(registry, name, old)
    reader, writer = (new_avro, old_avro) if reader_is_new else (old_avro, new_avro)
    problems = []
    for text in compatibility_problems(reader, writer):
        match = re.match(r"^(/[^:]*): (.*)$", text)
        avro_path, message = (match.group(1), match.group(2)) if match else ("/", text)
        problems.append(Problem(file, prefix + _avro_pointer(avro_path), f"{label} (Avro): {message}"))
    return problems


def _avro_pointer(avro_path: str) -> str:
    """An Avro field path (``/payload/submission/email``) as a pointer into the payload schema."""
    parts = [p for p in avro_path.split("/") if p]
    if not parts or parts[0] != "payload":
        return ""
    out: list[str] = []
    for part in parts[1:]:
        out += ["items"] if part == "items" else ["properties", part]
    return json_pointer(out)


# --- the JSON Schema differ --------------------------------------------------------------------------


def reader_problems(
    reader: Any, writer: Any, *, reader_is_new: bool = True, reader_root: Any = None, writer_root: Any = None
) -> list[tuple[str, str]]:
    """Why a document valid under ``writer`` may be rejected by ``reader``: ``(pointer, message)``
    pairs, ``[]`` when every writer document passes the reader (as far as the rules can tell).

    Rules: a type narrowed (``["string", "null"]`` → ``"string"``, ``number`` → ``integer``); enum
    or const values the reader lacks; a property the reader requires that the writer does not
    (unless the reader gives it a ``default``); ``additionalProperties: false`` newly set, or a
    property of a closed writer the closed reader does not declare; a property the reader
    constrains that an open writer leaves free; ``minLength``/``maxLength``/``minimum``/
    ``maximum``/``exclusive*``/``multipleOf``/``minItems``/``maxItems``/``uniqueItems`` tightened;
    ``pattern`` or ``format`` added or changed; array ``items`` recursively; and any other keyword
    the reader adds or changes that the rules cannot compare (``if``/``then``/``else``, ``allOf``,
    …), reported conservatively. Messages speak of the change from the old schema to the new one
    (``reader_is_new``: the reader is the new schema, as in a backward check). Pointers locate the
    keyword in the schemas, which share their layout (local ``$ref`` are followed).
    """
    differ = _Differ(
        reader_root if reader_root is not None else reader,
        writer_root if writer_root is not None else writer,
        reader_is_new,
    )
    differ.compare(reader, writer, [])
    return differ.found


class _Differ:
    def __init__(self, reader_root: Any, writer_root: Any, reader_is_new: bool) -> None:
        self.reader_root = reader_root
        self.writer_root = writer_root
        self.reader_is_new = reader_is_new
        self.found: list[tuple[str, str]] = []

    # "old" and "new" from the reader/writer roles
    def old_new(self, reader_value: Any, writer_value: Any) -> tuple[Any, Any]:
        return (writer_value, reader_value) if self.reader_is_new else (reader_value, writer_value)

    def report(self, path: list[str | int], message: str) -> None:
        self.found.append((json_pointer(path), message))

    def compare(self, reader: Any, writer: Any, path: list[str | int], depth: int = 0) -> None:
        if depth > 64:
            return
        reader = _resolve(reader, self.reader_root)
        writer = _resolve(writer, self.writer_root)
        if reader is True or reader == {}:
            return
        if reader is False:
            if writer is not False:
                self.report(path, "the schema accepts nothing" if self.reader_is_new else "the schema was opened")
            return
        if writer is False:
            return
        if not isinstance(reader, dict) or not isinstance(writer, dict):
            return
        r_types, w_types = _types(reader), _types(writer)
        self.types(r_types, w_types, path)
        self.values(reader, writer, path)
        both = _ANY_TYPES if w_types is None else w_types
        both = both & (_ANY_TYPES if r_types is None else _widened(r_types))
        if "string" in both:
            self.strings(reader, writer, path)
        if both & {"integer", "number"}:
            self.numbers(reader, writer, path)
        if "array" in both:
            self.arrays(reader, writer, path, depth)
        if "object" in both:
            self.objects(reader, writer, path, depth)
        self.opaque(reader, writer, path)

    def types(self, r_types: frozenset[str] | None, w_types: frozenset[str] | None, path: list[str | int]) -> None:
        if r_types is None:
            return
        if w_types is None:
            self.report(
                [*path, "type"],
                f"type restricted to {_names(sorted(r_types))} (any type before)"
                if self.reader_is_new
                else f"type restriction to {_names(sorted(r_types))} dropped: new data may hold any type",
            )
            return
        lost = sorted(t for t in w_types if t not in _widened(r_types))
        if lost:
            old, new = self.old_new(sorted(r_types), sorted(w_types))
            verb = "narrowed" if self.reader_is_new else "widened"
            self.report([*path, "type"], f"type {verb} from {_names(old)} to {_names(new)}")

    def values(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]) -> None:
        r_values = _values(reader)
        if r_values is None:
            return
        keyword = "enum" if "enum" in reader else "const"
        w_values = _values(writer)
        if w_values is None:
            self.report(
                [*path, keyword],
                f"{keyword} added: values limited to {_list(sorted(r_values))}"
                if self.reader_is_new
                else f"{keyword} dropped: new data may hold values other than {_list(sorted(r_values))}",
            )
            return
        extra = sorted(w_values - r_values)
        if extra:
            verb = "removed" if self.reader_is_new else "added"
            self.report([*path, keyword], f"{keyword} value(s) {verb}: {_list(extra)}")

    def strings(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]) -> None:
        self.lower_bound("minLength", reader, writer, path)
        self.upper_bound("maxLength", reader, writer, path)
        for keyword in ("pattern", "format"):
            if keyword in reader and reader[keyword] != writer.get(keyword):
                old, new = self.old_new(reader[keyword], writer.get(keyword))
                if old is None:
                    change = f"{keyword} {new!r} added"
                elif new is None:
                    change = f"{keyword} {old!r} removed"
                else:
                    change = f"{keyword} changed from {old!r} to {new!r}"
                self.report([*path, keyword], change)

    def numbers(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]) -> None:
        self.lower_bound("minimum", reader, writer, path)
        self.lower_bound("exclusiveMinimum", reader, writer, path)
        self.upper_bound("maximum", reader, writer, path)
        self.upper_bound("exclusiveMaximum", reader, writer, path)
        divisor = reader.get("multipleOf")
        if isinstance(divisor, int | float) and divisor:
            theirs = writer.get("multipleOf")
            if not (
                isinstance(theirs, int | float) and theirs and math.isclose((theirs / divisor) % 1, 0, abs_tol=1e-9)
            ):
                old, new = self.old_new(divisor, theirs)
                self.report([*path, "multipleOf"], f"multipleOf changed from {old} to {new}")

    def arrays(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int], depth: int) -> None:
        self.lower_bound("minItems", reader, writer, path)
        self.upper_bound("maxItems", reader, writer, path)
        if reader.get("uniqueItems") is True and writer.get("uniqueItems") is not True:
            self.report([*path, "uniqueItems"], "uniqueItems " + ("added" if self.reader_is_new else "removed"))
        if "items" in reader:
            self.compare(reader["items"], writer.get("items", True), [*path, "items"], depth + 1)

    def objects(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int], depth: int) -> None:
        r_props: Mapping[str, Any] = reader.get("properties") or {}
        w_props: Mapping[str, Any] = writer.get("properties") or {}
        r_required = set(reader.get("required") or [])
        w_required = set(writer.get("required") or [])
        r_extra = reader.get("additionalProperties", True)
        w_extra = writer.get("additionalProperties", True)
        reported: set[str] = set()
        for name in sorted(r_required - w_required):
            sub = _resolve(r_props.get(name, {}), self.reader_root)
            if isinstance(sub, dict) and "default" in sub:
                continue
            reported.add(name)
            at = [*path, "properties", name] if name in r_props else [*path, "required"]
            if self.reader_is_new:
                change = f"required property {name!r} added" if name not in w_props else f"{name!r} made required"
                self.report(at, f"{change} without a default: older data may lack it")
            else:
                gone = name not in w_props
                self.report(
                    at, f"required property {name!r} {'removed' if gone else 'made optional'}: older readers require it"
                )
        closed = r_extra is False
        if closed and w_extra is not False:
            self.report(
                [*path, "additionalProperties"],
                "additionalProperties: false newly set: older data may carry other properties"
                if self.reader_is_new
                else "additionalProperties: false dropped: older readers reject the properties new data may add",
            )
        for name in sorted(set(w_props) - set(r_props)):
            if closed:
                self.report(
                    [*path, "properties", name],
                    f"property {name!r} removed from a closed object: older data may carry it"
                    if self.reader_is_new
                    else f"property {name!r} added to a closed object: older readers reject it",
                )
            elif isinstance(r_extra, dict):
                self.compare(r_extra, w_props[name], [*path, "properties", name], depth + 1)
        if w_extra is not False:
            for name in sorted(set(r_props) - set(w_props) - reported):
                sub = _resolve(r_props[name], self.reader_root)
                if _trivial(sub):
                    continue
                self.report(
                    [*path, "properties", name],
                    f"property {name!r} added to an open object: older data may carry {name!r} with any value"
                    if self.reader_is_new
                    else f"property {name!r} removed from an open object: new data may carry it with any value, "
                    "which older readers constrain",
                )
        for name in sorted(set(r_props) & set(w_props)):
            self.compare(r_props[name], w_props[name], [*path, "properties", name], depth + 1)

    def opaque(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]) -> None:
        conditional = {k: reader.get(k) for k in ("if", "then", "else") if k in reader}
        theirs = {k: writer.get(k) for k in ("if", "then", "else") if k in writer}
        if conditional and _canonical(_strip(conditional)) != _canonical(_strip(theirs)):
            self.report(
                [*path, "if"],
                ("if/then/else rule added or changed" if self.reader_is_new else "if/then/else rule removed or changed")
                + ": a cross-field rule the differ cannot compare; older data may break it",
            )
        for keyword in _OPAQUE:
            if keyword in reader and _canonical(_strip(reader[keyword])) != _canonical(_strip(writer.get(keyword))):
                change = "added or changed" if self.reader_is_new else "removed or changed"
                self.report([*path, keyword], f"{keyword} {change}: a rule the differ cannot compare")

    def lower_bound(
        self, keyword: str, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]
    ) -> None:
        mine, theirs = reader.get(keyword), writer.get(keyword)
        if not isinstance(mine, int | float) or isinstance(mine, bool):
            return
        if keyword in ("minLength", "minItems") and mine == 0:
            return
        if isinstance(theirs, int | float) and not isinstance(theirs, bool) and theirs >= mine:
            return
        self.bound(keyword, mine, theirs, path)

    def upper_bound(
        self, keyword: str, reader: Mapping[str, Any], writer: Mapping[str, Any], path: list[str | int]
    ) -> None:
        mine, theirs = reader.get(keyword), writer.get(keyword)
        if not isinstance(mine, int | float) or isinstance(mine, bool):
            return
        if isinstance(theirs, int | float) and not isinstance(theirs, bool) and theirs <= mine:
            return
        self.bound(keyword, mine, theirs, path)

    def bound(self, keyword: str, reader_value: Any, writer_value: Any, path: list[str | int]) -> None:
        old, new = self.old_new(reader_value, writer_value)
        if old is None:
            change = f"{keyword} {new} added"
        elif new is None:
            change = f"{keyword} {old} removed"
        else:
            change = f"{keyword} changed from {old} to {new}"
        self.report([*path, keyword], f"{change}: tightened")


def _strip(value: Any) -> Any:
    """A schema without its annotations (descriptions and titles never change what validates)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("description", "title", "examples", "$comment")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _trivial(schema: Any) -> bool:
    return schema is True or (isinstance(schema, dict) and not _strip(schema))


def _resolve(schema: Any, root: Any, seen: frozenset[str] = frozenset()) -> Any:
    """Follow a local ``$ref`` (siblings of ``$ref`` are merged over the target, as in 2020-12)."""
    if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
        return schema
    ref = schema["$ref"]
    if not ref.startswith("#") or ref in seen:
        return {k: v for k, v in schema.items() if k != "$ref"}
    target = root
    for part in [p.replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/")[1:]]:
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return {k: v for k, v in schema.items() if k != "$ref"}
    resolved = _resolve(target, root, seen | {ref})
    siblings = {k: v for k, v in schema.items() if k != "$ref"}
    return {**resolved, **siblings} if isinstance(resolved, dict) else resolved


def _types(schema: Mapping[str, Any]) -> frozenset[str] | None:
    """The JSON types a schema allows (``None``: any), from ``type`` or else ``enum``/``const``."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return frozenset({kind})
    if isinstance(kind, list):
        return frozenset(str(k) for k in kind)
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(values, list):
        return frozenset(_json_type(v) for v in values)
    return None


def _widened(types: frozenset[str]) -> frozenset[str]:
    """``number`` also accepts every integer."""
    return types | {"integer"} if "number" in types else types


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _values(schema: Mapping[str, Any]) -> set[str] | None:
    if "enum" in schema and isinstance(schema["enum"], list):
        return {_canonical(v) for v in schema["enum"]}
    if "const" in schema:
        return {_canonical(schema["const"])}
    return None


def _names(types: list[str] | None) -> str:
    if types is None:
        return "any type"
    return json.dumps(types[0]) if len(types) == 1 else json.dumps(types)


def _list(values: list[str]) -> str:
    return ", ".join(values)
