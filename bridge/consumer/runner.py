"""The consumer runner: a Kafka consumer group feeding a :class:`ConsumerApp`, effectively once.

For each poll (the records already there, in partition order):

1. **read** (:mod:`~bridge.consumer.reading`): bytes that are not an envelope, an envelope or payload
   that breaks the contracts, a bad signature, or a record that is not what its topic says go to the
   DLQ at once. A subscribed event no handler knows is dead-lettered as ``unhandled`` (or skipped,
   by explicit choice).
2. **apply** (:mod:`~bridge.consumer.applying`): one transaction writes the inbox rows of the whole
   batch and runs the handlers of the first deliveries, then commits. If any handler fails, that
   transaction rolls back and the batch is applied again one record per transaction, so a failing
   record neither loses nor double-applies the others.
3. **offsets** are *stored* only after the database commit (or the DLQ acknowledgement) and
   committed in the background, on partition revoke and on stop.

A failing handler is retried with exponential backoff: its partition is paused and rewound to the
record, while the poll loop keeps running (so ``max.poll.interval.ms`` is never exceeded and other
partitions flow). After ``max_attempts`` the record goes to the DLQ. When the database or the DLQ
is unavailable, every partition is paused and rewound and the runner retries for as long as it
takes; nothing is dead-lettered and no offset moves.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bridge.backoff import Backoff
from bridge.clock import Clock, SystemClock
from bridge.config import ConsumerSettings, ErrorPolicy
from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.applying import Applied, Applier, Failed
from bridge.consumer.reading import RecordReader
from bridge.dlq import DeadLetterRecord, DlqPublisher, reason_of
from bridge.errors import (
    DatabaseConfigurationError,
    DeadLetter,
    DlqPublishError,
    InfrastructureError,
    KafkaError,
    RetryLater,
    SchemaNotMigratedError,
    SkipEvent,
    TopicNotFoundError,
    ValidationError,
)
from bridge.kafka.ports import Consumer, KafkaClients
from bridge.kafka.records import Record, TopicPartition
from bridge.lifecycle import Health, ServiceState
from bridge.observability import ConsumerMetrics
from bridge.topics.naming import group_id, replay_topic_name, topic_name

__all__ = ["ConsumerRunner"]

log = logging.getLogger("bridge.consumer")


@dataclass(slots=True)
class _Item:
    record: Record
    kind: Literal["apply", "dlq", "skip"]
    delivery: Delivery | None = None
    error_class: str = ""
    error_message: str = ""
    reason: str = ""
    stacktrace: str = ""

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.record.topic, self.record.partition, self.record.offset)


@dataclass
class RunnerCounts:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class ConsumerRunner:
    """Runs a :class:`ConsumerApp` in its consumer group until stopped."""

    def __init__(
        self,
        app: ConsumerApp,
        applier: Applier,
        clients: KafkaClients,
        reader: RecordReader,
        *,
        topic_prefix: str,
        settings: ConsumerSettings | None = None,
        metrics: ConsumerMetrics | None = None,
        clock: Clock | None = None,
        group: str | None = None,
    ) -> None:
        self.app = app
        self.applier = applier
        self.reader = reader
        self.settings = settings or ConsumerSettings()
        self.policy: ErrorPolicy = app.policy or self.settings
        self.metrics = metrics or ConsumerMetrics()
        self.clock = clock or SystemClock()
        self.state = ServiceState(f"consumer {app.consumer}", self.clock)
        self.name = f"consumer-{app.consumer}"
        self.topic_prefix = topic_prefix
        self.group_id = group or group_id(topic_prefix, app.consumer)
        self.topics = [topic_name(topic_prefix, t) for t in app.subscriptions]
        self.replay_topic = replay_topic_name(topic_prefix, app.consumer)
        self.counts = RunnerCounts()
        self.assigned: set[TopicPartition] = set()
        self._clients = clients
        self._consumer: Consumer | None = None
        self._dlq: DlqPublisher | None = None
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._retry_at: dict[TopicPartition, float] = {}
        self._rewind: dict[TopicPartition, int] = {}
        self._routes: dict[tuple[str, int], str] = {}
        self._down = False

    # --- counters the tests and the demo read ------------------------------------------------------

    @property
    def applied(self) -> int:
        return self.counts.applied

    @property
    def duplicates(self) -> int:
        return self.counts.duplicates

    @property
    def dead_lettered(self) -> int:
        return self.counts.dead_lettered

    @property
    def skipped(self) -> int:
        return self.counts.skipped

    # --- the service ---------------------------------------------------------------------------

    @property
    def started(self) -> threading.Event:
        return self.state.started

    def health(self) -> Health:
        return self.state.health()

    def stop(self) -> None:
        self.state.stop()

    def run(self) -> None:
        """Consume until stopped; then commit the stored offsets and leave the group."""
        self.app.check_ready()
        missing = self.app.unhandled()
        if missing:
            action = "dead-lettered as 'unhandled'" if self.policy.unhandled == "dlq" else "skipped (policy: skip)"
            log.warning(
                "consumer %s: no handler for %s: such events will be %s",
                self.app.consumer,
                ", ".join(f"{t} v{v}" for t, v in missing),
                action,
                extra={"consumer": self.app.consumer},
            )
        topics = self._check_topics()
        stopping = self.state.stopping
        self._consumer = self._clients.consumer(self.group_id, client_id=f"bridge-{self.app.consumer}")
        self._dlq = DlqPublisher(self._clients, self.app.consumer, timeout=self.settings.dlq_timeout, clock=self.clock)
        self._consumer.subscribe(topics, self)
        backoff = Backoff(initial=0.2, maximum=self.policy.infrastructure_backoff_max)
        log.info(
            "consumer %s: group %s, topics %s",
            self.app.consumer,
            self.group_id,
            ", ".join(topics),
            extra={"consumer": self.app.consumer},
        )
        self.state.started.set()
        self.state.set_ready(True, "consuming")
        try:
            while not stopping.is_set():
                self.state.beat()
                self._resume_due()
                records = self._consumer.consume(self.settings.batch_size, self.settings.poll_timeout)
                if not records:
                    continue
                try:
                    self._handle(records)
                    backoff.reset()
                except InfrastructureError as exc:
                    if not exc.retriable:
                        raise
                    self._wait_for_infrastructure(exc, backoff, stopping)
        finally:
            self._close()

    def _check_topics(self) -> list[str]:
        """The topics to subscribe to. None of them existing is a setup error (the topic catalog was
        never applied); some missing is named in a warning (they are picked up once created)."""
        admin = self._clients.admin()
        try:
            existing = admin.cluster(10.0).topics
        finally:
            admin.close()
        missing = [t for t in self.topics if t not in existing]
        if missing and len(missing) == len(self.topics):
            raise TopicNotFoundError(
                f"consumer {self.app.consumer}: none of its topics exist ({', '.join(missing)}): "
                "run bridge topics apply",
                code="UNKNOWN_TOPIC_OR_PART",
            )
        if missing:
            log.warning(
                "consumer %s: topic(s) %s do not exist yet (bridge topics apply makes them); their events "
                "arrive once they do",
                self.app.consumer,
                ", ".join(missing),
                extra={"consumer": self.app.consumer},
            )
        topics = list(self.topics)
        if self.replay_topic in existing:
            topics.append(self.replay_topic)
        else:
            log.warning(
                "consumer %s: no replay topic %s (bridge topics apply makes it): targeted DLQ replays "
                "will not reach this consumer",
                self.app.consumer,
                self.replay_topic,
                extra={"consumer": self.app.consumer, "topic": self.replay_topic},
            )
        return topics

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # commits the stored offsets
            except KafkaError as exc:
                log.warning("consumer %s: close: %s", self.app.consumer, exc, extra={"consumer": self.app.consumer})
            self._consumer = None
        if self._dlq is not None:
            self._dlq.close()
            self._dlq = None
        self.applier.close()

    # --- one poll --------------------------------------------------------------------------------

    def _handle(self, records: Sequence[Record]) -> None:
        started = self.clock.monotonic()
        if self._retry_at:
            records = [r for r in records if r.tp not in self._retry_at]
            if not records:
                return
        # Where each partition starts again if this batch meets an outage, set before anything
        # can raise one (a decoder fetching a schema can): else the outage would skip the batch.
        self._rewind = _first_offsets(records)
        items = [self._classify(r) for r in records]
        self.metrics.batch_size.labels(self.app.consumer).observe(len(items))
        applies = [i for i in items if i.kind == "apply"]
        outcome = self.applier.apply([i.delivery for i in applies if i.delivery is not None]) if applies else None
        if outcome is None or isinstance(outcome, Applied):
            if outcome is not None:
                self._count_applied(outcome)
            self._dead_letter([i for i in items if i.kind == "dlq"])
            self._count_skips([i for i in items if i.kind == "skip"])
            self._store(items)
        else:
            log.info(
                "consumer %s: batch of %d failed (%s); applying one by one",
                self.app.consumer,
                len(applies),
                outcome.error,
                extra={"consumer": self.app.consumer},
            )
            # A batch of one failed as that record's first attempt; a larger one says nothing
            # about which record failed, so each is tried alone.
            self._apply_one_by_one(items, outcome if len(applies) == 1 else None)
        self.metrics.batch_latency.labels(self.app.consumer).observe(self.clock.monotonic() - started)

    def _classify(self, record: Record) -> _Item:
        try:
            delivery = self.reader.read(record)
        except ValidationError as exc:
            return _Item(record, "dlq", error_class=_qualified(exc), error_message=str(exc), reason=reason_of(exc))
        envelope = delivery.envelope
        app = self.app
        key = (envelope.event_type, envelope.schema_version)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._route(*key)
        if route == "apply":
            return _Item(record, "apply", delivery=delivery)
        if route != "unhandled":
            return _Item(record, "skip", delivery=delivery, reason=route)
        known = app.contracts.registry.lookup(*key) is not None
        what = "a version this consumer's contracts do not have" if not known else "no handler"
        message = (
            f"unhandled: {envelope.event_type} v{envelope.schema_version} ({what}); replay it after the upgrade "
            f"with bridge dlq replay --reason unhandled ({record.source})"
        )
        if self.policy.unhandled == "skip":
            log.warning(
                "consumer %s: skipping %s (policy: skip)",
                app.consumer,
                message,
                extra={"consumer": app.consumer, "event_id": envelope.event_id},
            )
            return _Item(record, "skip", delivery=delivery, reason="unhandled")
        return _Item(
            record, "dlq", delivery=delivery, error_class="bridge.Unhandled", error_message=message, reason="unhandled"
        )

    def _route(self, event_type: str, version: int) -> str:
        """What happens to events of a type and version: ``apply``, ``unhandled``, or the reason
        they are skipped on purpose (the same for every such event: computed once)."""
        app = self.app
        skip = app.skip_reason(event_type, version)
        if skip is not None:
            return f"chosen: {skip}"
        known = app.contracts.registry.lookup(event_type, version) is not None
        return "apply" if known and app.handles(event_type, version) else "unhandled"

    # --- applying one by one -----------------------------------------------------------------------

    def _apply_one_by_one(self, items: list[_Item], failed: Failed | None = None) -> None:
        by_partition: dict[TopicPartition, list[_Item]] = defaultdict(list)
        for item in items:
            by_partition[item.tp].append(item)
        for partition_items in by_partition.values():
            for item in partition_items:
                if item.kind == "apply" and not self._apply_alone(item, failed):
                    break  # the partition is paused at this record; later ones wait for it
                if item.kind == "dlq":
                    self._dead_letter([item])
                elif item.kind == "skip":
                    self._count_skips([item])
                self._store([item])

    def _apply_alone(self, item: _Item, failed: Failed | None = None) -> bool:
        """Apply one record in its own transaction (``failed``: it was just tried, alone, and
        failed). False when it is to be retried later."""
        assert item.delivery is not None
        outcome = failed or self.applier.apply([item.delivery])
        if isinstance(outcome, Applied):
            self._count_applied(outcome)
            self._attempts.pop(item.key, None)
            return True
        error = outcome.error
        if isinstance(error, SkipEvent):
            self.applier.remember(item.delivery)  # so it is not redone
            item.kind, item.reason = "skip", f"handler: {error.reason}"
            log.info(
                "consumer %s: handler skipped %s: %s",
                self.app.consumer,
                item.delivery.source,
                error.reason,
                extra={"consumer": self.app.consumer, "event_id": item.delivery.envelope.event_id},
            )
            self._attempts.pop(item.key, None)
            return True
        attempts = self._attempts.get(item.key, 0) + 1
        self._attempts[item.key] = attempts
        if isinstance(error, DeadLetter):
            item.kind, item.reason = "dlq", "decision"
            item.error_class, item.error_message = _qualified(error), error.reason
            return True
        if attempts >= self.policy.max_attempts:
            item.kind, item.reason = "dlq", "handler"
            item.error_class, item.error_message = _qualified(error), str(error) or repr(error)
            item.stacktrace = "".join(traceback.format_exception(error))
            log.warning(
                "consumer %s: %s failed %d times; dead-lettering: %s",
                self.app.consumer,
                item.delivery.source,
                attempts,
                error,
                extra={"consumer": self.app.consumer, "event_id": item.delivery.envelope.event_id},
            )
            return True
        delay = (
            error.delay
            if isinstance(error, RetryLater) and error.delay is not None
            else self.policy.retry_delay(attempts)
        )
        log.info(
            "consumer %s: %s attempt %d failed (%s); retrying in %.1f s",
            self.app.consumer,
            item.delivery.source,
            attempts,
            error,
            delay,
            extra={"consumer": self.app.consumer, "event_id": item.delivery.envelope.event_id},
        )
        self.metrics.retries.labels(self.app.consumer).inc()
        self._pause_at(item, delay)
        return False

    def _count_applied(self, outcome: Applied) -> None:
        per_type: dict[str, int] = defaultdict(int)
        for delivery in outcome.fresh:
            per_type[delivery.envelope.event_type] += 1
        for event_type, count in per_type.items():
            self.metrics.applied.labels(self.app.consumer, event_type).inc(count)
        self.counts.applied += len(outcome.fresh)
        if outcome.duplicates:
            self.counts.duplicates += outcome.duplicates
            self.metrics.duplicates.labels(self.app.consumer).inc(outcome.duplicates)

    # --- DLQ, skips, offsets -----------------------------------------------------------------------

    def _dead_letter(self, items: list[_Item]) -> None:
        if not items:
            return
        assert self._dlq is not None
        letters = [
            DeadLetterRecord(
                topic=i.record.topic,
                partition=i.record.partition,
                offset=i.record.offset,
                key=i.record.key,
                value=i.record.value,
                headers=list(i.record.headers),
                error_class=i.error_class,
                error_message=i.error_message,
                attempts=max(1, self._attempts.get(i.key, 1)),
                reason=i.reason,
                stacktrace=i.stacktrace,
            )
            for i in items
        ]
        sent = self._dlq.publish(letters)  # raises DlqPublishError (an outage): then no offset moves
        for item, letter in zip(items, sent, strict=True):
            self._attempts.pop(item.key, None)
            self.metrics.dead_lettered.labels(self.app.consumer, item.error_class).inc()
            first_line = item.error_message.splitlines()[0] if item.error_message else ""
            fitted = " (value replaced by a marker to fit the DLQ)" if letter.value_replaced else ""
            log.warning(
                "consumer %s: dead-lettered %s (%s)%s: %s",
                self.app.consumer,
                item.record.source,
                item.reason,
                fitted,
                first_line,
                extra={
                    "consumer": self.app.consumer,
                    "topic": item.record.topic,
                    "partition": item.record.partition,
                    "offset": item.record.offset,
                    "event_id": item.delivery.envelope.event_id if item.delivery else None,
                },
            )
        self.counts.dead_lettered += len(items)

    def _count_skips(self, items: list[_Item]) -> None:
        for item in items:
            label = item.reason.split(":", 1)[0]
            self.metrics.skipped.labels(self.app.consumer, label).inc()
            if item.reason.startswith("chosen"):
                log.info(
                    "consumer %s: skipped %s on purpose (%s)",
                    self.app.consumer,
                    item.record.source,
                    item.reason,
                    extra={"consumer": self.app.consumer},
                )
        self.counts.skipped += len(items)

    def _store(self, items: list[_Item]) -> None:
        latest = _last_offsets([item.record for item in items])
        assert self._consumer is not None
        offsets = {tp: offset + 1 for tp, offset in latest.items() if tp in self.assigned}
        try:
            self._consumer.store_offsets(offsets)
        except KafkaError as exc:
            # Revoked meanwhile: the new owner reads these records again and the inbox skips them.
            log.info(
                "consumer %s: could not store offsets (%s)",
                self.app.consumer,
                exc,
                extra={"consumer": self.app.consumer},
            )
        for tp, offset in latest.items():
            self._rewind[tp] = offset + 1

    # --- pausing -----------------------------------------------------------------------------------

    def _pause_at(self, item: _Item, delay: float) -> None:
        assert self._consumer is not None
        self._consumer.pause([item.tp])
        self._consumer.seek(item.tp, item.record.offset)
        self._retry_at[item.tp] = self.clock.monotonic() + delay
        self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))

    def _resume_due(self) -> None:
        if not self._retry_at or self._down:
            return
        now = self.clock.monotonic()
        due = [tp for tp, at in self._retry_at.items() if at <= now]
        if due:
            assert self._consumer is not None
            self._consumer.resume(due)
            for tp in due:
                del self._retry_at[tp]
            self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))

    def _wait_for_infrastructure(self, exc: InfrastructureError, backoff: Backoff, stopping: threading.Event) -> None:
        """Pause everything at the first unfinished record and retry until the database (and the
        DLQ) answer again. Nothing is dead-lettered, no offset moves."""
        consumer = self._consumer
        assert consumer is not None
        kind = "dlq" if isinstance(exc, DlqPublishError) else "database"
        self.metrics.errors.labels(self.app.consumer, kind).inc()
        self.state.set_ready(False, f"{kind} unavailable: {exc}")
        log.warning(
            "consumer %s: %s unavailable (%s); pausing",
            self.app.consumer,
            kind,
            str(exc).splitlines()[0],
            extra={"consumer": self.app.consumer},
        )
        self.applier.close()
        self._down = True
        # Rewind every partition to the first record not yet applied: the ones of this batch to
        # where it failed, the others to what the application has been given so far.
        assignment = consumer.assignment()
        positions = consumer.position(assignment)
        positions.update({tp: o for tp, o in self._rewind.items() if tp in set(assignment)})
        consumer.pause(assignment)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        while not stopping.is_set():
            deadline = self.clock.monotonic() + backoff.next()
            while self.clock.monotonic() < deadline and not stopping.is_set():
                self.state.beat()
                consumer.consume(1, 0.2)  # keeps the group membership alive; everything is paused
            try:
                self.applier.ping()
                break
            except (DatabaseConfigurationError, SchemaNotMigratedError):
                raise  # a failed login, a dropped database or inbox: waiting will not fix it
            except InfrastructureError:
                continue
        self._down = False
        consumer.resume([tp for tp in consumer.assignment() if tp not in self._retry_at])
        self.state.set_ready(True, "consuming")
        log.info("consumer %s: resuming", self.app.consumer, extra={"consumer": self.app.consumer})

    # --- rebalancing (the RebalanceListener of our consumer) ----------------------------------------

    def on_assign(self, partitions: Sequence[TopicPartition]) -> None:
        log.info(
            "consumer %s: assigned %s", self.app.consumer, _names(partitions), extra={"consumer": self.app.consumer}
        )
        self.assigned |= set(partitions)
        if self._down and self._consumer is not None:
            self._consumer.pause(partitions)

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        log.info(
            "consumer %s: revoked %s", self.app.consumer, _names(partitions), extra={"consumer": self.app.consumer}
        )
        if self._consumer is not None:
            try:
                self._consumer.commit()  # what is stored is applied: commit it before leaving
            except KafkaError as exc:
                log.warning(
                    "consumer %s: commit on revoke failed: %s",
                    self.app.consumer,
                    exc,
                    extra={"consumer": self.app.consumer},
                )
        revoked = set(partitions)
        self.assigned -= revoked
        for tp in revoked:
            self._retry_at.pop(tp, None)
            self._rewind.pop(tp, None)
        self._attempts = {k: v for k, v in self._attempts.items() if TopicPartition(k[0], k[1]) not in revoked}
        self.metrics.paused.labels(self.app.consumer).set(len(self._retry_at))


def _first_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Each partition's first offset in ``records`` (which come in runs of one partition)."""
    first: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if key not in first:
            first[key] = record.offset
    return {TopicPartition(*key): offset for key, offset in first.items()}


def _last_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Each partition's highest offset in ``records``."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset > last.get(key, -1):
            last[key] = record.offset
    return {TopicPartition(*key): offset for key, offset in last.items()}


def _qualified(exc: BaseException) -> str:
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


def _names(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(str(p) for p in partitions) or "nothing"
