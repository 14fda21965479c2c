"""The consumer runner's logic on the in-memory broker and database, on a fake clock: no services.

The runner runs in the test's own thread. Each time it waits (an empty poll, a paused partition,
an outage) the fake clock advances and hands control to the test's *scenario*, a generator that
goes on until its next ``yield``; when the scenario ends the runner is stopped. So a test reads as
a story — produce, let the runner work, check, break something, check again — and runs the same
way every time.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from support.memory_outbox import MemoryApplier, MemoryOutbox
from support.schemas import example_for

from bridge.clock import FakeClock
from bridge.config import ConsumerSettings, ErrorPolicy
from bridge.consumer import ConsumerApp, ConsumerRunner
from bridge.consumer.reading import RecordReader
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import (
    DatabaseConfigurationError,
    DatabaseUnavailableError,
    DeadLetter,
    RetryLater,
    SchemaNotMigratedError,
    SkipEvent,
)
from bridge.ids import new_event_id
from bridge.kafka.memory import MemoryBroker, partition_for
from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole
from bridge.kafka.records import Record, TopicPartition
from bridge.relay import RecordEncoder
from bridge.topics.naming import dlq_topic_name

CONTRACTS = Contracts.load()
PREFIX = "t."
CONSUMER = "coaching"
GROUP = f"{PREFIX}{CONSUMER}"
APP_TYPE = "coach.assigned"
TOPIC = f"{PREFIX}{APP_TYPE}"
RELEASED = f"{PREFIX}credit.released"
#: Two subjects on different partitions of a two-partition topic.
SUBJECT_0 = next(f"coa_{n}" for n in range(100) if partition_for(f"coa_{n}".encode(), 2) == 0)
SUBJECT_1 = next(f"coa_{n}" for n in range(100) if partition_for(f"coa_{n}".encode(), 2) == 1)


class ScriptClock(FakeClock):
    """A fake clock that calls ``on_wait`` after each wait has advanced it."""

    def __init__(self) -> None:
        super().__init__()
        self.on_wait: Callable[[], None] | None = None

    def wait(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.advance(seconds)
        if self.on_wait is not None:
            self.on_wait()
        return stop.is_set() if stop is not None else False


class ForegroundCommits(KafkaClients):
    """The memory broker's clients, with consumers that commit only when the engine says so (as
    librdkafka's do between its background commits)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._clients = broker.clients()

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer:
        return self._clients.producer(role, client_id=client_id, max_message_bytes=max_message_bytes)

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer:
        return self._clients.consumer(group_id, client_id=client_id, commit_in_background=False)

    def admin(self) -> Admin:
        return self._clients.admin()


def envelope(
    subject: str = SUBJECT_0, payload: dict[str, Any] | None = None, *, event_type: str = APP_TYPE, version: int = 1
) -> Envelope:
    now = datetime.now(UTC)
    return Envelope(
        event_id=new_event_id(),
        event_type=event_type,
        schema_version=version,
        producer=CONTRACTS.registry.events[event_type].producer,
        tenant_id="tenant-1",
        subject=subject,
        occurred_at=now,
        recorded_at=now,
        payload=payload or {},
    )


