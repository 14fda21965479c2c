"""Schema Registry interoperability: the Confluent wire format on bridge's topics.

With ``BRIDGE_SCHEMA_REGISTRY__URL`` set, the relay writes each record value as a Confluent
serializer would: magic byte ``0``, the 4-byte big-endian schema id, then the Avro binary (or the
JSON text, with ``BRIDGE_SCHEMA_REGISTRY__FORMAT=json``), with ``content-type:
application/vnd.confluent.avro`` (``…json``). The schema of each ``(event_type, version)`` is the
envelope with that version's payload (the Avro schema of :func:`bridge.avro.avro_schema`, or the
envelope JSON Schema with the payload schema inlined), registered on first use under the subject
naming chosen (``topic``: ``{topic}-value``, Confluent's default; ``record``: the record's full name;
``topic_record``: ``{topic}-{record}``), after setting the subject's compatibility to the contracts'
mode. Consumers and sinks read such records by schema id, whatever produced them, so a JVM or Kafka
Connect producer using the registry feeds bridge consumers and the other way round.

The client is confluent-kafka's ``schema_registry`` module (serializers included); this module only
chooses subjects, sets compatibility, and names failures the bridge way:

- the registry unreachable (or answering 5xx/429): :class:`SchemaRegistryUnavailableError`, an
  outage (retriable: the relay backs off and retries; a consumer pauses);
- the registry refusing a schema (HTTP 409: incompatible; 422: invalid; 401/403; a schema not
  registered while ``auto_register`` is off): :class:`SchemaRegistryRefusedError`, permanent;
- a record that is not in the wire format, or names a schema id the registry does not know:
  :class:`~bridge.errors.DecodeError` (dead-lettered).

Errors are told apart by HTTP status and ``error_code``, never by message text (Apicurio's messages
carry Java exception names).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar, cast

from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from bridge.avro import avro_schema, compatibility_problems, from_record, to_record
from bridge.config import SchemaRegistrySettings, setting_name
from bridge.contracts import Registry
from bridge.errors import ContractError, DecodeError, InfrastructureError, Problem, json_pointer
from bridge.topics.naming import topic_name

__all__ = [
    "REGISTRY_AVRO_CONTENT_TYPE",
    "REGISTRY_CONTENT_TYPES",
    "REGISTRY_JSON_CONTENT_TYPE",
    "RegistryReport",
    "SchemaRegistryDecoder",
    "SchemaRegistryEncoder",
    "SchemaRegistryRefusedError",
    "SchemaRegistryUnavailableError",
    "check_registry",
    "client_for",
    "compatibility_level",
    "registry_schema",
    "subject_name",
]

log = logging.getLogger(__name__)

REGISTRY_AVRO_CONTENT_TYPE = b"application/vnd.confluent.avro"
REGISTRY_JSON_CONTENT_TYPE = b"application/vnd.confluent.json"
REGISTRY_CONTENT_TYPES = (REGISTRY_AVRO_CONTENT_TYPE, REGISTRY_JSON_CONTENT_TYPE)
_MAGIC = 0
_URL_SETTING = setting_name("schema_registry", "url")

Strategy = Literal["topic", "record", "topic_record"]
Format = Literal["avro", "json"]
_T = TypeVar("_T")


class SchemaRegistryUnavailableError(InfrastructureError):
    """The Schema Registry did not answer, or answered with a server error: an outage, retriable."""


class SchemaRegistryRefusedError(ContractError):
    """The Schema Registry refused a request for what it is (an incompatible or invalid schema, a
    schema that is not registered while auto-registration is off, missing rights): permanent.
    ``status`` and ``error_code`` are the registry's."""

    def __init__(self, message: str, *, subject: str = "", status: int = 0, error_code: int = 0) -> None:
        self.subject = subject
        self.status = status
        self.error_code = error_code
        super().__init__(message)


def _transport_errors() -> tuple[type[BaseException], ...]:
    # confluent-kafka talks HTTP through httpx2 (or httpx); their errors share a base class.
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


_TRANSPORT = _transport_errors()


