"""The relay: publishes every committed outbox event to its Kafka topic, in order, losing nothing.

It composes small parts: :mod:`~bridge.relay.leadership` (one active relay per outbox),
:mod:`~bridge.relay.cursor` (where to read next without skipping late commits),
:mod:`~bridge.relay.encoding` (a row as a record) and :mod:`~bridge.relay.window` (what is in
flight). How it keeps the guarantees of docs/design.md:

- **No loss.** A row is deleted only after Kafka acknowledged it (``acks=all``, idempotent
  producer). A crash at any instant leaves unacknowledged rows in the outbox; they are sent again.
- **No skipped rows.** Reads go forward from a cursor, and look again below it once for every
  transaction that was in progress at an earlier read (:mod:`bridge.relay.cursor`).
- **Per-subject order.** ``emit`` serializes the emits of one subject, so id order is commit order
  per subject; reads return rows in id order and one idempotent producer with no message timeout
  sends them. On any delivery error the relay lets everything in flight settle, counts the attempt
  and reads again from the start (rows in flight are never read twice).
- **Poison never blocks other subjects.** A row too large for the broker, or for a topic that does
  not exist, is quarantined with its reason; later rows of *its* subject wait (order); every other
  subject flows. ``bridge outbox retry`` puts it back in line.
- **Bounded stop.** ``stop()`` lets what is in flight land for at most ``shutdown_timeout`` in
  total, then reports how many events stay in the outbox for the next relay.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from bridge.backoff import Backoff
from bridge.clock import Clock, SystemClock
from bridge.config import RelaySettings
from bridge.errors import (
    BrokerUnavailableError,
    ContractError,
    InfrastructureError,
    KafkaError,
    KafkaFatalError,
    LeadershipLostError,
    RecordTooLargeError,
    TopicNotFoundError,
)
from bridge.kafka.ports import KafkaClients, Producer
from bridge.lifecycle import Health, ServiceState
from bridge.observability import RelayMetrics
from bridge.outbox.source import OutboxRow, OutboxSource
from bridge.relay.cursor import ReadCursor
from bridge.relay.encoding import EncodedRecord, RecordEncoder
from bridge.relay.leadership import Leadership
from bridge.relay.window import InFlightWindow

__all__ = ["OutboxConnector", "Relay"]

log = logging.getLogger("bridge.relay")

#: Opens a session on the outbox (and closes it on exit): a PostgreSQL connection in production.
OutboxConnector = Callable[[], AbstractContextManager[OutboxSource]]

_SHUTDOWN_MARGIN = 1.0  # seconds of the shutdown timeout kept for deleting what landed
#: What a one-record batch adds to a record on the broker (v2 batch header and record framing).
_BATCH_OVERHEAD = 128


#: Key and headers (ids, contract headers, trace context, signature) stay far below this: only a
#: value within it of a topic's limit is sized exactly (summing the headers of every record was 17 %
#: of a drain's time in cProfile). A record that still turns out too large is refused by the
#: producer itself (RecordTooLargeError) and quarantined all the same.
_HEADROOM = 16_384


def _size(record: EncodedRecord) -> int:
    return len(record.key) + len(record.value) + sum(len(k) + len(v) for k, v in record.headers)


def _oversized(record: EncodedRecord, limit: int) -> bool:
    return len(record.value) + _HEADROOM > limit and _size(record) > limit


class Relay:
    """Tails one outbox and publishes it. ``run()`` blocks until ``stop()``."""

    name = "relay"

    def __init__(
        self,
        connect: OutboxConnector,
        clients: KafkaClients,
        encoder: RecordEncoder,
        *,
        schema: str,
        settings: RelaySettings | None = None,
        metrics: RelayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or RelaySettings()
        self.metrics = metrics or RelayMetrics()
        self.clock = clock or SystemClock()
        self.state = ServiceState("relay", self.clock)
        self.published = 0
        self._connect = connect
        self._clients = clients
        self._encoder = encoder
        self._schema = schema
        self._leadership = Leadership(schema, self.settings.standby_interval, self.clock)
        self._window = InFlightWindow()
        self._producer: Producer | None = None
        self._stop_deadline: float | None = None
        self._held: set[str] = set()
        self._limits: dict[str, int] = {}
        self._outage: str | None = None
        #: In-flight events the last stop could not confirm (they stay in the outbox).
        self.unconfirmed_at_stop = 0

    # --- the service ------------------------------------------------------------------------------

    @property
    def started(self) -> threading.Event:
        return self.state.started

    @property
    def is_leader(self) -> bool:
        return self._leadership.leading

    def health(self) -> Health:
        return self.state.health()

    def stop(self) -> None:
        """Ask ``run()`` to let in-flight events land (within ``shutdown_timeout``) and return."""
        if self._stop_deadline is None:
            self._stop_deadline = self.clock.monotonic() + self.settings.shutdown_timeout
        self.state.stop()

    def run(self) -> None:
        """Stand by for leadership, then publish until stopped. Outages are retried; a permanent
        failure (bad settings, missing tables) is raised."""
        stopping = self.state.stopping
        backoff = Backoff(initial=0.2, maximum=10.0)
        self.state.started.set()
        try:
            while not stopping.is_set():
                try:
                    with self._connect() as source:
                        self._recovered()
                        self._delete_acked(source)
                        self.state.set_ready(True, "standing by for leadership")
                        if not self._leadership.acquire(source, stopping, self.state.beat):
                            self._finish(source)
                            return
                        backoff.reset()
                        self.metrics.leader.set(1)
                        self.state.set_ready(True, "leading")
                        self._publish(source)
                        self._finish(source)
                        return
                except InfrastructureError as exc:
                    self._not_leading()
                    if not exc.retriable:
                        raise
                    self._outage_seen(exc)
                    self.state.beat()  # an outage is not a dead relay: it keeps trying
                    self.clock.wait(backoff.next(), stopping)
            self._finish(None)
        finally:
            self._not_leading()
            self._close_producer()

    def _not_leading(self) -> None:
        self._leadership.lost()
        self.metrics.leader.set(0)

    def _outage_seen(self, exc: InfrastructureError) -> None:
        kind = (
            "leadership"
            if isinstance(exc, LeadershipLostError)
            else "database"
            if "BRIDGE_DATABASE" in (exc.setting or "")
            else "kafka"
        )
        self.metrics.errors.labels(kind).inc()
        self.state.set_ready(False, f"{kind} unavailable: {exc}")
        if self._outage != kind:
            log.warning("relay: %s; retrying until it is back", exc, extra={"schema": self._schema})
            self._outage = kind

    def _recovered(self) -> None:
        if self._outage is not None:
            log.info("relay: %s is back", self._outage, extra={"schema": self._schema})
            self._outage = None

    # --- publishing -------------------------------------------------------------------------------

    def _publish(self, source: OutboxSource) -> None:
        settings = self.settings
        stopping = self.state.stopping
        cursor = ReadCursor(source.start())
        self._held = source.held_subjects()
        next_stats = 0.0
        wait = settings.busy_interval
        while not stopping.is_set():
            self.state.beat()
            producer = self._ensure_producer()
            producer.poll(0)
            if self._window.failed:
                self._recover(source, cursor)
                continue
            rows: list[OutboxRow] = []
            room = settings.max_in_flight - len(self._window)
            acked = self._window.acked
            if room <= 0:
                self._delete_acked(source)
            else:
                if not acked and cursor.untagged:
                    cursor.tag(source.mark())  # gaps need a transaction id drawn after their read
                request = cursor.request(
                    min(settings.batch_size, room), self._window.in_flight_ids(), [row.id for row in acked]
                )
                result = source.read(request)  # deletes what Kafka acknowledged, then reads
                self._deleted(len(request.delete))
                if result.deleted_by is not None:
                    cursor.tag(result.deleted_by)
                if not result.leading:
                    raise LeadershipLostError(
                        "the leadership lock is gone: the database session was lost, or this relay runs behind "
                        "a transaction-pooling proxy (session advisory locks need a direct session)",
                        setting="BRIDGE_DATABASE__URL",
                    )
                cursor.advance(request, result)
                rows = result.rows
                if rows:
                    self.metrics.batch_size.observe(len(rows))
                    self._send(source, producer, rows, cursor)
            now = self.clock.monotonic()
            if now >= next_stats:
                next_stats = now + settings.stats_interval
                self._refresh(source, cursor)
            if rows:
                wait = settings.busy_interval
                continue
            # Nothing new: serve acknowledgements meanwhile, and read again soon (sooner while
            # events flow, backing off to idle_interval when the outbox stays empty).
            if len(self._window):
                producer.poll(min(max(wait, 0.001), 0.05))
            else:
                self.clock.wait(wait, stopping)
            wait = min(settings.idle_interval, max(wait * 2, 0.001))

    def _send(self, source: OutboxSource, producer: Producer, rows: list[OutboxRow], cursor: ReadCursor) -> None:
        window = self._window
        clock = self.clock.monotonic
        batch = window.open_batch(clock())
        held = self._held
        for index, row in enumerate(rows):
            if row.subject in held:
                continue  # waits behind its subject's quarantined row
            try:
                record = self._encoder.encode(row)
            except ContractError as exc:
                # About this event's type and version (a Schema Registry refusing its schema, say),
                # not an outage: its subject waits in quarantine, every other subject flows on.
                self._quarantine(source, row, f"unencodable: {exc}")
                continue
            reason = None
            try:
                if not producer.topic_exists(record.topic, 5.0):
                    reason = (
                        f"topic {record.topic} does not exist "
                        "(the relay never relies on auto-creation: run bridge topics apply)"
                    )
                elif _oversized(record, limit := self._limit(record.topic)):
                    reason = (
                        f"oversized: the record ({_size(record)} bytes) is larger than the "
                        f"{limit} bytes {record.topic} accepts"
                    )
                else:
                    callback = window.callback(row.id, clock)
                    while not producer.produce(record.topic, record.key, record.value, record.headers, callback):
                        producer.poll(0.05)  # the local queue is full: let deliveries drain it
                    window.sent(row, batch)
            except RecordTooLargeError:
                reason = (
                    f"oversized: the record ({len(record.value)} bytes of value) is larger than the "
                    f"{self.settings.max_message_bytes} bytes the broker accepts"
                )
            except TopicNotFoundError as exc:
                reason = str(exc)
            except (BrokerUnavailableError, KafkaError):
                # Cannot tell now: send nothing later than this row; read it again soon.
                cursor.rewind(row.id - 1)
                log.warning("relay: broker unavailable while sending; retrying", extra={"event_id": row.event_id})
                return
            if reason is not None:
                self._quarantine(source, row, reason)
            if window.failed:
                cursor.rewind(rows[index + 1].id - 1 if index + 1 < len(rows) else row.id)
                return  # a failure: recover before sending anything later

    def _limit(self, topic: str) -> int:
        """The largest record ``topic`` takes: the relay's setting, or the topic's own
        ``max.message.bytes`` when lower. Checked before producing, so the broker never refuses a
        record for its size after later records of its subject went out."""
        limit = self._limits.get(topic)
        if limit is None:
            limit = self.settings.max_message_bytes
            admin = self._clients.admin()
            try:
                configured = admin.topic_configs([topic], 5.0).get(topic, {}).get("max.message.bytes")
                limit = min(limit, int(configured) - _BATCH_OVERHEAD) if configured else limit
                self._limits[topic] = limit
            except (InfrastructureError, ValueError):
                pass  # asked again for the next record; the producer's own limit still applies
            finally:
                admin.close()
        return limit

    def _quarantine(self, source: OutboxSource, row: OutboxRow, reason: str) -> None:
        if source.quarantine(row.id, reason):
            self.metrics.quarantined.labels(reason.split(" ", 1)[0].rstrip(":")).inc()
            log.error(
                "relay: quarantined outbox row %d (event %s): %s",
                row.id,
                row.event_id,
                reason,
                extra={"event_id": row.event_id, "event_type": row.event_type},
            )
        self._held.add(row.subject)

    def _delete_acked(self, source: OutboxSource) -> int | None:
        """Delete what Kafka acknowledged; return the deleting transaction's id (None: nothing to do)."""
        window = self._window
        if not window.acked:
            return None
        marked = source.delete([row.id for row in window.acked])  # on error the rows stay acked for next time
        self._deleted(len(window.acked))
        return marked

    def _deleted(self, count: int) -> None:
        """The first ``count`` acknowledged rows are deleted: count them as published."""
        window = self._window
        if not count:
            return
        acked = window.take_acked(count)
        per_type: dict[str, int] = {}
        for row in acked:
            per_type[row.event_type] = per_type.get(row.event_type, 0) + 1
        for event_type, count in per_type.items():
            self.metrics.published.labels(event_type).inc(count)
        for latency in window.take_latencies():
            self.metrics.delivery_latency.observe(latency)
        self.published += len(acked)
        self.metrics.in_flight.set(len(window))

    def _refresh(self, source: OutboxSource, cursor: ReadCursor) -> None:
        """Gauges, and the quarantined subjects: a subject an operator released is read again."""
        stats = source.stats()
        self.metrics.backlog.set(stats.backlog)
        self.metrics.quarantined_rows.set(stats.quarantined)
        age = (datetime.now(UTC) - stats.oldest_recorded_at).total_seconds() if stats.oldest_recorded_at else 0.0
        self.metrics.oldest_age.set(max(0.0, age))
        self.metrics.in_flight.set(len(self._window))
        held = source.held_subjects()
        if self._held - held:
            log.info("relay: quarantined rows were put back in line; reading them again")
            cursor.rewind(0)
        self._held = held

    # --- failures ---------------------------------------------------------------------------------

    def _recover(self, source: OutboxSource, cursor: ReadCursor) -> None:
        """After a delivery error: let everything in flight settle, count the attempt, and read
        again from the start (quarantining rows that keep failing).

        Nothing is read again before *everything* in flight has settled: resending a failed row
        while a later row of its subject is still in flight could reorder the subject.
        """
        stopping = self.state.stopping
        producer = self._ensure_producer()
        while producer.outstanding() > 0 and not stopping.is_set():
            producer.flush(0.2)
        if stopping.is_set():
            return  # unsettled rows stay in the outbox and are sent again after a restart
        self._delete_acked(source)
        failed = self._window.take_failed()
        fatal = any(isinstance(error, KafkaFatalError) for _, error in failed)
        self.metrics.errors.labels("delivery").inc(len(failed))
        for row, error in failed:
            reason = f"delivery failed: {error}"
            attempts = source.record_attempt([row.id], reason).get(row.id, 0)
            log.warning(
                "relay: outbox row %d attempt %d failed: %s",
                row.id,
                attempts,
                reason,
                extra={"event_id": row.event_id, "event_type": row.event_type},
            )
            if attempts >= self.settings.max_attempts:
                self._quarantine(source, row, f"{reason}; {attempts} attempts")
        if fatal:
            log.error("relay: fatal producer error; recreating the producer")
            self.metrics.errors.labels("fatal").inc()
            self._close_producer()
        cursor.rewind(0)
        self.metrics.in_flight.set(len(self._window))
        self.clock.wait(0.5, stopping)

    # --- the producer and the end -----------------------------------------------------------------

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._clients.producer(
                "relay", client_id="bridge-relay", max_message_bytes=self.settings.max_message_bytes
            )
        return self._producer

    def _finish(self, source: OutboxSource | None) -> None:
        """Let in-flight events land until the stop deadline, delete them, say what is left."""
        deadline = self._stop_deadline if self._stop_deadline is not None else self.clock.monotonic()
        producer = self._producer
        if producer is not None:
            while producer.outstanding() > 0 and self.clock.monotonic() < deadline - _SHUTDOWN_MARGIN:
                producer.flush(min(0.2, max(0.0, deadline - _SHUTDOWN_MARGIN - self.clock.monotonic())))
        if source is not None:
            with contextlib.suppress(InfrastructureError):
                self._delete_acked(source)
        unconfirmed = len(self._window)
        acked_undeleted = len(self._window.acked)
        backlog = None
        if source is not None:
            with contextlib.suppress(InfrastructureError):
                backlog = source.stats().backlog
        left = f"{backlog} event(s) stay in the outbox" if backlog is not None else "the outbox could not be read"
        log.info(
            "relay: stopped; %d published by this relay; %s (%d in flight unconfirmed, %d confirmed and not yet "
            "deleted): the next relay sends them",
            self.published,
            left,
            unconfirmed,
            acked_undeleted,
            extra={"schema": self._schema},
        )
        self.unconfirmed_at_stop = unconfirmed

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(0)
            self._window.forget()
