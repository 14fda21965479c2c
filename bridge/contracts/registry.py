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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import jsonschema

from bridge.errors import (
    ConfigurationError,
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
    "ENVELOPE_SCHEMA_PATH",
    "MANIFEST_FILE",
    "REGISTRY_FILE",
    "STATUSES",
    "CompatibilityMode",
    "EventType",
    "Manifest",
    "Registry",
    "SchemaVersion",
    "check_contracts",
    "resolve_contracts_path",
]

STATUSES: tuple[str, ...] = ("active", "deprecated", "sunset")

REGISTRY_FILE = "event-types-registry.json"
ENVELOPE_SCHEMA_PATH = "event-envelope/schema/envelope-v1.json"
MANIFEST_FILE = "contracts.toml"

CompatibilityMode = Literal[
    "backward", "forward", "full", "backward-transitive", "forward-transitive", "full-transitive", "none"
]
_MODES: tuple[str, ...] = get_args(CompatibilityMode)
_MANIFEST_KEYS = {
    "topic_prefix",
    "domains",
    "consumers",
    "warehouse_consumer",
    "compatibility",
    "avro_namespace",
    "topic_catalog",
}

_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EVENT_KEYS = {"producer", "consumers", "owning_contract", "schema_versions"}
_VERSION_KEYS = {"version", "payload_schema", "status", "registered_at", "active_from", "deprecated_at", "notes"}


