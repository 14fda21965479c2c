"""bridge's services built from its settings: the one place where :class:`BridgeSettings` become
library objects. The CLI, the demo and the tests use these functions, so a setting reaches every
component the same way.

    settings = load_settings()                      # BRIDGE_* from the environment
    relay = build_relay(settings)                   # a Service: relay.run() until relay.stop()
    runner = build_consumer(app, settings)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.avro import AvroCodec
from bridge.config import BridgeSettings, setting_name
from bridge.consumer.aio import AsyncPostgresApplier
from bridge.consumer.app import ConsumerApp
from bridge.consumer.applying import PostgresApplier
from bridge.consumer.orm import DjangoApplier
from bridge.consumer.reading import RecordReader, ValueDecoder
from bridge.consumer.runner import ConsumerRunner
from bridge.contracts import Contracts, Registry
from bridge.dlq.tools import REPLAY_OF_HEADER
from bridge.errors import ConfigurationError, DecodeError
from bridge.kafka.ports import KafkaClients
from bridge.kafka.records import Record
from bridge.observability import ConsumerMetrics, RelayMetrics
from bridge.outbox.store import PostgresOutbox
from bridge.relay import RecordEncoder, Relay
from bridge.relay.encoding import ValueEncoder
from bridge.signing import SignedRecord
from bridge.sinks.files import FileSink
from bridge.sinks.warehouse import warehouse_app
from bridge.topics.catalog import Catalog, catalog_path
from bridge.topics.naming import replay_topic_name

__all__ = [
    "applier_for",
    "build_consumer",
    "build_file_sink",
    "build_relay",
    "build_warehouse_sink",
    "contracts_of",
    "kafka_clients",
    "record_reader",
    "topic_catalog",
    "topic_prefix",
]


def contracts_of(settings: BridgeSettings) -> Contracts:
    """The contracts ``BRIDGE_CONTRACTS_PATH`` names (else the shipped ones)."""
    return Contracts.load(settings.contracts_path)


def topic_prefix(settings: BridgeSettings, registry: Registry) -> str:
    """``BRIDGE_TOPIC_PREFIX`` when set, else the contracts' own."""
    return settings.topic_prefix if settings.topic_prefix is not None else registry.topic_prefix


def topic_catalog(settings: BridgeSettings, registry: Registry) -> Catalog:
    return Catalog.load(catalog_path(registry, settings.topic_catalog))


def kafka_clients(settings: BridgeSettings) -> KafkaClients:
    """The confluent-kafka clients, configured from ``BRIDGE_KAFKA__*`` and the tuning settings."""
    from bridge.kafka.confluent import ConfluentClients

    return ConfluentClients(settings)


def build_relay(
    settings: BridgeSettings,
    *,
    clients: KafkaClients | None = None,
    contracts: Contracts | None = None,
    metrics: RelayMetrics | None = None,
) -> Relay:
    contracts = contracts or contracts_of(settings)
    value_encoder = _value_encoder(settings, contracts.registry)
    encoder = RecordEncoder(
        topic_prefix(settings, contracts.registry), value_encoder=value_encoder, signer=settings.signing.signer()
    )
    schema = settings.database.schema_name
    connect = PostgresOutbox(settings.database_url(), schema, connect_timeout=settings.database.connect_timeout)
    return Relay(
        connect, clients or kafka_clients(settings), encoder, schema=schema, settings=settings.relay, metrics=metrics
    )


def _value_encoder(settings: BridgeSettings, registry: Registry) -> ValueEncoder | None:
    """JSON (``None``), Avro single-object encoding (``BRIDGE_VALUE_FORMAT=avro``), or the Confluent
    wire format with a Schema Registry (``BRIDGE_SCHEMA_REGISTRY__URL`` set)."""
    if settings.schema_registry.url:
        if settings.value_format == "avro":
            raise ConfigurationError(
                f"{setting_name('value_format')}=avro and {setting_name('schema_registry', 'url')} are both set: "
                "the relay writes single-object Avro or the Schema Registry's wire format, not both "
                f"(choose the registry's Avro with {setting_name('schema_registry', 'format')}=avro)"
            )
        try:
            from bridge.schema_registry import SchemaRegistryEncoder
        except ImportError as exc:
            raise _no_registry_client(exc) from None
        return SchemaRegistryEncoder.from_settings(
            settings.schema_registry, registry, topic_prefix=topic_prefix(settings, registry)
        )
    return AvroCodec(registry) if settings.value_format == "avro" else None


def _no_registry_client(exc: ImportError) -> ConfigurationError:
    return ConfigurationError(
        f"{setting_name('schema_registry', 'url')} is set but the Schema Registry client is not installed "
        f"({exc}): pip install 'bridge[schema-registry]'"
    )


