"""The consumer runner: a Kafka consumer group feeding a :class:`ConsumerApp`, effectively once.

For each poll (a batch of records, in partition order):

1. **decode → validate**: bytes that are not an envelope, or an envelope or payload that breaks
   the contracts, go to the DLQ at once; an unknown type or version is skipped (or dead-lettered,
   per the policy).
2. **apply**: one transaction writes the inbox rows of the whole batch (``ON CONFLICT DO NOTHING``
   tells the first deliveries from the duplicates) and runs the handlers of the new ones, then
   commits. If any handler fails, that transaction rolls back and the batch is applied again one
   record per transaction, so a failing record neither loses nor double-applies the others.
3. **offsets** are *stored* only after the database commit (or the DLQ acknowledgement) and
   committed by librdkafka in the background and synchronously on partition revoke
   (``enable.auto.offset.store=false``).

A failing handler is retried with exponential backoff: its partition is paused and rewound to the
record, while the poll loop keeps running (so ``max.poll.interval.ms`` is never exceeded and other
partitions flow). After ``max_attempts`` the record goes to the DLQ. When the database or the DLQ
publish is unavailable, every partition is paused and rewound and the runner retries for as long as
it takes; nothing is dead-lettered and no offset moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge.avro import AvroCodec, is_avro
from bridge.backoff import Backoff
from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.inbox import Inbox
from bridge.dlq import DeadLetter as DeadLetterRecord
from bridge.dlq import DlqPublisher, DlqPublishError
from bridge.envelope import decode_json_object, envelope_from_validated
from bridge.errors import DeadLetter, RetryLater, SkipEvent, ValidationError
from bridge.observability import ConsumerMetrics
from bridge.topics import group_id, topic_name

__all__ = ["ConsumerRunner"]

log = logging.getLogger(__name__)

_INFRASTRUCTURE = (psycopg.OperationalError, psycopg.InterfaceError, DlqPublishError)
_TRACE_HEADERS = ("traceparent", "tracestate")
_IGNORED_ERRORS = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}

TP = tuple[str, int]


@dataclass
class _Item:
    message: Message
    kind: Literal["apply", "dlq", "skip"]
    delivery: Delivery | None = None
    error_class: str = ""
    error_message: str = ""
    skip_reason: str = ""

    @property
    def tp(self) -> TP:
        return (self.message.topic(), self.message.partition())

    @property
    def offset(self) -> int:
        return self.message.offset()


class ConsumerRunner:
    """Runs a :class:`ConsumerApp` in its consumer group until stopped."""

    def __init__(
        self,
        app: ConsumerApp,
        database_url: str,
        kafka_config: dict[str, Any],
        *,
        topic_prefix: str = "sguild.",
        schema: str = "bridge",
        batch_size: int = 500,
        poll_timeout: float = 0.2,
        metrics: ConsumerMetrics | None = None,
        verifier: Callable[[Message], None] | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        dlq_timeout: float = 30.0,
    ) -> None:
        """``verifier`` (optional) raises :class:`ValidationError` for a record whose signature
        does not verify; such records are dead-lettered as security failures."""
        self.app = app
        self.database_url = database_url
        self.kafka_config = dict(kafka_config)
        self.topic_prefix = topic_prefix
        self.schema = schema
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.metrics = metrics or ConsumerMetrics()
        self.verifier = verifier
        self.dlq_timeout = dlq_timeout
        self.group_id = group_id(topic_prefix, app.consumer)
        self.topics = [topic_name(topic_prefix, t) for t in app.subscriptions]
        self.inbox = Inbox(schema, app.consumer)
        self._consumer_config = {
            "auto.offset.reset": "earliest",
            "auto.commit.interval.ms": 1000,
            "partition.assignment.strategy": "range",
        }
        self._consumer_config.update(self.kafka_config)
        self._consumer_config.update(consumer_overrides or {})
        self._consumer_config.update(
            {
                "group.id": self.group_id,
                # Offsets are stored by us after the database commit, committed by librdkafka.
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "client.id": f"bridge-{app.consumer}",
            }
        )
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._dlq: DlqPublisher | None = None
        self._conn: psycopg.Connection | None = None
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._retry_at: dict[TP, float] = {}
        self._rewind: dict[TP, int] = {}
        self._infrastructure_down = False
        self._tracing = _Tracing.create()
        self._avro = None
        self.assigned: set[TP] = set()
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.skipped = 0

    # --- lifecycle --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until stopped; then commit the stored offsets and leave the group."""
        stop = stop or self._stop
        self._consumer = Consumer(self._consumer_config)
        self._dlq = DlqPublisher(self.kafka_config, self.app.consumer, timeout=self.dlq_timeout)
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        backoff = Backoff(initial=0.2, maximum=self.app.policy.infrastructure_backoff_max)
        log.info("consumer %s: group %s, topics %s", self.app.consumer, self.group_id, ", ".join(self.topics))
        try:
            while not stop.is_set():
                self._resume_due()
                messages = self._consumer.consume(self.batch_size, timeout=self.poll_timeout)
                if not messages:
                    continue
                try:
                    self._handle(messages)
                    backoff.reset()
                except _INFRASTRUCTURE as exc:
                    self._wait_for_infrastructure(exc, backoff, stop)
        finally:
            self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # commits the stored offsets
            except KafkaException as exc:
                log.warning("consumer %s: close: %s", self.app.consumer, exc)
            self._consumer = None
        if self._dlq is not None:
            self._dlq.close()
            self._dlq = None  # let librdkafka's handle go now, not whenever the runner is collected
        self._drop_connection()

    # --- one poll ---------------------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        started = time.monotonic()
        items = []
        for message in messages:
            if message.error():
                self._message_error(message)
                continue
            if (message.topic(), message.partition()) in self._retry_at:
                continue  # fetched before the partition was paused; it will be read again
            items.append(self._classify(message))
        if not items:
            return
        self._rewind = {}
        for item in items:
            self._rewind.setdefault(item.tp, item.offset)
        self.metrics.batch_size.labels(self.app.consumer).observe(len(items))
        applies = [i for i in items if i.kind == "apply"]
        if not applies or self._apply_together(applies):
            self._dead_letter([i for i in items if i.kind == "dlq"])
            self._count_skips([i for i in items if i.kind == "skip"])
            self._store(items)
        else:
            self._apply_one_by_one(items)
        self.metrics.batch_latency.labels(self.app.consumer).observe(time.monotonic() - started)

    def _message_error(self, message: Message) -> None:
        error = message.error()
        if error.code() in _IGNORED_ERRORS:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer %s: %s (run bridge topics apply?)", self.app.consumer, error.str())
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer %s: %s", self.app.consumer, error.str())

    def _classify(self, message: Message) -> _Item:
        source = f"{message.topic()}/{message.partition()}/{message.offset()}"
        try:
            if self.verifier is not None:
                self.verifier(message)
            document = self._decode(message, source)
            self.app.contracts.validate_envelope(document, source=source)
            envelope = envelope_from_validated(document)
        except ValidationError as exc:
            return _Item(message, "dlq", error_class=_qualified(exc), error_message=str(exc))
        if self.app.contracts.registry.lookup(envelope.event_type, envelope.schema_version) is None:
            reason = f"unknown event type or version: {envelope.event_type} v{envelope.schema_version} ({source})"
            if self.app.policy.unknown == "dlq":
                return _Item(message, "dlq", error_class="bridge.UnknownEventType", error_message=reason)
            log.info("consumer %s: skipping %s", self.app.consumer, reason)
            return _Item(message, "skip", skip_reason="unknown")
        trace = {k: v.decode("ascii", "replace") for k, v in (message.headers() or []) if k in _TRACE_HEADERS}
        delivery = Delivery(envelope, message.topic(), message.partition(), message.offset(), trace)
        if not self.app.handles(envelope.event_type, envelope.schema_version):
            return _Item(message, "skip", delivery=delivery, skip_reason="unhandled")
        return _Item(message, "apply", delivery=delivery)

    def _decode(self, message: Message, source: str) -> dict[str, Any]:
        """JSON, or Avro single-object encoding when the record says ``content-type: application/avro``."""
        value = message.value() or b""
        if not is_avro(message.headers()):
            return decode_json_object(value, source=source)
        if self._avro is None:  # compiled on the first Avro record: JSON-only consumers never pay
            self._avro = AvroCodec(self.app.contracts.registry)
        return self._avro.decode(value, source=source)

    # --- applying ---------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                application_name=f"bridge-{self.app.consumer}",
                connect_timeout=10,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _apply_together(self, items: list[_Item]) -> bool:
        """Apply every item in one transaction. False (rolled back) if a handler failed."""
        conn = self._connection()
        deliveries = [i.delivery for i in items]
        try:
            with conn.transaction():
                fresh = self._first_deliveries(conn, deliveries)
                # Pipeline mode: the handlers' statements go out without waiting for each result;
                # an error surfaces at the end of the block and rolls the whole batch back.
                with conn.pipeline():
                    self._run_handlers(conn, fresh)
        except _INFRASTRUCTURE:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure: isolate it record by record
            log.info("consumer %s: batch of %d failed (%s); applying one by one", self.app.consumer, len(items), exc)
            return False
        self._count_applied(fresh, len(deliveries))
        return True

    def _first_deliveries(self, conn: psycopg.Connection, deliveries: list[Delivery]) -> list[Delivery]:
        """The deliveries to apply: without the inbox's duplicates and repeats within the batch."""
        if not self.app.dedupe:
            return deliveries
        new = self.inbox.claim(conn, deliveries)
        fresh = []
        for delivery in deliveries:
            if delivery.envelope.event_id in new:
                new.discard(delivery.envelope.event_id)
                fresh.append(delivery)
        return fresh

    def _run_handlers(self, conn: psycopg.Connection, deliveries: list[Delivery]) -> None:
        if self.app.batch is not None:
            if deliveries:
                self.app.batch(deliveries, conn)
            return
        for delivery in deliveries:
            handler = self.app.resolve(delivery.envelope.event_type, delivery.envelope.schema_version)
            if delivery.trace and self._tracing is not None:
                with self._tracing.span(delivery, self.app.consumer):
                    handler(delivery.envelope, conn)
            else:
                handler(delivery.envelope, conn)

    def _count_applied(self, fresh: list[Delivery], total: int) -> None:
        per_type: dict[str, int] = defaultdict(int)
        for delivery in fresh:
            per_type[delivery.envelope.event_type] += 1
        for event_type, count in per_type.items():
            self.metrics.applied.labels(self.app.consumer, event_type).inc(count)
        self.applied += len(fresh)
        duplicates = total - len(fresh)
        if duplicates:
            self.duplicates += duplicates
            self.metrics.duplicates.labels(self.app.consumer).inc(duplicates)

    def _apply_one_by_one(self, items: list[_Item]) -> None:
        by_partition: dict[TP, list[_Item]] = defaultdict(list)
        for item in items:
            by_partition[item.tp].append(item)
        for partition_items in by_partition.values():
            for item in partition_items:
                if item.kind == "apply" and not self._apply_alone(item):
                    break  # the partition is paused at this record; later ones wait for it
                if item.kind == "dlq":
                    self._dead_letter([item])
                elif item.kind == "skip":
                    self._count_skips([item])
                self._store([item])

    def _apply_alone(self, item: _Item) -> bool:
        """Apply one record in its own transaction. False when it is to be retried later."""
        conn = self._connection()
        key = (item.message.topic(), item.message.partition(), item.offset)
        try:
            with conn.transaction():
                fresh = self._first_deliveries(conn, [item.delivery])
                self._run_handlers(conn, fresh)
        except _INFRASTRUCTURE:
            raise
        except SkipEvent as exc:
            with conn.transaction():
                self._first_deliveries(conn, [item.delivery])  # remember it, so it is not redone
            item.kind, item.skip_reason = "skip", "handler"
            log.info("consumer %s: handler skipped %s: %s", self.app.consumer, item.delivery.source, exc.reason)
            self._attempts.pop(key, None)
            return True
        except DeadLetter as exc:
            item.kind, item.error_class, item.error_message = "dlq", _qualified(exc), exc.reason
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return True
        except Exception as exc:  # noqa: BLE001 - a handler failure: retry with backoff, then DLQ
            attempts = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempts
            if attempts >= self.app.policy.max_attempts:
                item.kind, item.error_class, item.error_message = "dlq", _qualified(exc), str(exc) or repr(exc)
                log.warning("consumer %s: %s failed %d times; dead-lettering: %s", self.app.consumer,
                            item.delivery.source, attempts, exc)
                return True
            delay = exc.delay if isinstance(exc, RetryLater) and exc.delay is not None else self._backoff(attempts)
            log.info("consumer %s: %s attempt %d failed (%s); retrying in %.1f s", self.app.consumer,
                     item.delivery.source, attempts, exc, delay)
            self.metrics.retries.labels(self.app.consumer).inc()
            self._pause_at(item, delay)
            return False
        self._count_applied(fresh, 1)
        self._attempts.pop(key, None)
        return True

    def _backoff(self, attempts: int) -> float:
        policy = self.app.policy
        return min(policy.backoff_max, policy.backoff_initial * 2 ** (attempts - 1))

    # --- DLQ, skips, offsets ----------------------------------------------------------------------

    def _dead_letter(self, items: list[_Item]) -> None:
        if not items:
            return
        letters = [
            DeadLetterRecord(
                topic=i.message.topic(),
                partition=i.message.partition(),
                offset=i.offset,
                key=i.message.key(),
                value=i.message.value(),
                headers=list(i.message.headers() or []),
                error_class=i.error_class,
                error_message=i.error_message,
                attempts=max(1, self._attempts.get((i.message.topic(), i.message.partition(), i.offset), 1)),
            )
            for i in items
        ]
        self._dlq.publish(letters)  # raises DlqPublishError: then no offset moves
        for item in items:
            self._attempts.pop((item.message.topic(), item.message.partition(), item.offset), None)
            self.metrics.dead_lettered.labels(self.app.consumer, item.error_class).inc()
            log.warning("consumer %s: dead-lettered %s/%d/%d: %s", self.app.consumer, item.message.topic(),
                        item.message.partition(), item.offset, item.error_message.splitlines()[0] if item.error_message else "")
        self.dead_lettered += len(items)

    def _count_skips(self, items: list[_Item]) -> None:
        for item in items:
            self.metrics.skipped.labels(self.app.consumer, item.skip_reason).inc()
        self.skipped += len(items)

    def _store(self, items: list[_Item]) -> None:
        latest: dict[TP, int] = {}
        for item in items:
            latest[item.tp] = max(latest.get(item.tp, -1), item.offset)
        self._consumer.store_offsets(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in latest.items()])
        for tp, offset in latest.items():
            self._rewind[tp] = offset + 1

    # --- pausing ----------------------------------------------------------------------------------

    def _pause_at(self, item: _Item, delay: float) -> None:
        partition = TopicPartition(item.message.topic(), item.message.partition(), item.offset)
        self._consumer.pause([partition])
        self._consumer.seek(partition)
        self._retry_at[item.tp] = time.monotonic() + delay
        self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))

    def _resume_due(self) -> None:
        if not self._retry_at or self._infrastructure_down:
            return
        now = time.monotonic()
        due = [tp for tp, at in self._retry_at.items() if at <= now]
        if due:
            self._consumer.resume([TopicPartition(t, p) for t, p in due])
            for tp in due:
                del self._retry_at[tp]
            self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))

    def _wait_for_infrastructure(self, exc: BaseException, backoff: Backoff, stop: threading.Event) -> None:
        """Pause everything at the first unfinished record and retry until the database (and the
        DLQ) answer again. Nothing is dead-lettered, no offset moves."""
        kind = "dlq" if isinstance(exc, DlqPublishError) else "database"
        self.metrics.errors.labels(self.app.consumer, kind).inc()
        log.warning("consumer %s: %s unavailable (%s); pausing", self.app.consumer, kind, str(exc).splitlines()[0])
        self._drop_connection()
        self._infrastructure_down = True
        # Rewind every partition to the first record not yet applied: the ones of this batch to
        # where it failed, the others to what the application has been given so far.
        assignment = self._consumer.assignment()
        positions = {(p.topic, p.partition): p.offset for p in self._consumer.position(assignment) if p.offset >= 0}
        positions.update(self._rewind)
        self._consumer.pause(assignment)
        for (topic, partition), offset in positions.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))
        while not stop.is_set():
            deadline = time.monotonic() + backoff.next()
            while time.monotonic() < deadline and not stop.is_set():
                self._consumer.consume(1, timeout=0.2)  # keeps the group membership alive; all paused
            try:
                self._connection().execute("SELECT 1")
                break
            except psycopg.Error:
                self._drop_connection()
                continue
        self._infrastructure_down = False
        self._consumer.resume([tp for tp in self._consumer.assignment() if (tp.topic, tp.partition) not in self._retry_at])
        log.info("consumer %s: resuming", self.app.consumer)

    # --- rebalancing ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s: assigned %s", self.app.consumer, _names(partitions))
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        if self._infrastructure_down:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s: revoked %s", self.app.consumer, _names(partitions))
        try:
            consumer.commit(asynchronous=False)  # what is stored is applied: commit it before leaving
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("consumer %s: commit on revoke failed: %s", self.app.consumer, exc)
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assigned -= revoked
        for tp in revoked:
            self._retry_at.pop(tp, None)
            self._rewind.pop(tp, None)
        self._attempts = {k: v for k, v in self._attempts.items() if (k[0], k[1]) not in revoked}
        self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))


class _Tracing:
    """The handler's span, child of the trace context the event carried (OpenTelemetry, optional)."""

    def __init__(self, trace_module: Any, propagate_module: Any) -> None:
        self._tracer = trace_module.get_tracer("bridge.consumer")
        self._propagate = propagate_module
        self._kind = trace_module.SpanKind.CONSUMER

    @classmethod
    def create(cls) -> _Tracing | None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            return None
        return cls(trace, propagate)

    def span(self, delivery: Delivery, consumer: str):
        context = self._propagate.extract(dict(delivery.trace))
        return self._tracer.start_as_current_span(
            f"{delivery.envelope.event_type} process",
            context=context,
            kind=self._kind,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": delivery.topic,
                "messaging.consumer.group.name": consumer,
                "messaging.message.id": delivery.envelope.event_id,
            },
        )


def _qualified(exc: BaseException) -> str:
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}/{p.partition}" for p in partitions) or "nothing"

