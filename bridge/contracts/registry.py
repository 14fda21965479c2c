"""The event-type registry: loading it, checking it, and the rules for emitting and consuming.

The registry (``contracts/event-types-registry.json``) maps each event type to its producer domain,
its consumers and its schema versions. :func:`check_contracts` finds *every* problem in a contracts
directory at once (so a broken change is fixed in one round, not one error at a time);
:meth:`Registry.load` raises :class:`RegistryError` listing them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema

from bridge.errors import (
    InactiveVersionError,
    Problem,
    ProducerMismatchError,
    RegistryError,
    SunsetVersionError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    json_pointer,
)

__all__ = [
    "CONSUMER_NAMES",
    "DOMAINS",
    "ENVELOPE_SCHEMA_PATH",
    "REGISTRY_FILE",
    "STATUSES",
    "WAREHOUSE",
    "EventType",
    "Registry",
    "SchemaVersion",
    "check_contracts",
    "default_contracts_path",
]

#: The closed set of producing domains.
DOMAINS: frozenset[str] = frozenset({"growth", "platform", "sales", "revenue", "delivery", "coaching"})
#: The warehouse loader, a consumer that is not a domain.
WAREHOUSE = "platform-warehouse"
#: Every name that may appear in a ``consumers`` list.
CONSUMER_NAMES: frozenset[str] = DOMAINS | {WAREHOUSE}
STATUSES: tuple[str, ...] = ("active", "deprecated", "sunset")

REGISTRY_FILE = "event-types-registry.json"
ENVELOPE_SCHEMA_PATH = "event-envelope/schema/envelope-v1.json"

_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EVENT_KEYS = {"producer", "consumers", "owning_contract", "schema_versions"}
_VERSION_KEYS = {"version", "payload_schema", "status", "registered_at", "active_from", "deprecated_at", "notes"}


def default_contracts_path() -> Path:
    """The ``contracts/`` directory shipped beside the package (the repository's)."""
    return Path(__file__).resolve().parents[2] / "contracts"


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One registered ``(event_type, schema_version)``."""

    event_type: str
    version: int
    payload_schema: str | None
    status: str
    registered_at: date
    active_from: date | None = None
    deprecated_at: date | None = None
    notes: str | None = None

    def is_deprecated(self, today: date) -> bool:
        """Deprecated by status, or by a ``deprecated_at`` date that has arrived."""
        return self.status == "deprecated" or (self.deprecated_at is not None and self.deprecated_at <= today)


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event type: who produces it, who consumes it, and its versions."""

    name: str
    producer: str
    consumers: tuple[str, ...]
    owning_contract: str | None
    versions: Mapping[int, SchemaVersion]

    @property
    def latest(self) -> SchemaVersion:
        return self.versions[max(self.versions)]

    def emittable_versions(self, today: date) -> list[int]:
        return [
            v.version
            for v in self.versions.values()
            if v.status != "sunset" and (v.active_from is None or v.active_from <= today)
        ]


@dataclass(frozen=True, slots=True)
class Registry:
    """The loaded, checked registry. Build it with :meth:`load`."""

    root: Path
    events: Mapping[str, EventType]
    registry_version: str | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> Registry:
        """Load and check a contracts directory (default: the shipped one).

        Raises :class:`RegistryError` listing every problem found.
        """
        root = Path(path) if path is not None else default_contracts_path()
        problems, registry = _read(root)
        if problems or registry is None:
            raise RegistryError(problems)
        return registry

    def schema_file(self, version: SchemaVersion) -> Path | None:
        """Absolute path of the payload schema of a version, or ``None`` when it has none."""
        if version.payload_schema is None:
            return None
        return _resolve_schema_path(self.root, version.payload_schema)

    @property
    def envelope_schema_file(self) -> Path:
        return self.root / ENVELOPE_SCHEMA_PATH

    def lookup(self, event_type: str, schema_version: int) -> SchemaVersion | None:
        """The registered version, or ``None`` when the type or version is unknown (consumer side)."""
        entry = self.events.get(event_type)
        return entry.versions.get(schema_version) if entry else None

    def resolve_for_emit(
        self, event_type: str, schema_version: int, producer: str, *, today: date | None = None
    ) -> SchemaVersion:
        """Apply the registry's emit rules; return the version when ``producer`` may emit it.

        Raises a :class:`~bridge.errors.RegistrationError` subclass naming the rule broken: the type
        or version is not registered, ``producer`` is not the registered producer, the version is
        sunset, or its ``active_from`` date is in the future. Deprecated versions are returned; the
        caller warns (see :meth:`SchemaVersion.is_deprecated`).
        """
        today = today or datetime.now(UTC).date()
        entry = self.events.get(event_type)
        if entry is None:
            close = difflib.get_close_matches(event_type, list(self.events), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownEventTypeError(
                f"event type {event_type!r} is not registered in {self.root / REGISTRY_FILE}{hint}",
                event_type=event_type,
                schema_version=schema_version,
            )
        if producer != entry.producer:
            raise ProducerMismatchError(
                f"{producer!r} may not emit {event_type!r}: its registered producer is {entry.producer!r}",
                event_type=event_type,
                schema_version=schema_version,
            )
        version = entry.versions.get(schema_version)
        if version is None:
            raise UnknownSchemaVersionError(
                f"{event_type!r} has no schema_version {schema_version!r}; registered: "
                + ", ".join(str(v) for v in sorted(entry.versions)),
                event_type=event_type,
                schema_version=schema_version,
            )
        if version.status == "sunset":
            usable = entry.emittable_versions(today)
            raise SunsetVersionError(
                f"{event_type!r} v{schema_version} is sunset and may no longer be emitted"
                + (f"; emit v{max(usable)}" if usable else ""),
                event_type=event_type,
                schema_version=schema_version,
            )
        if version.active_from is not None and version.active_from > today:
            raise InactiveVersionError(
                f"{event_type!r} v{schema_version} is active only from {version.active_from.isoformat()} "
                f"(today is {today.isoformat()})",
                event_type=event_type,
                schema_version=schema_version,
            )
        return version

    def subscriptions(self, consumer: str) -> list[str]:
        """Event types whose registry entry lists ``consumer``, sorted."""
        return sorted(name for name, entry in self.events.items() if consumer in entry.consumers)


def check_contracts(path: str | Path | None = None) -> list[Problem]:
    """Every problem in a contracts directory, or ``[]`` when it is sound."""
    root = Path(path) if path is not None else default_contracts_path()
    problems, _ = _read(root)
    return problems


# --- reading and checking -------------------------------------------------------------------------


def _read(root: Path) -> tuple[list[Problem], Registry | None]:
    reader = _Reader(root)
    registry = reader.read()
    return reader.problems, registry


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = str(root / REGISTRY_FILE)
        self.problems: list[Problem] = []

    def problem(self, path: list[str | int], message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, json_pointer(path), message))

    def read(self) -> Registry | None:
        if not self.root.is_dir():
            self.problem([], f"contracts directory {self.root} does not exist", file=str(self.root))
            return None
        self._check_schema_file(self.root / ENVELOPE_SCHEMA_PATH, expect_object=True)
        document = _load_json(self.root / REGISTRY_FILE, self.problems)
        if document is None:
            return None
        if not isinstance(document, dict):
            self.problem([], "the registry must be a JSON object")
            return None
        events = document.get("events")
        if not isinstance(events, dict):
            self.problem(["events"], "missing or not an object: the registry lists event types under 'events'")
            return None
        parsed = {name: self._event(name, entry) for name, entry in events.items()}
        if self.problems:
            return None
        version = document.get("registry_version")
        return Registry(self.root, {k: v for k, v in parsed.items() if v}, str(version) if version else None)

    def _event(self, name: str, entry: Any) -> EventType | None:
        at = ["events", name]
        if not _EVENT_TYPE.match(name):
            self.problem(at, f"invalid event type name {name!r}: use dotted lower case, e.g. credit.released")
        if not isinstance(entry, dict):
            self.problem(at, "an event type entry must be an object")
            return None
        for key in sorted(set(entry) - _EVENT_KEYS):
            self.problem([*at, key], f"unknown field {key!r} (allowed: {', '.join(sorted(_EVENT_KEYS))})")
        for key in sorted({"producer", "consumers", "schema_versions"} - set(entry)):
            self.problem([*at, key], "required field is missing")
        producer = entry.get("producer")
        if "producer" in entry and producer not in DOMAINS:
            self.problem([*at, "producer"], f"unknown domain {producer!r} (known: {', '.join(sorted(DOMAINS))})")
        consumers = entry.get("consumers", [])
        if not isinstance(consumers, list):
            self.problem([*at, "consumers"], "must be a list of consumer names")
            consumers = []
        for i, consumer in enumerate(consumers):
            if consumer not in CONSUMER_NAMES:
                self.problem(
                    [*at, "consumers", i],
                    f"unknown consumer {consumer!r} (known: {', '.join(sorted(CONSUMER_NAMES))})",
                )
            elif consumers.index(consumer) != i:
                self.problem([*at, "consumers", i], f"consumer {consumer!r} is listed twice")
        owning = entry.get("owning_contract")
        if owning is not None and not isinstance(owning, str):
            self.problem([*at, "owning_contract"], "must be a path string or null")
        versions_raw = entry.get("schema_versions", [])
        if not isinstance(versions_raw, list) or ("schema_versions" in entry and not versions_raw):
            self.problem([*at, "schema_versions"], "must be a non-empty list of schema versions")
            versions_raw = []
        versions: dict[int, SchemaVersion] = {}
        first_index: dict[int, int] = {}
        for i, raw in enumerate(versions_raw):
            number = raw.get("version") if isinstance(raw, dict) else None
            if isinstance(number, int) and number in first_index:
                self.problem(
                    [*at, "schema_versions", i, "version"],
                    f"duplicate version {number} (first at {json_pointer([*at, 'schema_versions', first_index[number]])})",
                )
            elif isinstance(number, int):
                first_index[number] = i
            version = self._version(name, [*at, "schema_versions", i], raw)
            if version is not None and version.version not in versions:
                versions[version.version] = version
        if not versions or producer not in DOMAINS:
            return None
        return EventType(name, producer, tuple(c for c in consumers if isinstance(c, str)), owning, versions)

    def _version(self, event_type: str, at: list[str | int], raw: Any) -> SchemaVersion | None:
        if not isinstance(raw, dict):
            self.problem(at, "a schema version must be an object")
            return None
        before = len(self.problems)
        for key in sorted(set(raw) - _VERSION_KEYS):
            self.problem([*at, key], f"unknown field {key!r} (allowed: {', '.join(sorted(_VERSION_KEYS))})")
        for key in sorted({"version", "payload_schema", "status", "registered_at"} - set(raw)):
            self.problem([*at, key], "required field is missing")
        number = raw.get("version")
        if "version" in raw and (not isinstance(number, int) or isinstance(number, bool) or number < 1):
            self.problem([*at, "version"], f"must be an integer >= 1, got {number!r}")
        status = raw.get("status")
        if "status" in raw and status not in STATUSES:
            self.problem([*at, "status"], f"unknown status {status!r} (allowed: {', '.join(STATUSES)})")
        dates = {key: self._date([*at, key], raw.get(key)) for key in ("registered_at", "active_from", "deprecated_at")}
        if dates["deprecated_at"] and dates["registered_at"] and dates["deprecated_at"] < dates["registered_at"]:
            self.problem([*at, "deprecated_at"], "is before registered_at")
        notes = raw.get("notes")
        if notes is not None and not isinstance(notes, str):
            self.problem([*at, "notes"], "must be a string")
        schema_path = raw.get("payload_schema")
        if schema_path is not None:
            self._payload_schema([*at, "payload_schema"], event_type, number, schema_path)
        if len(self.problems) > before or dates["registered_at"] is None:
            return None
        return SchemaVersion(
            event_type=event_type,
            version=number,
            payload_schema=schema_path,
            status=status,
            registered_at=dates["registered_at"],
            active_from=dates["active_from"],
            deprecated_at=dates["deprecated_at"],
            notes=notes,
        )

    def _date(self, at: list[str | int], value: Any) -> date | None:
        if value is None:
            return None
        if isinstance(value, str) and _DATE.match(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        self.problem(at, f"invalid date {value!r} (expected YYYY-MM-DD)")
        return None

    def _payload_schema(self, at: list[str | int], event_type: str, version: Any, value: Any) -> None:
        if not isinstance(value, str):
            self.problem(at, f"must be a path string or null, got {value!r}")
            return
        path = _resolve_schema_path(self.root, value)
        if path is None:
            self.problem(at, f"{value!r} points outside the contracts directory {self.root}")
            return
        expected = f"{event_type}-v{version}.json"
        if PurePosixPath(value).name != expected:
            self.problem(at, f"{value!r} does not follow the naming rule <event_type>-v<n>.json ({expected})")
        if not path.is_file():
            self.problem(at, f"payload schema file {path} does not exist")
            return
        self._check_schema_file(path, expect_object=True)

    def _check_schema_file(self, path: Path, *, expect_object: bool) -> None:
        schema = _load_json(path, self.problems)
        if schema is None:
            return
        if not isinstance(schema, dict):
            self.problems.append(Problem(str(path), "", "a JSON Schema must be an object"))
            return
        if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            self.problems.append(Problem(str(path), "/$schema", "must be https://json-schema.org/draft/2020-12/schema"))
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            self.problems.append(Problem(str(path), json_pointer(exc.absolute_path), f"invalid JSON Schema: {exc.message}"))
            return
        if expect_object and schema.get("type") != "object":
            self.problems.append(Problem(str(path), "/type", "a payload or envelope schema must have type: object"))


def _load_json(path: Path, problems: list[Problem]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "file not found"))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), "", f"cannot read: {exc}"))
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(Problem(str(path), "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"))
        return None


def _resolve_schema_path(root: Path, value: str) -> Path | None:
    # The registry writes paths from the repository root ("contracts/identity/…"); they are resolved
    # against whichever contracts directory was loaded, and may not escape it.
    parts = PurePosixPath(value).parts
    if parts and parts[0] == "contracts":
        parts = parts[1:]
    if not parts or PurePosixPath(value).is_absolute() or ".." in parts:
        return None
    return root.joinpath(*parts)