def record_reader(settings: BridgeSettings, contracts: Contracts, *, consumer: str) -> RecordReader:
    """How a consumer (or sink) reads its records: the topic says the type (a replay names its
    original topic), signatures are checked when required, Avro is decoded by its header."""
    prefix = topic_prefix(settings, contracts.registry)
    replay = replay_topic_name(prefix, consumer)

    def original_topic(record: SignedRecord) -> str:
        """The topic the record was published to: a replay names it in a header."""
        if record.topic != replay:
            return record.topic
        original = dict(record.headers).get(REPLAY_OF_HEADER)  # the last one wins, as Record.header
        return original.decode("utf-8", "replace") if original is not None else ""

    def expected_type(record: Record) -> str | None:
        topic = original_topic(record)
        return topic[len(prefix) :] if topic.startswith(prefix) else None

    verifier = settings.signing.verifier()
    if verifier is not None:
        verifier = verifier.for_topics(original_topic)
    decoders: dict[bytes, ValueDecoder] = {}
    avro = _LazyAvro(contracts.registry)
    decoders[AvroCodec.content_type] = avro
    registry_decoder = _LazyRegistryDecoder(settings)
    for content_type in (b"application/vnd.confluent.avro", b"application/vnd.confluent.json"):
        decoders[content_type] = registry_decoder
    return RecordReader(
        contracts,
        expected_type,
        verifier=verifier,
        decoders=decoders,
        wire_format=registry_decoder,
        missing_headers=settings.consumer.missing_headers,
    )


class _LazyAvro:
    """Compiles the Avro schemas on the first Avro record: JSON-only consumers never pay for it."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._codec: AvroCodec | None = None

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, object]:
        if self._codec is None:
            self._codec = AvroCodec(self._registry)
        return self._codec.decode(data, source=source)


class _LazyRegistryDecoder:
    """Reads the Confluent wire format by schema id; the client is made on the first such record.
    Without ``BRIDGE_SCHEMA_REGISTRY__URL`` such a record cannot be read: it is dead-lettered with
    that said (replay it once the setting is there)."""

    def __init__(self, settings: BridgeSettings) -> None:
        self._settings = settings.schema_registry
        self._decoder: ValueDecoder | None = None

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, object]:
        if self._decoder is None:
            if not self._settings.url:
                raise DecodeError(
                    "a Schema Registry record (Confluent wire format) but "
                    f"{setting_name('schema_registry', 'url')} is not set: this consumer cannot read it",
                    source=source,
                )
            try:
                from bridge.schema_registry import SchemaRegistryDecoder
            except ImportError as exc:
                raise _no_registry_client(exc) from None
            self._decoder = SchemaRegistryDecoder.from_settings(self._settings)
        return self._decoder.decode(data, source=source)


def build_consumer(
    app: ConsumerApp,
    settings: BridgeSettings,
    *,
    clients: KafkaClients | None = None,
    metrics: ConsumerMetrics | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> ConsumerRunner:
    """A runner for ``app``: its group, its topics, the error policy of ``BRIDGE_CONSUMER__*``
    (unless the app was given its own), the inbox in ``BRIDGE_DATABASE__SCHEMA_NAME``. An app of
    ``async def`` handlers applies in ``loop`` (default: a loop of its own; see
    :mod:`bridge.consumer.aio`)."""
    contracts = app.contracts
    applier = applier_for(app, settings, loop=loop)
    applier.check_schema()
    return ConsumerRunner(
        app,
        applier,
        clients or kafka_clients(settings),
        record_reader(settings, contracts, consumer=app.consumer),
        topic_prefix=topic_prefix(settings, contracts.registry),
        settings=settings.consumer,
        metrics=metrics,
    )


def applier_for(
    app: ConsumerApp, settings: BridgeSettings, *, loop: asyncio.AbstractEventLoop | None = None
) -> PostgresApplier | AsyncPostgresApplier | DjangoApplier:
    """The applier ``app`` needs: Django's connection, an asyncio one, or psycopg's."""
    schema = settings.database.schema_name
    if app.connection == "django":
        return DjangoApplier(app, schema)
    timeout = settings.database.connect_timeout
    if app.is_async:
        return AsyncPostgresApplier(app, settings.database_url(), schema, loop=loop, connect_timeout=timeout)
    return PostgresApplier(app, settings.database_url(), schema, connect_timeout=timeout)


def build_warehouse_sink(
    settings: BridgeSettings,
    *,
    clients: KafkaClients | None = None,
    contracts: Contracts | None = None,
    metrics: ConsumerMetrics | None = None,
) -> ConsumerRunner:
    """The PostgreSQL warehouse sink: every event of the warehouse consumer, in ``warehouse_events``."""
    contracts = contracts or contracts_of(settings)
    app = warehouse_app(contracts=contracts, schema=settings.database.schema_name)
    return build_consumer(app, settings, clients=clients, metrics=metrics)


def build_file_sink(
    settings: BridgeSettings,
    directory: Path,
    *,
    fmt: str = "avro",
    max_bytes: int = 64 * 1024 * 1024,
    max_seconds: float = 60.0,
    clients: KafkaClients | None = None,
    contracts: Contracts | None = None,
) -> FileSink:
    contracts = contracts or contracts_of(settings)
    consumer = contracts.registry.warehouse_consumer
    return FileSink(
        contracts,
        clients or kafka_clients(settings),
        record_reader(settings, contracts, consumer=consumer),
        directory,
        topic_prefix=topic_prefix(settings, contracts.registry),
        consumer=consumer,
        fmt="jsonl" if fmt == "jsonl" else "avro",
        max_bytes=max_bytes,
        max_seconds=max_seconds,
        batch_size=settings.consumer.batch_size,
        poll_timeout=settings.consumer.poll_timeout,
        dlq_timeout=settings.consumer.dlq_timeout,
    )
