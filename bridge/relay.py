"""The relay: publishes every committed outbox event to its Kafka topic, in order, losing nothing.

How it keeps DESIGN.md's guarantees:

- **No loss.** A row is deleted only after Kafka acknowledged it (``acks=all``, idempotent
  producer). A crash at any instant leaves unacknowledged rows in the outbox, and they are sent
  again: at-least-once, duplicates bounded by ``max_in_flight``.
- **No skipped rows.** Every read starts from the smallest unpublished id (rows in flight are
  excluded by id), never from a cursor, so a transaction that took its id early and committed late
  is still found.
- **Per-subject order.** ``emit`` serializes the emits of one subject, so id order is commit order
  per subject; the relay sends in id order through one idempotent producer with an infinite
  ``message.timeout.ms``, so librdkafka never drops an earlier message while a later one succeeds.
  On any delivery error the relay lets everything in flight settle and starts again from the
  first unpublished row.
- **One active relay per outbox.** Relays race for a session advisory lock; the winner publishes,
  the others stand by and take over within ``standby_interval`` when its session ends. The lock is
  checked before every read, so a relay whose session was lost (or that sits behind a
  transaction-pooling proxy, where session locks do not work) stops producing.
- **Poison never blocks other subjects.** A row too large for the broker, or for a topic that does
  not exist, is quarantined with its reason; later rows of *its* subject wait for it (order), every
  other subject flows. ``bridge outbox retry`` puts it back in line.
- **Pipelined.** Reads, produce and deletes overlap: up to ``max_in_flight`` rows are in flight
  while the next rows are read and acknowledged ones are deleted in batches.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.avro import AVRO_CONTENT_TYPE, AvroCodec
from bridge.backoff import Backoff
from bridge.errors import RelayError
from bridge.observability import RelayMetrics
from bridge.outbox.store import OutboxRow, OutboxStore
from bridge.signing import Signer
from bridge.topics import topic_name

__all__ = ["Relay", "RelayOptions", "producer_config"]

log = logging.getLogger(__name__)

CONTENT_TYPE = b"application/json"


@dataclass(frozen=True)
class RelayOptions:
    """Tuning of one relay. The defaults suit most outboxes."""

    schema: str = "bridge"
    topic_prefix: str = "sguild."
    batch_size: int = 1000
    max_in_flight: int = 5000
    idle_interval: float = 0.1
    standby_interval: float = 1.0
    notify_channel: str | None = None
    max_attempts: int = 5
    max_message_bytes: int = 1_000_000
    shutdown_timeout: float = 30.0
    stats_interval: float = 5.0
    signer: Signer | None = None
    #: Set to write Avro single-object encoding instead of the outbox's JSON bytes.
    avro: AvroCodec | None = None


def producer_config(kafka_config: dict[str, Any], options: RelayOptions) -> dict[str, Any]:
    """The librdkafka settings of the relay's producer. The safety settings cannot be overridden."""
    config: dict[str, Any] = {
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": max(100_000, options.max_in_flight * 2),
        "client.id": "bridge-relay",
    }
    config.update(kafka_config)
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            # Same partition as a Java client for the same key.
            "partitioner": "murmur2_random",
            # 0 = never time out: a finite timeout can fail an earlier message while later ones succeed.
            "message.timeout.ms": 0,
            "message.max.bytes": options.max_message_bytes,
        }
    )
    return config


