"""Publishing dead letters, and waiting until Kafka acknowledged every one.

A failure that is about the record (too large, refused by the broker) is never an outage: the
letter is sent again in the form that fits (:func:`~bridge.dlq.letters.fitted`). An outage (no
broker, the DLQ topic missing) raises :class:`~bridge.errors.DlqPublishError`: the source offset
must not move, and the runner pauses and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from bridge.clock import Clock, SystemClock
from bridge.dlq.letters import DeadLetterRecord, fitted
from bridge.errors import DlqPublishError, InfrastructureError, InvalidRecordError, KafkaError, RecordTooLargeError
from bridge.kafka.ports import Admin, KafkaClients
from bridge.topics.naming import dlq_topic_name

__all__ = ["DEFAULT_TOPIC_LIMIT", "DlqPublisher"]

log = logging.getLogger("bridge.dlq")

#: Kafka's default max.message.bytes, for a DLQ topic whose config cannot be read.
DEFAULT_TOPIC_LIMIT = 1_048_588
#: The producer's own limit is set far above any topic's: the topic's limit is what letters fit.
_CLIENT_LIMIT = 64 * 1024 * 1024
_SMALL = 64 * 1024


class DlqPublisher:
    """Publishes one consumer's dead letters to ``{topic}.dlq.{consumer}``."""

    def __init__(
        self, clients: KafkaClients, consumer: str, *, timeout: float = 30.0, clock: Clock | None = None
    ) -> None:
        self.consumer = consumer
        self.timeout = timeout
        self.clock = clock or SystemClock()
        self._clients = clients
        self._producer = clients.producer("dlq", client_id=f"bridge-dlq-{consumer}", max_message_bytes=_CLIENT_LIMIT)
        self._admin: Admin | None = None
        self._limits: dict[str, int] = {}

    def _limit(self, topic: str) -> int:
        if topic not in self._limits:
            try:
                if self._admin is None:
                    self._admin = self._clients.admin()
                configs = self._admin.topic_configs([topic], self.timeout).get(topic, {})
                self._limits[topic] = int(configs.get("max.message.bytes", DEFAULT_TOPIC_LIMIT))
            except (InfrastructureError, ValueError):
                return DEFAULT_TOPIC_LIMIT  # try again next time; the default is Kafka's
        return self._limits[topic]

    def publish(self, letters: Sequence[DeadLetterRecord]) -> list[DeadLetterRecord]:
        """Publish and wait; return the letters as sent (some may have been made to fit). Raise
        :class:`DlqPublishError` unless every one was acknowledged."""
        now = datetime.now(UTC)
        sent: list[DeadLetterRecord] = []
        outcomes: dict[int, KafkaError | None] = {}
        for index, letter in enumerate(letters):
            topic = dlq_topic_name(letter.topic, self.consumer)
            try:
                if not self._producer.topic_exists(topic, self.timeout):
                    raise DlqPublishError(f"DLQ topic {topic} does not exist (run bridge topics apply)")
            except InfrastructureError as exc:
                if isinstance(exc, DlqPublishError):
                    raise
                raise DlqPublishError(f"cannot reach the DLQ topic {topic}: {exc}") from exc
            letter, headers = fitted(letter, self.consumer, now, self._limit(topic))
            sent.append(letter)
            self._send(topic, letter, headers, outcomes, index)
        self._wait(outcomes, len(sent))
        retry = [i for i, error in outcomes.items() if isinstance(error, (RecordTooLargeError, InvalidRecordError))]
        for index in retry:
            # About the record, not an outage: send the form that fits whatever the topic says.
            letter = sent[index]
            topic = dlq_topic_name(letter.topic, self.consumer)
            log.warning(
                "dlq: %s refused %s/%d/%d (%s); sending a marker instead",
                topic,
                letter.topic,
                letter.partition,
                letter.offset,
                outcomes[index],
                extra={
                    "consumer": self.consumer,
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                },
            )
            letter, headers = fitted(letter, self.consumer, now, _SMALL)
            sent[index] = letter
            del outcomes[index]
            self._send(topic, letter, headers, outcomes, index)
        if retry:
            self._wait(outcomes, len(sent))
        failures = [f"{sent[i].topic}/{sent[i].partition}/{sent[i].offset}: {e}" for i, e in outcomes.items() if e]
        if failures:
            raise DlqPublishError("DLQ publish failed: " + "; ".join(failures))
        return sent

    def _send(
        self,
        topic: str,
        letter: DeadLetterRecord,
        headers: list[tuple[str, bytes]],
        outcomes: dict[int, KafkaError | None],
        index: int,
    ) -> None:
        def delivered(error: KafkaError | None) -> None:
            outcomes[index] = error

        try:
            while not self._producer.produce(topic, letter.key, letter.value, headers, delivered):
                self._producer.poll(0.05)
        except (RecordTooLargeError, InvalidRecordError) as exc:
            outcomes[index] = exc
        except InfrastructureError as exc:
            raise DlqPublishError(f"cannot publish to {topic}: {exc}") from exc

    def _wait(self, outcomes: dict[int, KafkaError | None], expected: int) -> None:
        deadline = self.clock.monotonic() + self.timeout + 5
        while len(outcomes) < expected and self.clock.monotonic() < deadline:
            self._producer.poll(0.1)
        if len(outcomes) < expected:
            raise DlqPublishError(
                f"{expected - len(outcomes)} dead letter(s) not acknowledged within {self.timeout:.0f} s"
            )

    def close(self) -> None:
        self._producer.close(self.timeout)
        if self._admin is not None:
            self._admin.close()