def _call(what: str, url: str, call: Callable[[], _T], *, subject: str = "") -> _T:
    """Run one registry request; raise the bridge error for its failure."""
    try:
        return call()
    except SchemaRegistryError as exc:
        status = exc.http_status_code or 0
        if status >= 500 or status in (408, 429) or status <= 0:
            raise SchemaRegistryUnavailableError(
                f"Schema Registry {url}: {what} failed with HTTP {status} (error_code {exc.error_code}): "
                f"{exc.error_message}",
                setting=_URL_SETTING,
            ) from None
        raise SchemaRegistryRefusedError(
            f"Schema Registry {url}: {what} refused with HTTP {status} (error_code {exc.error_code}): "
            f"{exc.error_message}",
            subject=subject,
            status=status,
            error_code=exc.error_code or 0,
        ) from None
    except _TRANSPORT as exc:
        raise SchemaRegistryUnavailableError(
            f"Schema Registry {url} unreachable during {what}: {type(exc).__name__}: {exc}", setting=_URL_SETTING
        ) from None


def client_for(settings: SchemaRegistrySettings, *, url: str | None = None) -> SchemaRegistryClient:
    """A confluent-kafka Schema Registry client from ``BRIDGE_SCHEMA_REGISTRY__*`` (``url`` overrides)."""
    base = url or settings.url
    if not base:
        raise ContractError(f"{_URL_SETTING} is not set")
    config: dict[str, Any] = {"url": base.rstrip("/"), "timeout": settings.timeout, **settings.options}
    if settings.basic_auth is not None:
        config["basic.auth.user.info"] = settings.basic_auth.get_secret_value()
    return SchemaRegistryClient(config)


def compatibility_level(mode: str) -> str:
    """The registry's name of a contracts compatibility mode: ``backward-transitive`` →
    ``BACKWARD_TRANSITIVE``."""
    return mode.upper().replace("-", "_")


def subject_name(strategy: str, topic: str, record_name: str) -> str:
    """The subject of a value schema: Confluent's TopicNameStrategy (``{topic}-value``),
    RecordNameStrategy (``{record}``) or TopicRecordNameStrategy (``{topic}-{record}``)."""
    if strategy == "topic":
        return f"{topic}-value"
    if strategy == "record":
        return record_name
    if strategy == "topic_record":
        return f"{topic}-{record_name}"
    raise ValueError(f"unknown subject strategy {strategy!r} (topic, record or topic_record)")


def registry_schema(registry: Registry, event_type: str, version: int, fmt: str = "avro") -> tuple[Schema, str]:
    """The schema registered for ``(event_type, version)`` and its record name (for the record
    subject strategies): the Avro record of the envelope, or the envelope JSON Schema with the
    payload schema inlined (titled with the same full name)."""
    avro = avro_schema(registry, event_type, version)
    record = f"{avro['namespace']}.{avro['name']}"
    if fmt == "avro":
        return Schema(json.dumps(avro), "AVRO"), record
    if fmt != "json":
        raise ValueError(f"unknown Schema Registry format {fmt!r} (avro or json)")
    envelope = json.loads(registry.envelope_schema_file.read_text(encoding="utf-8"))
    registered = registry.lookup(event_type, version)
    path = registry.schema_file(registered) if registered is not None else None
    payload: dict[str, Any] = {"type": "object", "description": envelope["properties"]["payload"]["description"]}
    if path is not None:
        source = json.loads(path.read_text(encoding="utf-8"))
        payload = _inlined(source, "#/properties/payload")
    # No $schema: registries judge JSON Schema with draft-07 tools (Apicurio's cannot read 2020-12),
    # and every keyword the contracts use means the same there; $defs are reached by JSON pointer.
    schema = {k: v for k, v in envelope.items() if k not in ("$schema", "$id")}
    schema["title"] = record
    schema["properties"] = {**schema["properties"], "payload": payload}
    return Schema(json.dumps(schema), "JSON"), record


def _inlined(source: Mapping[str, Any], base: str) -> dict[str, Any]:
    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#/") else rewrite(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    inlined: dict[str, Any] = rewrite({k: v for k, v in source.items() if k not in ("$schema", "$id")})
    return inlined


# --- the relay side ------------------------------------------------------------------------------------


@dataclass
class _Writer:
    subject: str
    schema_id: int
    raw: dict[str, Any]
    serialize: Callable[[Any, SerializationContext], bytes | None]
    context: SerializationContext