def contract_headers(document: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The headers the relay writes for an envelope document."""
    names = ("event_id", "event_type", "schema_version", "producer", "tenant_id")
    return [*((n, str(document[n]).encode()) for n in names), ("content-type", b"application/json")]


class RunnerWorld:
    """A memory broker with the consumer's topics, a coaching app whose handler obeys its payload,
    the in-memory database, and a runner on them."""

    def __init__(
        self,
        *,
        partitions: int = 1,
        policy: ErrorPolicy | None = None,
        clients: Callable[[MemoryBroker], KafkaClients] | None = None,
        dlq_topics: bool = True,
    ) -> None:
        self.clock = ScriptClock()
        self.broker = MemoryBroker(clock=self.clock)
        for topic in (TOPIC, RELEASED):
            self.broker.create_topic(topic, partitions)
            if dlq_topics:
                self.broker.create_topic(dlq_topic_name(topic, CONSUMER))
        self.policy = policy or ErrorPolicy(max_attempts=3, backoff_initial=1.0, backoff_max=8.0)
        self.app = ConsumerApp(CONSUMER, contracts=CONTRACTS, policy=self.policy)
        self.applier = MemoryApplier(self.app, clock=self.clock)
        #: (event id, fake time) of every handler call, failed or not.
        self.calls: list[tuple[str, float]] = []
        self.app.handler(APP_TYPE, version=1)(self._handle)
        self.app.handler("credit.released", version=1)(self._handle)
        self._producer = self.broker.clients().producer("replay", client_id="test")
        self.runner = ConsumerRunner(
            self.app,
            self.applier,
            clients(self.broker) if clients is not None else self.broker.clients(),
            RecordReader(CONTRACTS, lambda r: r.topic.removeprefix(PREFIX) if r.topic.startswith(PREFIX) else None),
            topic_prefix=PREFIX,
            settings=ConsumerSettings(poll_timeout=0.2),
            clock=self.clock,
        )

    def _handle(self, event: Envelope, conn: object) -> None:
        """Fails ``fail`` times, then decides as ``decide`` says, else records the event."""
        seen = sum(1 for event_id, _ in self.calls if event_id == event.event_id)
        self.calls.append((event.event_id, self.clock.monotonic()))
        knobs = event.payload
        if seen < knobs.get("fail", 0):
            raise RuntimeError(f"planned failure {seen + 1} of {event.event_id}")
        decision = knobs.get("decide")
        if decision == "skip":
            raise SkipEvent("not for us")
        if decision == "dead":
            raise DeadLetter("the handler refuses this one")
        if decision == "retry" and seen < knobs.get("times", 1):
            raise RetryLater("not yet", delay=knobs.get("delay"))
        self.applier.record(event.event_id)

    # --- producing ---

    def send(self, item: Envelope, topic: str = TOPIC) -> Envelope:
        """Produce an envelope as the relay does."""
        document = item.to_dict()
        self.send_raw(topic, item.subject.encode(), item.to_json(), contract_headers(document))
        return item

    def send_raw(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        """Produce any bytes, and wait until the broker has them."""
        errors: list[object] = []
        assert self._producer.produce(topic, key, value, headers, errors.append)
        assert self._producer.flush(0) == 0
        assert errors == [None]

    # --- running ---

    def run(self, scenario: Iterator[None] | None = None, *, limit: int = 5000) -> None:
        """Run the runner here until the scenario ends (without one: until it first waits)."""
        steps = iter(scenario if scenario is not None else ())
        waits = 0

        def on_wait() -> None:
            nonlocal waits
            waits += 1
            if self.runner.state.stopping.is_set():
                return
            if waits > limit:
                self.runner.stop()
                raise AssertionError(f"the scenario did not end within {limit} waits of the runner")
            try:
                next(steps)
            except StopIteration:
                self.runner.stop()

        self.clock.on_wait = on_wait
        try:
            self.runner.run()
        finally:
            self.clock.on_wait = None

    # --- looking ---

    def applied(self) -> list[str]:
        """Event ids whose handlers committed, in the order they did."""
        return [d.envelope.event_id for d in self.applier.applied]

    def attempts_of(self, event_id: str) -> list[float]:
        """The fake times of the handler calls for one event."""
        return [at for called, at in self.calls if called == event_id]

    def dead_letters(self, topic: str = TOPIC) -> list[Record]:
        return self.broker.records(dlq_topic_name(topic, CONSUMER))

    def committed(self, topic: str = TOPIC, partition: int = 0) -> int | None:
        return self.broker.committed(GROUP).get(TopicPartition(topic, partition))


def until(condition: Callable[[], bool], limit: int = 1000) -> Iterator[None]:
    """Let the runner work until ``condition`` holds."""
    for _ in range(limit):
        if condition():
            return
        yield
    raise AssertionError(f"not reached within {limit} waits of the runner")


def header(record: Record, name: str) -> str:
    value = record.header(name)
    assert value is not None, f"no header {name}"
    return value.decode()


# --- applying ------------------------------------------------------------------------------------


def test_every_event_is_applied_once_and_duplicates_are_absorbed():
    world = RunnerWorld()
    first = world.send(envelope())
    second = world.send(envelope())
    # A relay that crashed before deleting a row sends it again:
    world.send_raw(TOPIC, first.subject.encode(), first.to_json(), contract_headers(first.to_dict()))

    def scenario() -> Iterator[None]:
        yield from until(lambda: world.committed() == 3)

    world.run(scenario())
    assert world.applied() == [first.event_id, second.event_id]
    assert world.applier.effects == [first.event_id, second.event_id]
    assert world.runner.duplicates == 1
    assert world.dead_letters() == []


def test_a_duplicate_within_one_batch_is_applied_once():
    world = RunnerWorld()
    item = world.send(envelope())
    world.send(item)
    world.run()
    assert world.applied() == [item.event_id]
    assert world.runner.duplicates == 1
    assert world.committed() == 2


def test_a_failing_record_in_a_batch_neither_loses_nor_repeats_the_others():
    world = RunnerWorld()
    before = world.send(envelope())
    flaky = world.send(envelope(payload={"fail": 2}))
    after = world.send(envelope())

    def scenario() -> Iterator[None]:
        yield from until(lambda: world.committed() == 3)

    world.run(scenario())
    assert world.applied() == [before.event_id, flaky.event_id, after.event_id]
    assert world.applier.effects == world.applied()  # the rolled-back batch left no effect behind
    assert world.dead_letters() == []


def test_what_the_relay_sends_is_what_the_runner_applies():
    world = RunnerWorld(partitions=2)
    outbox = MemoryOutbox()
    encoder = RecordEncoder(PREFIX)
    rows = [outbox.emit(subject, event_type=APP_TYPE) for subject in (SUBJECT_0, SUBJECT_1, SUBJECT_0)]
    for row in rows:
        record = encoder.encode(row)
        world.send_raw(record.topic, record.key, record.value, record.headers)
    world.run()
    assert sorted(world.applied()) == sorted(row.event_id for row in rows)
    assert world.dead_letters() == []


def test_offsets_never_run_ahead_of_what_was_applied():
    world = RunnerWorld()
    items = [world.send(envelope(payload={"fail": n % 3})) for n in range(6)]
    ids = [item.event_id for item in items]
    seen: list[int] = []

    def scenario() -> Iterator[None]:
        while True:
            committed = world.committed() or 0
            seen.append(committed)
            assert set(ids[:committed]) <= set(world.applied())
            if committed == len(items):
                return
            yield

    world.run(scenario())
    assert world.applied() == ids
    assert seen == sorted(seen)  # committed offsets only move forward


# --- handler failures and decisions --------------------------------------------------------------


def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered():
    world = RunnerWorld(partitions=2)
    poison = world.send(envelope(SUBJECT_0, {"fail": 99}))
    behind = world.send(envelope(SUBJECT_0))
    flowing: list[Envelope] = []

    def scenario() -> Iterator[None]:
        yield from until(lambda: len(set(world.attempts_of(poison.event_id))) >= 2)
        # Its partition is paused at the poison record; the other partition flows meanwhile.
        assert behind.event_id not in world.applied()
        flowing.append(world.send(envelope(SUBJECT_1)))
        yield from until(lambda: flowing[0].event_id in world.applied())
        assert world.dead_letters() == []
        yield from until(lambda: behind.event_id in world.applied())

    world.run(scenario())
    [letter] = world.dead_letters()
    assert json.loads(letter.value)["event_id"] == poison.event_id
    assert header(letter, "dlq.reason") == "handler"
    assert header(letter, "dlq.attempts") == "3"
    assert header(letter, "dlq.error.class") == "builtins.RuntimeError"
    assert "planned failure" in header(letter, "dlq.error.stacktrace")
    # The attempts (after the batch's own try) came further and further apart, as the policy says.
    attempts = sorted(set(world.attempts_of(poison.event_id)))
    assert len(attempts) == 3
    for number, (earlier, later) in enumerate(itertools.pairwise(attempts), start=1):
        assert later - earlier >= world.policy.retry_delay(number)
    assert world.applied() == [flowing[0].event_id, behind.event_id]
    assert world.committed(partition=0) == 2


def test_skip_event_is_remembered_and_acknowledged():
    world = RunnerWorld()
    skipped = world.send(envelope(payload={"decide": "skip"}))
    world.run()
    assert world.applied() == []
    assert skipped.event_id in world.applier.inbox  # so a redelivery is not handled again
    assert world.runner.skipped == 1
    assert world.dead_letters() == []
    assert world.committed() == 1


def test_dead_letter_decision_goes_to_the_dlq_without_retries():
    world = RunnerWorld()
    refused = world.send(envelope(payload={"decide": "dead"}))
    world.run()
    [letter] = world.dead_letters()
    assert header(letter, "event_id") == refused.event_id
    assert header(letter, "dlq.reason") == "decision"
    assert header(letter, "dlq.error.message") == "the handler refuses this one"
    assert header(letter, "dlq.attempts") == "1"
    assert world.committed() == 1


def test_retry_later_waits_its_own_delay_then_applies():
    world = RunnerWorld()
    later = world.send(envelope(payload={"decide": "retry", "times": 2, "delay": 5.0}))

    def scenario() -> Iterator[None]:
        yield from until(lambda: later.event_id in world.applied())

    world.run(scenario())
    # Two refusals, then applied: three calls, each its own delay after the one before (a
    # record alone in its batch is not called twice for its first attempt).
    attempts = world.attempts_of(later.event_id)
    assert len(attempts) == 3
    assert all(later - earlier >= 5.0 for earlier, later in itertools.pairwise(attempts))
    assert world.dead_letters() == []


# --- records that cannot be applied --------------------------------------------------------------


def _not_json() -> tuple[bytes, list[tuple[str, bytes]]]:
    return b"\xffnot json", [("event_id", b"evt_x"), ("content-type", b"application/json")]


def _invalid() -> tuple[bytes, list[tuple[str, bytes]]]:
    document = envelope().to_dict()
    document["occurred_at"] = "yesterday"
    return json.dumps(document).encode(), contract_headers(document)


def _other_type_on_this_topic() -> tuple[bytes, list[tuple[str, bytes]]]:
    document = envelope(event_type="lesson.scheduled").to_dict()
    return json.dumps(document).encode(), contract_headers(document)


def _header_disagrees() -> tuple[bytes, list[tuple[str, bytes]]]:
    document = envelope().to_dict()
    headers = [(k, b"evt_someone_else" if k == "event_id" else v) for k, v in contract_headers(document)]
    return json.dumps(document).encode(), headers


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_not_json, "decode"),
        (_invalid, "invalid"),
        (_other_type_on_this_topic, "integrity"),
        (_header_disagrees, "integrity"),
    ],
)
def test_poison_goes_to_the_dlq_at_once_with_its_headers(make, reason):
    world = RunnerWorld()
    value, headers = make()
    world.send_raw(TOPIC, SUBJECT_0.encode(), value, headers)
    good = world.send(envelope())
    world.run()

    [letter] = world.dead_letters()
    assert (letter.key, letter.value) == (SUBJECT_0.encode(), value)
    assert header(letter, "dlq.reason") == reason
    assert header(letter, "dlq.original.topic") == TOPIC
    assert header(letter, "dlq.original.partition") == "0"
    assert header(letter, "dlq.original.offset") == "0"
    assert header(letter, "dlq.consumer") == CONSUMER
    assert header(letter, "dlq.attempts") == "1"
    assert [(k, v) for k, v in letter.headers if k in dict(headers)] == list(headers)  # kept as they were
    assert world.calls == [(good.event_id, world.calls[0][1])]  # the handler never saw the poison
    assert world.committed() == 2


@pytest.mark.parametrize(
    ("topic", "item"),
    [
        (TOPIC, lambda: envelope(version=2)),  # a version these contracts do not have
        (RELEASED, lambda: envelope(event_type="credit.released", version=2, payload=_released_v2())),  # no handler
    ],
)
def test_an_event_no_handler_takes_is_dead_lettered_as_unhandled(topic, item):
    world = RunnerWorld()
    world.send(item(), topic)
    world.run()
    [letter] = world.dead_letters(topic)
    assert header(letter, "dlq.reason") == "unhandled"
    assert header(letter, "dlq.error.class") == "bridge.Unhandled"
    assert world.calls == []
    assert world.committed(topic) == 1


def _released_v2() -> dict[str, Any]:
    registry = CONTRACTS.registry
    version = registry.lookup("credit.released", 2)
    assert version is not None
    schema_file = registry.schema_file(version)
    assert schema_file is not None
    payload: dict[str, Any] = example_for(json.loads(schema_file.read_text()))
    return payload


# --- outages -------------------------------------------------------------------------------------


def test_a_database_outage_pauses_everything_and_dead_letters_nothing():
    world = RunnerWorld()
    items = [world.send(envelope()) for _ in range(3)]
    world.applier.outage(30.0)

    def scenario() -> Iterator[None]:
        yield  # the first apply failed: the runner waits for the database
        assert not world.runner.health().ready
        while world.applier.applied == []:
            assert world.committed() is None
            yield
        yield from until(lambda: world.committed() == 3)
        assert world.runner.health().ready

    world.run(scenario())
    assert world.applied() == [item.event_id for item in items]
    assert world.dead_letters() == []
    assert world.runner.dead_lettered == 0
    assert world.applier.closes >= 1  # the lost connection was let go


def test_a_permanent_error_met_while_waiting_out_an_outage_stops_the_runner(monkeypatch):
    """A failed login (or a dropped inbox) is not waited out like the outage it interrupted."""
    world = RunnerWorld()
    world.send(envelope())
    world.applier.down = True
    pings: list[str] = []

    def ping() -> None:
        pings.append("ping")
        if len(pings) < 3:
            raise DatabaseUnavailableError("connection refused", setting="BRIDGE_DATABASE__URL")
        raise DatabaseConfigurationError("password authentication failed", setting="BRIDGE_DATABASE__URL")

    monkeypatch.setattr(world.applier, "ping", ping)
    with pytest.raises(DatabaseConfigurationError, match="password authentication failed"):
        world.run(itertools.repeat(None))
    assert len(pings) == 3  # the outage was retried; the permanent error was not
    assert world.dead_letters() == []
    assert world.committed() is None


def test_an_inbox_dropped_during_an_outage_stops_the_runner(monkeypatch):
    world = RunnerWorld()
    world.send(envelope())
    world.applier.down = True

    def ping() -> None:
        raise SchemaNotMigratedError("t.inbox missing: run bridge db migrate")

    monkeypatch.setattr(world.applier, "ping", ping)
    with pytest.raises(SchemaNotMigratedError):
        world.run(itertools.repeat(None))
    assert world.committed() is None


def test_a_broker_outage_is_waited_out():
    world = RunnerWorld()
    first = world.send(envelope())

    def scenario() -> Iterator[None]:
        world.broker.available = False
        yield
        yield
        world.broker.available = True
        second = world.send(envelope())
        yield from until(lambda: world.applied() == [first.event_id, second.event_id])

    world.run(scenario())


def test_a_missing_dlq_topic_is_an_outage_not_a_loss():
    world = RunnerWorld(dlq_topics=False)
    refused = world.send(envelope(payload={"decide": "dead"}))
    behind = world.send(envelope())

    def scenario() -> Iterator[None]:
        yield
        yield
        # Nothing moves while the dead letter has nowhere to go, and what follows it waits.
        assert world.committed() is None
        assert world.applied() == []
        assert not world.runner.health().ready
        world.broker.create_topic(dlq_topic_name(TOPIC, CONSUMER))
        yield from until(lambda: world.committed() == 2)

    world.run(scenario())
    [letter] = world.dead_letters()
    assert header(letter, "event_id") == refused.event_id
    assert world.applied() == [behind.event_id]


# --- offsets and the group -----------------------------------------------------------------------


def test_revoked_partitions_have_their_stored_offsets_committed():
    world = RunnerWorld(partitions=2, clients=ForegroundCommits)
    world.send(envelope(SUBJECT_0))
    world.send(envelope(SUBJECT_1))
    world.send(envelope(SUBJECT_1))
    revoked: list[TopicPartition] = []

    class Listener:
        def on_assign(self, partitions: Sequence[TopicPartition]) -> None:
            pass

        def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
            revoked.extend(partitions)

    def scenario() -> Iterator[None]:
        yield from until(lambda: len(world.applied()) == 3)
        assert world.broker.committed(GROUP) == {}  # stored, not committed yet
        newcomer = world.broker.clients().consumer(GROUP, client_id="newcomer")
        newcomer.subscribe([TOPIC], Listener())
        yield  # the runner hands one partition over
        assert len({tp for tp in world.runner.assigned if tp.topic == TOPIC}) == 1
        assert world.broker.committed(GROUP) == {TopicPartition(TOPIC, 0): 1, TopicPartition(TOPIC, 1): 2}
        newcomer.close()

    world.run(scenario())
    assert revoked == []  # the newcomer never lost anything: it closed


def test_stopping_commits_the_stored_offsets_and_closes_the_database():
    world = RunnerWorld(clients=ForegroundCommits)
    world.send(envelope())
    world.send(envelope())
    world.run()
    assert world.committed() == 2
    assert world.applier.closes == 1


def test_a_record_alone_in_its_batch_is_called_max_attempts_times_in_all():
    world = RunnerWorld()
    poison = world.send(envelope(SUBJECT_0, {"fail": 99}))
    world.run(until(lambda: len(world.dead_letters()) == 1))
    # The batch's own try is the first attempt: no second call straight after it.
    assert len(world.attempts_of(poison.event_id)) == world.policy.max_attempts
    [letter] = world.dead_letters()
    assert header(letter, "dlq.attempts") == str(world.policy.max_attempts)