class Relay:
    """Tails one outbox and publishes it. ``run()`` blocks until ``stop()`` (or the given event)."""

    def __init__(
        self,
        database_url: str,
        kafka_config: dict[str, Any],
        options: RelayOptions | None = None,
        *,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.database_url = database_url
        self.options = options or RelayOptions()
        self.metrics = metrics or RelayMetrics()
        self._kafka_config = producer_config(kafka_config, self.options)
        self._stop = threading.Event()
        self._producer: Producer | None = None
        self._fatal: KafkaError | None = None
        self._in_flight: dict[int, OutboxRow] = {}
        self._sent_at: dict[int, float] = {}
        self._acked: list[int] = []
        self._failed: list[tuple[int, KafkaError]] = []
        self._known_topics: set[str] = set()
        self._topics_checked_at = 0.0
        self._stats_at = 0.0
        self.is_leader = False
        self.published = 0

    # --- public -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run()`` to finish in-flight work and return."""
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Stand by for leadership, then publish until stopped. Infrastructure failures are retried."""
        stop = stop or self._stop
        backoff = Backoff(initial=0.2, maximum=10.0)
        try:
            while not stop.is_set():
                try:
                    with self._connect() as conn:
                        store = OutboxStore(conn, self.options.schema)
                        self._delete_acked(store)
                        if not self._lead(store, stop):
                            break
                        backoff.reset()
                        self._pump(conn, store, stop)
                except psycopg.Error as exc:
                    self._not_leading()
                    self.metrics.errors.labels("database").inc()
                    log.warning("relay: database unavailable (%s); retrying", _first_line(exc))
                    self._wait(backoff.next(), stop)
                except RelayError as exc:
                    self._not_leading()
                    self.metrics.errors.labels("leadership").inc()
                    log.error("relay: %s; stopped producing, standing by", exc)
                    self._wait(backoff.next(), stop)
        finally:
            self._shutdown()

    # --- leadership -------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.database_url,
            autocommit=True,
            application_name="bridge-relay",
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    def _lead(self, store: OutboxStore, stop: threading.Event) -> bool:
        """Wait until this relay holds the leadership lock (True) or is stopped (False)."""
        announced = False
        while not stop.is_set():
            if store.try_lock():
                self.is_leader = True
                self.metrics.leader.set(1)
                log.info("relay: leading the outbox in schema %s", self.options.schema)
                return True
            if not announced:
                log.info("relay: another relay leads schema %s; standing by", self.options.schema)
                announced = True
            self._wait(self.options.standby_interval, stop)
            self._delete_acked(store)
        return False

    def _not_leading(self) -> None:
        self.is_leader = False
        self.metrics.leader.set(0)

    # --- the pipeline -----------------------------------------------------------------------------

    def _pump(self, conn: psycopg.Connection, store: OutboxStore, stop: threading.Event) -> None:
        options = self.options
        if options.notify_channel:
            conn.execute(f"LISTEN {_quote_channel(options.notify_channel)}")
        producer = self._ensure_producer()
        while not stop.is_set():
            producer.poll(0)
            if self._failed or self._fatal:
                self._recover(store, stop)
                producer = self._ensure_producer()
                continue
            self._delete_acked(store)
            room = options.max_in_flight - len(self._in_flight)
            rows: list[OutboxRow] = []
            if room > 0:
                held, rows = store.lock_and_fetch(min(options.batch_size, room), list(self._in_flight))
                if not held:
                    raise RelayError(
                        "the leadership lock is gone: the database session was lost, or this relay runs "
                        "behind a transaction-pooling proxy (session advisory locks need a direct session)"
                    )
                if rows:
                    self.metrics.batch_size.observe(len(rows))
                    self._send(store, producer, rows)
            self._refresh_stats(store)
            if not rows:
                if self._in_flight:
                    producer.poll(0.01)
                elif options.notify_channel:
                    for _ in conn.notifies(timeout=options.idle_interval, stop_after=1):
                        pass
                else:
                    stop.wait(options.idle_interval)
        # Graceful stop: let what is in flight land, delete it, then release the lock.
        self._settle(None, self.options.shutdown_timeout)
        self._delete_acked(store)

    def _send(self, store: OutboxStore, producer: Producer, rows: list[OutboxRow]) -> None:
        held: set[str] = set()  # subjects with a row quarantined in this batch: their later rows wait
        for row in rows:
            if row.subject in held:
                continue
            topic = topic_name(self.options.topic_prefix, row.event_type)
            exists = self._topic_exists(producer, topic)
            if exists is None:
                break  # broker unreachable: send nothing later than this row; read it again soon
            if exists:
                reason = self._produce(producer, topic, row)
            else:
                reason = f"topic {topic} does not exist (the relay never relies on auto-creation: run bridge topics apply)"
            if reason is not None:
                if store.quarantine(row.id, reason):
                    self.metrics.quarantined.labels(reason.split(" ", 1)[0]).inc()
                    log.error("relay: quarantined outbox row %d (event %s): %s", row.id, row.event_id, reason)
                held.add(row.subject)
                continue
            if self._failed or self._fatal:
                break  # a synchronous failure: recover before sending anything later

    def _produce(self, producer: Producer, topic: str, row: OutboxRow) -> str | None:
        value, content_type = row.value, CONTENT_TYPE
        if self.options.avro is not None:
            value, content_type = self.options.avro.encode(json.loads(row.value)), AVRO_CONTENT_TYPE
        headers = [
            ("event_id", row.event_id.encode()),
            ("event_type", row.event_type.encode()),
            ("schema_version", str(row.schema_version).encode()),
            ("producer", row.producer.encode()),
            ("tenant_id", row.tenant_id.encode()),
            ("content-type", content_type),
        ]
        headers += [(k, str(v).encode()) for k, v in row.headers.items() if k in ("traceparent", "tracestate")]
        key = row.subject.encode()
        if self.options.signer is not None:
            headers.append(self.options.signer.header(key, value, dict(headers)))
        row_id = row.id

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                self._acked.append(row_id)
            else:
                self._failed.append((row_id, err))

        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    return (
                        f"oversized: the record ({len(row.value)} bytes of value) is larger than the "
                        f"{self.options.max_message_bytes} bytes the broker accepts"
                    )
                self._failed.append((row_id, error))
                return None
        self._in_flight[row_id] = row
        self._sent_at[row_id] = time.monotonic()
        self.metrics.in_flight.set(len(self._in_flight))
        return None

    def _delete_acked(self, store: OutboxStore) -> None:
        if not self._acked:
            return
        acked = self._acked
        store.delete(acked)  # raises on a database error: the ids stay in self._acked for next time
        self._acked = []
        now = time.monotonic()
        per_type: Counter[str] = Counter()
        observe = self.metrics.delivery_latency.observe
        for row_id in acked:
            row = self._in_flight.pop(row_id, None)
            sent = self._sent_at.pop(row_id, None)
            if row is None:
                continue
            per_type[row.event_type] += 1
            if sent is not None:
                observe(now - sent)
        for event_type, count in per_type.items():
            self.metrics.published.labels(event_type).inc(count)
        self.published += sum(per_type.values())
        self.metrics.in_flight.set(len(self._in_flight))

    # --- failures ---------------------------------------------------------------------------------

    def _recover(self, store: OutboxStore, stop: threading.Event) -> None:
        """After a delivery error: let everything in flight settle, count the attempt, and start
        again from the first unpublished row (quarantining rows that keep failing).

        Nothing is read again before *everything* in flight has settled: resending a failed row
        while a later row of its subject is still in flight could reorder the subject.
        """
        self._settle(stop, timeout=None)
        if stop.is_set():
            return  # unsettled rows stay in the outbox and are sent again after a restart
        self._delete_acked(store)
        failed, self._failed = self._failed, []
        if failed:
            self.metrics.errors.labels("delivery").inc(len(failed))
            for row_id, err in failed:
                reason = f"delivery failed: {err.str()} ({err.name()})"
                attempts = store.record_attempt([row_id], reason).get(row_id, 0)
                log.warning("relay: outbox row %d attempt %d failed: %s", row_id, attempts, reason)
                if attempts >= self.options.max_attempts:
                    store.quarantine(row_id, f"{reason}; {attempts} attempts")
                    self.metrics.quarantined.labels("delivery").inc()
        if self._fatal is not None:
            log.error("relay: fatal producer error %s; recreating the producer", self._fatal.str())
            self.metrics.errors.labels("fatal").inc()
            self._close_producer(0)
            self._fatal = None
        self._in_flight.clear()
        self._sent_at.clear()
        self.metrics.in_flight.set(0)
        self._wait(0.5, stop)

    def _settle(self, stop: threading.Event | None, timeout: float | None) -> None:
        """Serve delivery reports until nothing is in flight, ``timeout`` passes, or ``stop`` is set."""
        if self._producer is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._producer) > 0 and (deadline is None or time.monotonic() < deadline):
            if stop is not None and stop.is_set():
                break
            self._producer.flush(0.2)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        """Sleep, serving delivery reports meanwhile, and wake up early when stopped."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._producer is not None and len(self._producer) > 0:
                self._producer.poll(min(remaining, 0.1))
            else:
                stop.wait(min(remaining, 0.1))

    # --- the producer, topics and stats ----------------------------------------------------------

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            config = dict(self._kafka_config)
            config["error_cb"] = self._on_kafka_error
            self._producer = Producer(config)
        return self._producer

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        self.metrics.errors.labels("kafka").inc()
        log.warning("relay: kafka: %s", error.str())

    def _topic_exists(self, producer: Producer, topic: str) -> bool | None:
        """Whether the topic exists; None when the broker cannot say right now."""
        if topic in self._known_topics:
            return True
        now = time.monotonic()
        if now - self._topics_checked_at >= 1.0:
            try:
                metadata = producer.list_topics(timeout=5)
            except KafkaException as exc:
                self.metrics.errors.labels("kafka").inc()
                log.warning("relay: cannot read topic metadata (%s); will retry", exc)
                return None
            self._topics_checked_at = time.monotonic()
            self._known_topics = {name for name, t in metadata.topics.items() if t.error is None}
        return topic in self._known_topics

    def _refresh_stats(self, store: OutboxStore) -> None:
        now = time.monotonic()
        if now - self._stats_at < self.options.stats_interval:
            return
        self._stats_at = now
        stats = store.stats()
        self.metrics.backlog.set(stats.backlog)
        self.metrics.quarantined_rows.set(stats.quarantined)
        age = (datetime.now(UTC) - stats.oldest_recorded_at).total_seconds() if stats.oldest_recorded_at else 0.0
        self.metrics.oldest_age.set(max(0.0, age))

    def _shutdown(self) -> None:
        self._not_leading()
        if self._producer is None:
            return
        self._settle(None, self.options.shutdown_timeout)
        if self._acked:
            try:
                with self._connect() as conn:
                    self._delete_acked(OutboxStore(conn, self.options.schema))
            except psycopg.Error as exc:
                log.warning("relay: could not delete %d published rows at exit (%s): they will be sent again",
                            len(self._acked), _first_line(exc))
        self._close_producer(0)

    def _close_producer(self, timeout: float) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
            self._producer = None


def _quote_channel(channel: str) -> str:
    return '"' + channel.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