class SchemaRegistryEncoder:
    """A relay :class:`~bridge.relay.encoding.ValueEncoder` writing the Confluent wire format.

    The schema of a ``(type, version)`` is registered (or, with ``auto_register=False``, looked up)
    the first time an event of it is encoded, after setting its subject's compatibility to
    ``compatibility`` (a contracts mode; ``None`` leaves the subject's setting alone); its id is
    cached for the life of the encoder.
    """

    def __init__(
        self,
        registry: Registry,
        client: SchemaRegistryClient,
        *,
        topic_prefix: str,
        strategy: Strategy = "topic",
        fmt: Format = "avro",
        compatibility: str | None = None,
        auto_register: bool = True,
        url: str = "",
    ) -> None:
        self.registry = registry
        self.client = client
        self.topic_prefix = topic_prefix
        self.strategy = strategy
        self.fmt = fmt
        self.compatibility = compatibility
        self.auto_register = auto_register
        self.url = url
        self.content_type = REGISTRY_AVRO_CONTENT_TYPE if fmt == "avro" else REGISTRY_JSON_CONTENT_TYPE
        self._writers: dict[tuple[str, int], _Writer] = {}
        self._configured: set[str] = set()

    @classmethod
    def from_settings(
        cls, settings: SchemaRegistrySettings, registry: Registry, *, topic_prefix: str
    ) -> SchemaRegistryEncoder:
        mode = settings.compatibility or registry.manifest.compatibility
        return cls(
            registry,
            client_for(settings),
            topic_prefix=topic_prefix,
            strategy=settings.subject_strategy,
            fmt=settings.format,
            compatibility=mode if settings.set_compatibility else None,
            auto_register=settings.auto_register,
            url=settings.url or "",
        )

    def schema_id(self, event_type: str, version: int) -> int:
        """The registry's id of the schema of ``(event_type, version)`` (registering it if needed)."""
        return self._writer(event_type, version).schema_id

    def subject(self, event_type: str, version: int) -> str:
        return self._writer(event_type, version).subject

    def encode(self, document: Mapping[str, Any]) -> bytes:
        """A validated envelope document → magic byte, schema id, Avro binary (or JSON)."""
        writer = self._writer(document["event_type"], document["schema_version"])
        value: Any = to_record(document, writer.raw) if self.fmt == "avro" else dict(document)
        try:
            data = _call("serialize", self.url, lambda: writer.serialize(value, writer.context), subject=writer.subject)
        except SerializationError as exc:
            raise ContractError(
                f"{document['event_type']} v{document['schema_version']}: cannot encode for subject "
                f"{writer.subject}: {exc}"
            ) from None
        if data is None:  # pragma: no cover - only for a None value
            raise ContractError("the serializer returned no bytes")
        return data

    def _writer(self, event_type: str, version: int) -> _Writer:
        key = (event_type, version)
        writer = self._writers.get(key)
        if writer is not None:
            return writer
        schema, record = registry_schema(self.registry, event_type, version, self.fmt)
        topic = topic_name(self.topic_prefix, event_type)
        subject = subject_name(self.strategy, topic, record)
        if self.compatibility is not None and subject not in self._configured:
            self._set_compatibility(subject)
        registered = self._register(subject, schema, event_type, version)
        serialize: Callable[[Any, SerializationContext], bytes | None]
        config = {"auto.register.schemas": self.auto_register, "subject.name.strategy": lambda _ctx, _name: subject}
        if self.fmt == "avro":
            serialize = AvroSerializer(self.client, schema, conf=config)
        else:
            serialize = JSONSerializer(schema, self.client, conf=config)
        writer = _Writer(
            subject,
            registered.schema_id or 0,
            json.loads(schema.schema_str or "{}"),
            serialize,
            SerializationContext(topic, MessageField.VALUE),
        )
        self._writers[key] = writer
        log.info(
            "schema registry: %s v%d is schema id %d under subject %s",
            event_type,
            version,
            writer.schema_id,
            subject,
            extra={"subject": subject},
        )
        return writer

    def _set_compatibility(self, subject: str) -> None:
        assert self.compatibility is not None
        level = compatibility_level(self.compatibility)
        try:
            _call(
                f"set compatibility {level} on {subject}",
                self.url,
                lambda: self.client.set_compatibility(subject, level),
            )
        except SchemaRegistryRefusedError as exc:
            # Some registries refuse per-subject settings to producers; registering still works.
            log.warning("schema registry: could not set %s on %s: %s", level, subject, exc)
        self._configured.add(subject)

    def _register(self, subject: str, schema: Schema, event_type: str, version: int) -> RegisteredSchema:
        if self.auto_register:
            what = f"register {event_type} v{version} under {subject}"
            try:
                return _call(
                    what, self.url, lambda: self.client.register_schema_full_response(subject, schema), subject=subject
                )
            except SchemaRegistryRefusedError as exc:
                if exc.status == 409:
                    raise SchemaRegistryRefusedError(
                        f"{exc} — the schema of {event_type} v{version} breaks the compatibility of subject "
                        f"{subject} with the versions registered there (bridge contracts check --registry "
                        f"explains); the relay cannot publish it",
                        subject=subject,
                        status=exc.status,
                        error_code=exc.error_code,
                    ) from None
                raise
        what = f"look up {event_type} v{version} under {subject} (auto_register is off)"
        return _call(what, self.url, lambda: self.client.lookup_schema(subject, schema), subject=subject)


