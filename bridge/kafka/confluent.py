"""The Kafka ports on confluent-kafka (librdkafka): the only module that imports it.

Every client bridge uses is built here, by :class:`ConfluentClients`, with its safety settings
applied once and never overridable by configuration:

- producers: idempotent, ``acks=all``, partitioner ``murmur2_random`` (a Java client puts a key on
  the same partition); the relay's never times a record out (``message.timeout.ms=0``: a finite
  timeout can fail an earlier record while later ones of its key succeed), the DLQ's and replay's
  do, so a failure surfaces;
- consumers: ``enable.auto.offset.store=false``: an offset is stored only once the record's effects
  are durable.

librdkafka's own log lines go through Python logging (logger ``bridge.kafka.librdkafka``), once
each and rate-limited when they repeat, never raw on stderr.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import confluent_kafka
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as _TP
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)
from confluent_kafka.admin import NewTopic as _NewTopic

from bridge.errors import (
    BrokerUnavailableError,
    InvalidRecordError,
    KafkaError,
    KafkaFatalError,
    RecordTooLargeError,
    TopicNotFoundError,
)
from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole, RebalanceListener
from bridge.kafka.records import (
    BrokerInfo,
    ClusterInfo,
    DeliveryCallback,
    Headers,
    NewTopic,
    PartitionInfo,
    Record,
    TopicInfo,
    TopicPartition,
)

if TYPE_CHECKING:
    from bridge.config import BridgeSettings

__all__ = ["ConfluentClients", "LibrdkafkaLog", "brokers_answer", "cluster_metadata", "translate_error"]

log = logging.getLogger(__name__)

_BOOTSTRAP = "BRIDGE_KAFKA__BOOTSTRAP_SERVERS"

#: Producer settings no configuration may change, per role.
_PRODUCER_SAFETY: dict[str, dict[str, Any]] = {
    "relay": {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random", "message.timeout.ms": 0},
    "dlq": {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"},
    "replay": {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"},
}
#: Consumer settings no configuration may change.
_CONSUMER_SAFETY: dict[str, Any] = {"enable.auto.offset.store": False}
#: Settings of the classic group protocol that the consumer protocol (KIP-848) sets on the broker.
_CLASSIC_GROUP_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")

_UNAVAILABLE = frozenset(
    {
        "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_TIMED_OUT_QUEUE", "REQUEST_TIMED_OUT",
        "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "BROKER_NOT_AVAILABLE",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "_WAIT_COORD", "_UNKNOWN_BROKER", "_DESTROY_BROKER",
        "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "_RESOLVE", "_NOENT",
    }
)  # fmt: skip
_TOO_LARGE = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_MSG_SIZE"})
_INVALID_RECORD = frozenset({"INVALID_RECORD", "INVALID_MSG", "CORRUPT_MESSAGE", "INVALID_TIMESTAMP", "_INVALID_ARG"})
_MISSING_TOPIC = frozenset({"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "UNKNOWN_TOPIC_ID"})


def translate_error(error: confluent_kafka.KafkaError, context: str = "") -> KafkaError:
    """librdkafka's error as a bridge error: what kind of failure it is, and whether it is retriable."""
    name = error.name()
    message = f"{context}: {error.str()}" if context else error.str()
    if error.fatal() or name == "_FATAL":
        return KafkaFatalError(message, code=name)
    if name in _TOO_LARGE:
        return RecordTooLargeError(message, code=name)
    if name in _MISSING_TOPIC:
        return TopicNotFoundError(f"{message} (bridge topics apply makes the catalog's topics)", code=name)
    if name in _INVALID_RECORD:
        return InvalidRecordError(message, code=name)
    if name in _UNAVAILABLE:
        return BrokerUnavailableError(f"{message} (check {_BOOTSTRAP})", code=name, setting=_BOOTSTRAP)
    return KafkaError(message, code=name)


def _translate(exc: KafkaException, context: str = "") -> KafkaError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, confluent_kafka.KafkaError):
        return translate_error(error, context)
    return KafkaError(f"{context}: {exc}" if context else str(exc))


class LibrdkafkaLog:
    """Receives librdkafka's log lines (its ``logger`` setting) and passes each to Python logging
    once; a line that repeats within ``repeat_seconds`` is counted, not printed again."""

    def __init__(self, logger: logging.Logger | None = None, repeat_seconds: float = 30.0) -> None:
        self._logger = logger or logging.getLogger("bridge.kafka.librdkafka")
        self._repeat = repeat_seconds
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: object) -> None:
        # librdkafka calls log(level, "%s [%s] %s", facility, client name, text).
        text = str(args[-1]) if args else fmt
        facility = str(args[0]) if len(args) >= 3 else ""
        key = f"{facility}:{_without_numbers(text)}"
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._seen.get(key, (0.0, 0))
            if now - last < self._repeat:
                self._seen[key] = (last, suppressed + 1)
                return
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._repeat}
        more = f" (and {suppressed} more like it)" if suppressed else ""
        self._logger.log(level, "%s%s", text, more, extra={"kafka_facility": facility})