def resolve_contracts_path(path: str | Path | None = None) -> Path:
    """The contracts directory to use: ``path`` when given, else ``BRIDGE_CONTRACTS_PATH``, else the
    shipped one. Every loader in bridge goes through here, so the setting is never ignored."""
    if path is not None:
        return Path(path)
    from bridge.config import load_settings
    from bridge.resources import shipped_contracts

    configured = load_settings().contracts_path
    return configured if configured is not None else shipped_contracts()


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``contracts.toml`` says about the organisation: its domains and other consumers, its
    topic prefix, compatibility mode, Avro namespace and topic catalog. Without the file, the
    domains come from the envelope schema's ``producer`` enum (else the registry's producers) and
    the other consumers are the consumer names that are not domains."""

    domains: frozenset[str]
    consumers: frozenset[str]
    topic_prefix: str = ""
    warehouse_consumer: str | None = None
    compatibility: CompatibilityMode = "backward"
    avro_namespace: str = "bridge"
    topic_catalog: Path | None = None
    declared: bool = field(default=False, compare=False)

    @property
    def consumer_names(self) -> frozenset[str]:
        """Every name that may appear in a ``consumers`` list: the domains and the others."""
        return self.domains | self.consumers


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
    manifest: Manifest = field(default_factory=lambda: Manifest(frozenset(), frozenset()))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Registry:
        """Load and check a contracts directory (default: ``BRIDGE_CONTRACTS_PATH``, else the
        shipped one). Raises :class:`RegistryError` listing every problem found.
        """
        root = resolve_contracts_path(path)
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

    @property
    def domains(self) -> frozenset[str]:
        return self.manifest.domains

    @property
    def consumer_names(self) -> frozenset[str]:
        """Every consumer the contracts know: the domains and the other consumers."""
        return self.manifest.consumer_names

    @property
    def active_consumers(self) -> list[str]:
        """Consumers some event type lists, sorted."""
        return sorted({c for entry in self.events.values() for c in entry.consumers})

    def check_consumer(self, consumer: str) -> str:
        """``consumer`` if the contracts know it; else :class:`ConfigurationError` listing them."""
        if consumer not in self.consumer_names:
            raise ConfigurationError(
                f"unknown consumer {consumer!r} (the contracts in {self.root} know: "
                f"{', '.join(sorted(self.consumer_names))})"
            )
        return consumer

    @property
    def topic_prefix(self) -> str:
        return self.manifest.topic_prefix

    @property
    def warehouse_consumer(self) -> str:
        name = self.manifest.warehouse_consumer
        if name is None:
            raise ConfigurationError(f"{self.root / MANIFEST_FILE} names no warehouse_consumer")
        return name


def check_contracts(path: str | Path | None = None) -> list[Problem]:
    """Every problem in a contracts directory, or ``[]`` when it is sound."""
    root = resolve_contracts_path(path)
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
        self.manifest = Manifest(frozenset(), frozenset())

    def problem(self, path: list[str | int], message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, json_pointer(path), message))

    def read(self) -> Registry | None:
        if not self.root.is_dir():
            self.problem([], f"contracts directory {self.root} does not exist", file=str(self.root))
            return None
        envelope = self._check_schema_file(self.root / ENVELOPE_SCHEMA_PATH, expect_object=True)
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
        self.manifest = self._manifest(envelope, events)
        parsed = {name: self._event(name, entry) for name, entry in events.items()}
        if self.problems:
            return None
        version = document.get("registry_version")
        return Registry(
            self.root, {k: v for k, v in parsed.items() if v}, str(version) if version else None, self.manifest
        )

    def _manifest(self, envelope: dict[str, Any] | None, events: dict[str, Any]) -> Manifest:
        """The organisation's names: declared in contracts.toml, else derived (see Manifest)."""
        path = self.root / MANIFEST_FILE
        enum = None
        if isinstance(envelope, dict):
            producer = envelope.get("properties", {}).get("producer", {})
            if isinstance(producer, dict) and isinstance(producer.get("enum"), list):
                enum = [str(name) for name in producer["enum"]]
        if not path.is_file():
            producers = {str(e.get("producer")) for e in events.values() if isinstance(e, dict) and e.get("producer")}
            domains = frozenset(enum) if enum is not None else frozenset(producers)
            named = {
                str(c)
                for e in events.values()
                if isinstance(e, dict)
                for c in e.get("consumers") or []
                if isinstance(c, str)
            }
            return Manifest(domains, frozenset(named - domains))
        file = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            self.problems.append(Problem(file, "", f"cannot read: {exc}"))
            return Manifest(frozenset(), frozenset())
        allowed = ", ".join(sorted(_MANIFEST_KEYS))
        for key in sorted(set(raw) - _MANIFEST_KEYS):
            self.problems.append(Problem(file, f"/{key}", f"unknown key (allowed: {allowed})"))
        domains = _names(raw.get("domains"), file, "/domains", self.problems)
        consumers = _names(raw.get("consumers", []), file, "/consumers", self.problems)
        if not domains:
            self.problems.append(Problem(file, "/domains", "list at least one producing domain"))
        overlap = sorted(domains & consumers)
        if overlap:
            self.problems.append(Problem(file, "/consumers", f"already domains: {', '.join(overlap)}"))
        if enum is not None and set(enum) != set(domains):
            self.problems.append(
                Problem(
                    str(self.root / ENVELOPE_SCHEMA_PATH),
                    "/properties/producer/enum",
                    f"must list the domains of {MANIFEST_FILE} ({', '.join(sorted(domains))}), got {', '.join(enum)}",
                )
            )
        prefix = raw.get("topic_prefix", "")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9._-]{0,200}", prefix):
            self.problems.append(
                Problem(file, "/topic_prefix", "letters, digits, '.', '_' and '-' only (Kafka topic rules)")
            )
            prefix = ""
        mode = raw.get("compatibility", "backward")
        if mode not in _MODES:
            self.problems.append(Problem(file, "/compatibility", f"one of {', '.join(_MODES)}, got {mode!r}"))
            mode = "backward"
        warehouse = raw.get("warehouse_consumer")
        if warehouse is not None and warehouse not in domains | consumers:
            self.problems.append(
                Problem(file, "/warehouse_consumer", f"{warehouse!r} is neither a domain nor a consumer")
            )
        namespace = raw.get("avro_namespace", "bridge")
        if not isinstance(namespace, str) or not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", namespace
        ):
            self.problems.append(Problem(file, "/avro_namespace", f"not an Avro namespace: {namespace!r}"))
            namespace = "bridge"
        catalog = raw.get("topic_catalog")
        catalog_path = (path.parent / catalog).resolve() if isinstance(catalog, str) else None
        return Manifest(
            frozenset(domains), frozenset(consumers), prefix, warehouse, mode, namespace, catalog_path, declared=True
        )

    def _event(self, name: str, entry: Any) -> EventType | None:
        at: list[str | int] = ["events", name]
        if not _EVENT_TYPE.match(name):
            self.problem(at, f"invalid event type name {name!r}: use dotted lower case, e.g. credit.released")
        if not isinstance(entry, dict):
            self.problem(at, "an event type entry must be an object")
            return None
        for key in sorted(set(entry) - _EVENT_KEYS):
            self.problem([*at, key], f"unknown field {key!r} (allowed: {', '.join(sorted(_EVENT_KEYS))})")
        for key in sorted({"producer", "consumers", "schema_versions"} - set(entry)):
            self.problem([*at, key], "required field is missing")
        domains = self.manifest.domains
        producer = entry.get("producer")
        if "producer" in entry and producer not in domains:
            self.problem([*at, "producer"], f"unknown domain {producer!r} (known: {', '.join(sorted(domains))})")
        consumers = entry.get("consumers", [])
        if not isinstance(consumers, list):
            self.problem([*at, "consumers"], "must be a list of consumer names")
            consumers = []
        for i, consumer in enumerate(consumers):
            if consumer not in self.manifest.consumer_names:
                self.problem(
                    [*at, "consumers", i],
                    f"unknown consumer {consumer!r} (known: {', '.join(sorted(self.manifest.consumer_names))})",
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
                first = json_pointer([*at, "schema_versions", first_index[number]])
                self.problem([*at, "schema_versions", i, "version"], f"duplicate version {number} (first at {first})")
            elif isinstance(number, int):
                first_index[number] = i
            version = self._version(name, [*at, "schema_versions", i], raw)
            if version is not None and version.version not in versions:
                versions[version.version] = version
        if not versions or producer not in domains:
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
        # No problem was found, so the checks above passed: the version is an int, the status a string.
        assert isinstance(number, int)
        assert isinstance(status, str)
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

    def _check_schema_file(self, path: Path, *, expect_object: bool) -> dict[str, Any] | None:
        schema = _load_json(path, self.problems)
        if schema is None:
            return None
        if not isinstance(schema, dict):
            self.problems.append(Problem(str(path), "", "a JSON Schema must be an object"))
            return None
        if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            self.problems.append(Problem(str(path), "/$schema", "must be https://json-schema.org/draft/2020-12/schema"))
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            self.problems.append(
                Problem(str(path), json_pointer(exc.absolute_path), f"invalid JSON Schema: {exc.message}")
            )
            return None
        if expect_object and schema.get("type") != "object":
            self.problems.append(Problem(str(path), "/type", "a payload or envelope schema must have type: object"))
        return schema


def _names(value: Any, file: str, pointer: str, problems: list[Problem]) -> frozenset[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", v) for v in value
    ):
        problems.append(Problem(file, pointer, "must be a list of lower-case names (letters, digits, '-', '_')"))
        return frozenset()
    return frozenset(value)


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