# --- the consumer side ----------------------------------------------------------------------------------


@dataclass
class _Reader:
    schema_type: str
    raw: Any
    deserialize: Callable[[bytes, SerializationContext | None], Any]


def _no_subject(_ctx: SerializationContext | None, _record_name: str | None) -> str | None:
    return None


class SchemaRegistryDecoder:
    """A consumer :class:`~bridge.consumer.reading.ValueDecoder` for the Confluent wire format: the
    writer's schema is fetched by its id (and cached: ids never change), Avro or JSON.

    While the registry is unreachable a new id is retried for ``retry_for`` seconds, then
    :class:`SchemaRegistryUnavailableError` (an outage) is raised.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        *,
        url: str = "",
        retry_for: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.url = url
        self.retry_for = retry_for
        self._sleep = sleep
        self._readers: dict[int, _Reader] = {}

    @classmethod
    def from_settings(cls, settings: SchemaRegistrySettings, *, retry_for: float = 30.0) -> SchemaRegistryDecoder:
        return cls(client_for(settings), url=settings.url or "", retry_for=retry_for)

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, Any]:
        if len(data) < 6 or data[0] != _MAGIC:
            raise DecodeError(
                "not the Confluent wire format: expected magic byte 0 and a 4-byte schema id before the value",
                source=source,
            )
        schema_id = int.from_bytes(data[1:5], "big")
        reader = self._reader(schema_id, source)
        try:
            value = reader.deserialize(bytes(data), None)
        except Exception as exc:  # noqa: BLE001 - any corrupt body is a decode error
            raise DecodeError(
                f"corrupt value for schema id {schema_id}: {type(exc).__name__}: {exc}", source=source
            ) from None
        if reader.schema_type == "AVRO":
            try:
                return from_record(cast("dict[str, Any]", value), reader.raw)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise DecodeError(
                    f"schema id {schema_id} is not an envelope schema bridge can read: {type(exc).__name__}: {exc}",
                    source=source,
                ) from None
        if not isinstance(value, dict):
            raise DecodeError(f"schema id {schema_id}: the value is not a JSON object", source=source)
        return value

    def _reader(self, schema_id: int, source: str | None) -> _Reader:
        reader = self._readers.get(schema_id)
        if reader is not None:
            return reader
        registered = self._fetch(schema_id, source)
        schema_type = (registered.schema_type or "AVRO").upper()
        deserialize: Callable[[bytes, SerializationContext | None], Any]
        if schema_type == "AVRO":
            deserialize = AvroDeserializer(self.client)
        elif schema_type == "JSON":
            # Read by the writer's schema id alone: no subject lookup (which would need the topic).
            deserialize = JSONDeserializer(
                None, schema_registry_client=self.client, conf={"subject.name.strategy": _no_subject}
            )
        else:
            raise DecodeError(
                f"schema id {schema_id} is a {schema_type} schema: bridge reads Avro and JSON", source=source
            )
        reader = _Reader(schema_type, json.loads(registered.schema_str or "null"), deserialize)
        self._readers[schema_id] = reader
        return reader

    def _fetch(self, schema_id: int, source: str | None) -> Schema:
        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        while True:
            try:
                return _call(f"get schema id {schema_id}", self.url, lambda: self.client.get_schema(schema_id))
            except SchemaRegistryRefusedError as exc:
                if exc.status == 404:
                    raise DecodeError(
                        f"unknown schema id {schema_id}: the Schema Registry {self.url} has no such schema "
                        f"(error_code {exc.error_code})",
                        source=source,
                    ) from None
                raise
            except SchemaRegistryUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("schema registry unavailable (%s); retrying", exc)
                self._sleep(delay)
                delay = min(delay * 2, 5.0)


# --- contracts check --registry ----------------------------------------------------------------------------


@dataclass
class RegistryReport:
    """What :func:`check_registry` found: incompatibilities (problems) and what it could not judge."""

    url: str
    problems: list[Problem] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_registry(
    registry: Registry,
    client: SchemaRegistryClient,
    *,
    topic_prefix: str,
    strategy: str = "topic",
    fmt: str = "avro",
    url: str = "",
) -> RegistryReport:
    """Ask the registry whether each local ``(type, version)`` is compatible with its subject.

    A version whose exact schema is registered is fine; a subject the registry does not have is new
    (nothing to compare with); otherwise the registry's compatibility endpoint decides, under the
    subject's own compatibility level. For each incompatible version the report lists the
    registry's verdict and, for Avro, bridge's reading of why (Avro resolution against the
    subject's latest schema).
    """
    report = RegistryReport(url)
    for event_type in sorted(registry.events):
        for version in sorted(registry.events[event_type].versions):
            schema, record = registry_schema(registry, event_type, version, fmt)
            subject = subject_name(strategy, topic_name(topic_prefix, event_type), record)
            label = f"{event_type} v{version} ({subject})"
            try:
                _call(f"look up {label}", url, partial(client.lookup_schema, subject, schema), subject=subject)
                report.registered.append(label)
                continue
            except SchemaRegistryRefusedError as exc:
                if exc.status != 404:
                    raise
                if exc.error_code == 40401:
                    report.new.append(label)
                    continue
            level = _subject_level(client, subject, url)
            compatible = _call(
                f"test {label}", url, partial(client.test_compatibility, subject, schema), subject=subject
            )
            if compatible:
                report.notes.append(f"{label}: not registered yet; compatible under {level}")
                continue
            report.problems += _incompatibility(registry, client, event_type, version, subject, level, schema, url)
    return report


def _subject_level(client: SchemaRegistryClient, subject: str, url: str) -> str:
    for target in (subject, None):
        try:
            return _call("get compatibility", url, partial(client.get_compatibility, target))
        except SchemaRegistryRefusedError:
            continue
    return "the registry's default"


def _incompatibility(
    registry: Registry,
    client: SchemaRegistryClient,
    event_type: str,
    version: int,
    subject: str,
    level: str,
    schema: Schema,
    url: str,
) -> list[Problem]:
    registered = registry.lookup(event_type, version)
    path = registry.schema_file(registered) if registered is not None else None
    file = str(path) if path is not None else str(registry.root / "event-types-registry.json")
    latest = _call(f"latest version of {subject}", url, lambda: client.get_latest_version(subject), subject=subject)
    verdict = (
        f"the Schema Registry {url} refuses {event_type} v{version} under subject {subject} ({level}): "
        f"incompatible with version {latest.version} (schema id {latest.schema_id}) registered there"
    )
    problems = [Problem(file, "", verdict)]
    if schema.schema_type != "AVRO" or latest.schema.schema_type not in (None, "AVRO"):
        return problems
    mine = json.loads(schema.schema_str or "{}")
    theirs = json.loads(latest.schema.schema_str or "{}")
    pairs: list[tuple[str, Any, Any]] = []
    if level.startswith(("BACKWARD", "FULL")):
        pairs.append((f"v{version} cannot read the registered data", mine, theirs))
    if level.startswith(("FORWARD", "FULL")):
        pairs.append((f"readers of the registered schema cannot read v{version} data", theirs, mine))
    for label, reader, writer in pairs:
        for text in compatibility_problems(reader, writer):
            where, _, message = text.partition(": ")
            problems.append(Problem(file, _payload_pointer(where), f"{subject} ({level}): {label} (Avro): {message}"))
    return problems


def _payload_pointer(avro_path: str) -> str:
    parts = [p for p in avro_path.split("/") if p]
    if not parts or parts[0] != "payload":
        return ""
    out: list[str] = []
    for part in parts[1:]:
        out += ["items"] if part == "items" else ["properties", part]
    return json_pointer(out)