def _without_numbers(text: str) -> str:
    # "Connect to ipv4#127.0.0.1:9092 failed ... (after 0ms in state CONNECT, 3 identical error(s) suppressed)"
    # repeats with other counters: compare the words, not the numbers.
    return "".join(c for c in text if not c.isdigit())


class ConfluentClients(KafkaClients):
    """Builds bridge's Kafka clients from its settings (see the module docstring for what is fixed)."""

    def __init__(self, settings: BridgeSettings, *, librdkafka_log: LibrdkafkaLog | None = None) -> None:
        self._settings = settings
        self._log = librdkafka_log or LibrdkafkaLog()

    def _base(self, client_id: str) -> dict[str, Any]:
        config = self._settings.kafka.client_config()
        config["client.id"] = client_id
        config["logger"] = self._log
        # Without an error_cb librdkafka prints every error a second time; it has logged it through
        # the logger already, and bridge learns of failures from delivery reports and request errors.
        config["error_cb"] = _already_logged
        return config

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer:
        config = self.producer_config(role, client_id=client_id, max_message_bytes=max_message_bytes)
        return ConfluentProducer(config, request_timeout=self._settings.kafka.request_timeout)

    def producer_config(
        self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None
    ) -> dict[str, Any]:
        """The librdkafka settings of a producer of ``role`` (secrets included: never log them)."""
        relay = self._settings.relay
        config: dict[str, Any] = {
            "linger.ms": relay.linger_ms if role == "relay" else 0,
            "compression.type": "lz4",
            "queue.buffering.max.messages": max(100_000, relay.max_in_flight * 2),
            # A record for a topic that does not exist fails within seconds, not librdkafka's 30.
            "topic.metadata.propagation.max.ms": 5000,
        }
        if role != "relay":
            config["message.timeout.ms"] = int(self._settings.consumer.dlq_timeout * 1000)
        config.update(self._base(client_id))
        config.update(_PRODUCER_SAFETY[role])
        if max_message_bytes is not None:
            config["message.max.bytes"] = max_message_bytes
        elif role == "relay":
            config["message.max.bytes"] = relay.max_message_bytes
        return config

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer:
        return ConfluentConsumer(
            self.consumer_config(group_id, client_id=client_id, commit_in_background=commit_in_background)
        )

    def consumer_config(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> dict[str, Any]:
        """The librdkafka settings of a consumer (secrets included: never log them)."""
        tuning = self._settings.consumer
        config: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "auto.commit.interval.ms": 1000,
            "partition.assignment.strategy": "range",
            "session.timeout.ms": tuning.session_timeout_ms,
            "heartbeat.interval.ms": tuning.heartbeat_interval_ms,
            "fetch.wait.max.ms": tuning.fetch_wait_max_ms,
            "fetch.min.bytes": tuning.fetch_min_bytes,
        }
        config.update(self._base(client_id))
        if config.get("group.protocol") == "consumer":
            # The consumer group protocol of KIP-848 (BRIDGE_KAFKA__OPTIONS='{"group.protocol": "consumer"}'):
            # the broker owns the session, heartbeat and assignment, and librdkafka refuses these.
            for classic in _CLASSIC_GROUP_ONLY:
                config.pop(classic, None)
        config.update(_CONSUMER_SAFETY)
        config["group.id"] = group_id
        config["enable.auto.commit"] = commit_in_background
        return config

    def admin(self) -> Admin:
        return ConfluentAdmin(self._base("bridge-admin"), request_timeout=self._settings.kafka.request_timeout)


def _already_logged(_error: confluent_kafka.KafkaError) -> None:
    pass


def _report(callback: DeliveryCallback, error: confluent_kafka.KafkaError | None, _message: object) -> None:
    callback(None if error is None else translate_error(error, "delivery"))


class ConfluentProducer(Producer):
    def __init__(self, config: dict[str, Any], *, request_timeout: float) -> None:
        self._producer = confluent_kafka.Producer(config)
        self._request_timeout = request_timeout
        self._known_topics: set[str] = set()
        self._closed = False

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers, on_delivery: DeliveryCallback) -> bool:
        try:
            self._producer.produce(
                topic, value, key, headers=list(headers), on_delivery=functools.partial(_report, on_delivery)
            )
        except BufferError:
            return False
        except KafkaException as exc:
            raise _translate(exc, f"produce to {topic}") from None
        return True

    def poll(self, timeout: float) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def outstanding(self) -> int:
        return len(self._producer)

    def topic_exists(self, topic: str, timeout: float) -> bool:
        if topic in self._known_topics:
            return True
        try:
            metadata = self._producer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise _translate(exc, f"metadata of {topic}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            if found is not None and found.error.name() not in _MISSING_TOPIC:
                raise translate_error(found.error, f"metadata of {topic}")
            return False
        self._known_topics.add(topic)
        return True

    def close(self, timeout: float) -> int:
        """Flush for ``timeout`` seconds, then purge what is left (its callbacks report the purge),
        so closing never waits on a broker that does not answer."""
        if self._closed:
            return 0
        self._closed = True
        left = self._producer.flush(timeout)
        if left:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.poll(0)
        return left


class _Rebalance:
    """librdkafka's rebalance callbacks, in bridge's types."""

    def __init__(self, listener: RebalanceListener) -> None:
        self.listener = listener

    def on_assign(self, _consumer: object, partitions: list[_TP]) -> None:
        self.listener.on_assign([TopicPartition(p.topic, p.partition) for p in partitions])

    def on_revoke(self, _consumer: object, partitions: list[_TP]) -> None:
        self.listener.on_revoke([TopicPartition(p.topic, p.partition) for p in partitions])


_IGNORED = frozenset({"_PARTITION_EOF"})


class ConfluentConsumer(Consumer):
    def __init__(self, config: dict[str, Any]) -> None:
        self._consumer = confluent_kafka.Consumer(config)
        self._closed = False
        self.errors: list[KafkaError] = []

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        hooks = _Rebalance(listener)
        self._consumer.subscribe(
            list(topics), on_assign=hooks.on_assign, on_revoke=hooks.on_revoke, on_lost=hooks.on_revoke
        )

    def assign(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._consumer.assign([_TP(tp.topic, tp.partition, offset) for tp, offset in offsets.items()])

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        try:
            first = self._consumer.poll(timeout)
            if first is None:
                return []
            messages = [first]
            if max_records > 1:
                messages += self._consumer.consume(max_records - 1, timeout=0)
        except KafkaException as exc:
            raise _translate(exc, "consume") from None
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._message_error(error)
                continue
            key = message.key()
            value = message.value()
            # A message without error always has its topic, partition and offset.
            records.append(
                Record(
                    cast(str, message.topic()),
                    cast(int, message.partition()),
                    cast(int, message.offset()),
                    key if key is not None else b"",
                    value if value is not None else b"",
                    cast(Headers, message.headers() or ()),
                    message.timestamp()[1],
                )
            )
        return records

    def _message_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.name() in _IGNORED:
            return
        translated = translate_error(error, "consume")
        if isinstance(translated, KafkaFatalError):
            raise translated
        # Not fatal: librdkafka retries on its own and has logged it; keep the last few for health.
        self.errors = [*self.errors[-9:], translated]

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause([_TP(p.topic, p.partition) for p in partitions])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume([_TP(p.topic, p.partition) for p in partitions])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_TP(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            raise _translate(exc, f"seek {partition}") from None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition) for p in self._consumer.assignment()]

    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = [_TP(p.topic, p.partition) for p in partitions]
        if not wanted:
            return {}
        return {
            TopicPartition(p.topic, p.partition): p.offset for p in self._consumer.position(wanted) if p.offset >= 0
        }

    def store_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.store_offsets(offsets=[_TP(tp.topic, tp.partition, o) for tp, o in offsets.items()])
        except KafkaException as exc:
            raise _translate(exc, "store offsets") from None

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        try:
            if offsets is None:
                self._consumer.commit(asynchronous=False)
            elif offsets:
                self._consumer.commit(
                    offsets=[_TP(tp.topic, tp.partition, o) for tp, o in offsets.items()], asynchronous=False
                )
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, confluent_kafka.KafkaError) and error.name() == "_NO_OFFSET":
                return
            raise _translate(exc, "commit") from None

    def committed(self, partitions: Iterable[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        wanted = [_TP(p.topic, p.partition) for p in partitions]
        if not wanted:
            return {}
        try:
            found = self._consumer.committed(wanted, timeout=timeout)
        except KafkaException as exc:
            raise _translate(exc, "committed offsets") from None
        return {TopicPartition(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(_TP(partition.topic, partition.partition), timeout=timeout)
        except KafkaException as exc:
            raise _translate(exc, f"watermarks of {partition}") from None
        return int(low), int(high)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except KafkaException as exc:
            log.warning("kafka: closing the consumer: %s", _translate(exc))


class ConfluentAdmin(Admin):
    def __init__(self, config: dict[str, Any], *, request_timeout: float) -> None:
        self._config = config
        self._admin = AdminClient(config)
        self._request_timeout = request_timeout
        self._reader: confluent_kafka.Consumer | None = None

    def cluster(self, timeout: float) -> ClusterInfo:
        try:
            metadata = self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise _translate(exc, "cluster metadata") from None
        return _cluster_info(metadata, internal=False)

    def create_topics(self, topics: Sequence[NewTopic], timeout: float) -> dict[str, str | None]:
        if not topics:
            return {}
        futures = self._admin.create_topics(
            [_NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config)) for t in topics],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        return _outcomes(futures, timeout)

    def create_partitions(self, partitions: Mapping[str, int], timeout: float) -> dict[str, str | None]:
        if not partitions:
            return {}
        futures = self._admin.create_partitions(
            [NewPartitions(name, count) for name, count in partitions.items()],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        return _outcomes(futures, timeout)

    def topic_configs(self, topics: Sequence[str], timeout: float) -> dict[str, dict[str, str]]:
        if not topics:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
        result: dict[str, dict[str, str]] = {}
        try:
            for resource, future in self._admin.describe_configs(resources, request_timeout=timeout).items():
                entries = future.result(timeout=timeout * 2)
                result[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
        except KafkaException as exc:
            raise _translate(exc, "describe topic configs") from None
        return result

    def set_topic_configs(self, configs: Mapping[str, Mapping[str, str]], timeout: float) -> dict[str, str | None]:
        if not configs:
            return {}
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(values.items())
                ],
            )
            for name, values in configs.items()
        ]
        futures = self._admin.incremental_alter_configs(resources, request_timeout=timeout)
        return _outcomes({r.name: f for r, f in futures.items()}, timeout)

    def committed_offsets(
        self, group: str, partitions: Sequence[TopicPartition], timeout: float
    ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        reader = confluent_kafka.Consumer({**self._config, "group.id": group, "enable.auto.commit": False})
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    found = reader.committed([_TP(p.topic, p.partition) for p in partitions], timeout=timeout)
                    break
                except KafkaException as exc:
                    error = _translate(exc, f"offsets of group {group}")
                    # Right after a broker starts its group coordinator is not ready (NOT_COORDINATOR,
                    # COORDINATOR_LOAD_IN_PROGRESS): transient, asked again within the timeout.
                    if not isinstance(error, BrokerUnavailableError) or time.monotonic() >= deadline:
                        raise error from None
                    time.sleep(0.2)
        finally:
            reader.close()
        return {TopicPartition(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def watermarks(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        if self._reader is None:
            self._reader = confluent_kafka.Consumer(
                {**self._config, "group.id": f"bridge-admin-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
            )
        try:
            low, high = self._reader.get_watermark_offsets(_TP(partition.topic, partition.partition), timeout=timeout)
        except KafkaException as exc:
            raise _translate(exc, f"watermarks of {partition}") from None
        return int(low), int(high)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _outcomes(futures: Mapping[str, Any], timeout: float) -> dict[str, str | None]:
    outcomes: dict[str, str | None] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=timeout * 2)
            outcomes[name] = None
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            outcomes[name] = error.name() if isinstance(error, confluent_kafka.KafkaError) else str(exc)
    return outcomes


def brokers_answer(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a broker at ``bootstrap`` answers a metadata request (quietly: for start-up waits)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _QUIET, "error_cb": _already_logged}
    admin = AdminClient(config)
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return False


def cluster_metadata(bootstrap: str, timeout: float = 5.0) -> ClusterInfo:
    """The cluster's brokers and topics, internal ones (``__consumer_offsets``) included, read
    quietly (for the dev stack's and the tests' waits on a cluster whose nodes come and go)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _QUIET, "error_cb": _already_logged}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _translate(exc, "cluster metadata") from None
    return _cluster_info(metadata, internal=True)


def _cluster_info(metadata: Any, *, internal: bool) -> ClusterInfo:
    brokers = tuple(
        sorted((BrokerInfo(b.id, str(b.host), b.port) for b in metadata.brokers.values()), key=lambda b: b.id)
    )
    topics = {}
    for name, meta in metadata.topics.items():
        if meta.error is not None or (name.startswith("__") and not internal):
            continue
        partitions = {
            pid: PartitionInfo(pid, p.leader, tuple(p.replicas), tuple(p.isrs)) for pid, p in meta.partitions.items()
        }
        topics[name] = TopicInfo(name, partitions)
    return ClusterInfo(brokers, topics)


class _Quiet:
    def log(self, *args: object) -> None:
        pass  # librdkafka's connection-refused lines while a broker starts are expected


_QUIET = _Quiet()
