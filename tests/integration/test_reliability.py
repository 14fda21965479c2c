"""Issue 15 on a real PostgreSQL and a real Kafka: poison never blocks a partition, whatever its size,
and a consumer rejects records that are not what their topic and headers say.

Each test puts records straight on a live topic (as a buggy or hostile producer would), runs a
consumer, and checks the DLQ topic, what was applied, and the group's committed offsets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg import sql
from pydantic import SecretStr
from support.consumer import (
    APP_TYPE,
    applied,
    consumer_thread,
    counting_app,
    create_applied_table,
    envelope,
    order_violations,
)
from support.kafka import create_topics, java_partition, read_all
from support.outbox import CONTRACTS, Env, wait_until
from support.schemas import example_for

from bridge.config import SigningSettings
from bridge.consumer import ConsumerApp, ErrorPolicy
from bridge.envelope import Envelope
from bridge.ids import new_event_id
from bridge.signing import Signer
from bridge.topics import replay_topic_name

pytestmark = pytest.mark.integration

PARTITIONS = 3
#: What the broker (and so a source topic with default settings) accepts: Kafka's 1,048,588.
BROKER_LIMIT = 1_048_588


def contract_headers(document: dict[str, Any]) -> list[tuple[str, bytes]]:
    names = ("event_id", "event_type", "schema_version", "producer", "tenant_id")
    return [*((n, str(document[n]).encode()) for n in names), ("content-type", b"application/json")]


def raw_producer(bootstrap: str) -> Producer:
    # The client's own limit above the broker's, so the broker's limit is the one that counts.
    return Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "message.max.bytes": 4_000_000})


Raw = tuple[bytes, bytes, list[tuple[str, bytes]]]


def produce_events(bootstrap: str, topic: str, items: Sequence[Envelope | Raw]) -> None:
    """Envelopes with the relay's headers, or raw (key, value, headers), in this order."""
    producer = raw_producer(bootstrap)
    for item in items:
        if isinstance(item, Envelope):
            key, value, headers = item.subject.encode(), item.to_json(), contract_headers(item.to_dict())
        else:
            key, value, headers = item
        producer.produce(topic, key=key, value=value, headers=cast(Any, headers))
        producer.poll(0)
    assert producer.flush(60) == 0


def committed_offsets(env: Env, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def high_watermarks(env: Env, topic: str) -> dict[int, int]:
    """The end offset of every partition that holds records (an empty one has nothing to commit)."""
    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": "watermarks"})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        return {p: end for p, end in ends.items() if end > 0}
    finally:
        consumer.close()


def all_committed(env: Env, group: str, topic: str) -> bool:
    """Whether the group's committed offset is the end of every partition that holds records."""
    ends = high_watermarks(env, topic)
    committed = committed_offsets(env, group, topic)
    return {p: committed[p] for p in ends} == ends


@pytest.fixture
def app_env(relay_env):
    create_topics(relay_env.bootstrap, [relay_env.topic(APP_TYPE)], partitions=PARTITIONS)
    create_topics(relay_env.bootstrap, [dlq(relay_env), replay_topic_name(relay_env.prefix, "coaching")])
    create_applied_table(relay_env)
    return relay_env


def dlq(env: Env, event_type: str = APP_TYPE, consumer: str = "coaching") -> str:
    return f"{env.topic(event_type)}.dlq.{consumer}"


def numbered(subject: str, first: int, count: int, **payload) -> list[Envelope]:
    return [envelope(subject=subject, payload={"seq": n, **payload}) for n in range(first, first + count)]


def oversized_invalid(subject: str, size: int) -> Raw:
    """A record of exactly ``size`` bytes: an envelope whose ``occurred_at`` is not a timestamp,
    padded with a large payload."""
    document = envelope(subject=subject, payload={"blob": ""}).to_dict()
    document["occurred_at"] = "not a timestamp"
    base = len(json.dumps(document, separators=(",", ":")).encode())
    document["payload"]["blob"] = "x" * (size - base)
    value = json.dumps(document, separators=(",", ":")).encode()
    assert len(value) == size
    return subject.encode(), value, contract_headers(document)


# --- finding 1: poison never blocks, whatever its size -------------------------------------------


@pytest.mark.parametrize(
    ("size", "replaced"),
    [
        # The record: the broker took it; its dead letter fits the DLQ topic too (once the
        # DLQ producer's limit is the topic's, not librdkafka's 1,000,000): it goes as it is.
        (1_010_000, False),
        # At the broker's limit: with its dead-letter headers it no longer fits, so a marker goes.
        (1_048_000, True),
    ],
)
def test_an_oversized_poison_record_is_dead_lettered_and_blocks_nothing(app_env, size, replaced):
    topic = app_env.topic(APP_TYPE)
    subject = "coa_big"
    poison = oversized_invalid(subject, size)
    before, after = numbered(subject, 1, 5), numbered(subject, 6, 5)
    produce_events(app_env.bootstrap, topic, [*before, poison, *after])  # one partition, one batch
    later = [e for i in range(30) for e in numbered(f"coa_{i}", 1, 10)]
    with consumer_thread(app_env, counting_app(app_env.schema)) as runner:
        wait_until(lambda: runner.dead_lettered == 1 and runner.applied == 10, message="the batch around the poison")
        produce_events(app_env.bootstrap, topic, later)  # later events, on every partition
        wait_until(lambda: runner.applied == 310, message="the later events")
    rows = applied(app_env)
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in [*before, *after, *later])
    assert order_violations(rows) == []

    [letter] = read_all(app_env.bootstrap, [dlq(app_env)], expect=1)
    partition = java_partition(subject.encode(), PARTITIONS)
    headers = letter.headers
    assert headers["dlq.original.topic"] == topic.encode()
    assert headers["dlq.original.partition"] == str(partition).encode()
    assert headers["dlq.original.offset"] == b"5"
    assert headers["dlq.reason"] == b"invalid"
    assert headers["dlq.consumer"] == b"coaching"
    assert b"occurred_at" in headers["dlq.error.message"]
    assert letter.key == subject.encode()
    if replaced:
        marker = json.loads(letter.value or b"")
        assert marker["original"] == {"topic": topic, "partition": partition, "offset": 5}
        assert marker["size"] == size
        assert marker["sha256"] == hashlib.sha256(poison[1]).hexdigest()
        assert "occurred_at" in marker["reason"]
        assert headers["dlq.value"].startswith(b"replaced")
    else:
        assert letter.value == poison[1]
        assert "dlq.value" not in headers

    # Offsets committed past the poison and everything after it, on every partition.
    assert all_committed(app_env, f"{app_env.prefix}coaching", topic)


def exploding_app(schema: str) -> ConsumerApp:
    """coaching's app: records each coach.assigned; one whose payload says ``explode`` always fails
    with a long error message."""
    app = ConsumerApp(
        "coaching", contracts=CONTRACTS, policy=ErrorPolicy(max_attempts=2, backoff_initial=0.1, backoff_max=0.2)
    )
    insert = sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: psycopg.Connection) -> None:
        if event.payload.get("explode"):
            raise RuntimeError("the downstream service refused it: " + "because " * 400)
        conn.execute(insert, (event.event_id, event.subject, event.payload.get("seq")))

    return app


def test_a_valid_event_near_the_limit_whose_handler_fails_with_a_long_message_is_dead_lettered(app_env):
    """996,000 bytes: an event the relay could publish. Its dead letter carries a long error message
    and its stack trace (twice each, for Spring Kafka: ~13 KB of headers), more than librdkafka's
    default 1,000,000 allowed."""
    topic = app_env.topic(APP_TYPE)
    subject = "coa_near"
    small = envelope(subject=subject, payload={"seq": 2, "explode": True, "blob": ""})
    big = replace(small, payload={**small.payload, "blob": "y" * (996_000 - len(small.to_json()))})
    assert len(big.to_json()) == 996_000
    items = [*numbered(subject, 1, 1), big, *numbered(subject, 3, 3)]
    produce_events(app_env.bootstrap, topic, items)
    with consumer_thread(app_env, exploding_app(app_env.schema)) as runner:
        wait_until(lambda: runner.dead_lettered == 1 and runner.applied == 4, message="the dead letter and the rest")
    assert [r[2] for r in applied(app_env)] == [1, 3, 4, 5]
    [letter] = read_all(app_env.bootstrap, [dlq(app_env)], expect=1)
    assert letter.value == big.to_json()  # fits the DLQ topic: kept as it is
    assert letter.headers["dlq.reason"] == b"handler"
    assert letter.headers["dlq.attempts"] == b"2"
    assert letter.headers["dlq.error.class"] == b"builtins.RuntimeError"
    assert letter.headers["dlq.error.message"].startswith(b"the downstream service refused it")
    assert b"RuntimeError" in letter.headers["dlq.error.stacktrace"]
    size = len(letter.value or b"") + len(letter.key or b"") + sum(len(k) + len(v) for k, v in letter.headers.items())
    assert 1_000_000 < size < BROKER_LIMIT
    assert all_committed(app_env, f"{app_env.prefix}coaching", topic)


# --- finding 2: records that are not what their topic says ----------------------------------------

LOCKED, CONSUMED = "credit.locked", "credit.consumed"
KEYS = {"k1": SecretStr("the-relays-secret")}


def credit_event(event_type: str, subject: str = "crr_1") -> Envelope:
    version = CONTRACTS.registry.lookup(event_type, 1)
    assert version is not None
    schema_file = CONTRACTS.registry.schema_file(version)
    assert schema_file is not None
    now = datetime.now(UTC)
    return Envelope(
        event_id=new_event_id(),
        event_type=event_type,
        schema_version=1,
        producer="revenue",
        tenant_id="tenant-1",
        subject=subject,
        occurred_at=now,
        recorded_at=now,
        payload=example_for(json.loads(schema_file.read_text())),
    )


def delivery_app(schema: str) -> ConsumerApp:
    """delivery's app: records (event id, event type) of each credit.locked and credit.consumed."""
    app = ConsumerApp("delivery", contracts=CONTRACTS)
    insert = sql.SQL("INSERT INTO {}.seen (event_id, event_type) VALUES (%s, %s)").format(sql.Identifier(schema))

    def record(event: Envelope, conn: psycopg.Connection) -> None:
        conn.execute(insert, (event.event_id, event.event_type))

    app.handler(LOCKED, version=1)(record)
    app.handler(CONSUMED, version=1)(record)
    return app


@pytest.fixture
def credit_env(relay_env):
    topics = [relay_env.topic(LOCKED), relay_env.topic(CONSUMED)]
    create_topics(relay_env.bootstrap, topics, partitions=PARTITIONS)
    create_topics(relay_env.bootstrap, [f"{t}.dlq.delivery" for t in topics])
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.seen (event_id text NOT NULL, event_type text NOT NULL)").format(
                sql.Identifier(relay_env.schema)
            )
        )
    return relay_env


def seen(env: Env) -> list[tuple[str, str]]:
    with psycopg.connect(env.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT event_id, event_type FROM {}.seen").format(sql.Identifier(env.schema))
        ).fetchall()


def signed_record(topic: str, event: Envelope, headers: list[tuple[str, bytes]] | None = None) -> Raw:
    """(key, value, headers) with the signature a relay holding KEYS would add for ``topic``."""
    headers = contract_headers(event.to_dict()) if headers is None else headers
    key, value = event.subject.encode(), event.to_json()
    return key, value, [*headers, Signer(KEYS).header(topic, key, value, dict(headers))]


def test_records_that_are_not_what_their_topic_says_are_dead_lettered_not_applied(credit_env):
    locked_topic, consumed_topic = credit_env.topic(LOCKED), credit_env.topic(CONSUMED)
    good_locked, good_consumed = credit_event(LOCKED, "crr_a"), credit_event(CONSUMED, "crr_b")
    # A valid credit.locked envelope, correctly signed for the credit.consumed topic it is put on.
    wrong_topic = credit_event(LOCKED, "crr_c")
    # A credit.locked record signed for its own topic, copied onto credit.consumed (v2 covers the topic).
    copied = credit_event(LOCKED, "crr_d")
    copied_key, copied_value, copied_headers = signed_record(locked_topic, copied)
    # Headers that disagree with the envelope, signed as they are (a buggy producer, not a tamperer).
    tampered = {name: credit_event(LOCKED, f"crr_{name}") for name in ("event_type", "producer", "event_id")}
    bogus = {"event_type": b"credit.consumed", "producer": b"sales", "event_id": envelope().event_id.encode()}
    # No event_id header at all.
    headless = credit_event(LOCKED, "crr_h")

    produce_events(credit_env.bootstrap, consumed_topic, [signed_record(consumed_topic, good_consumed)])
    produce_events(credit_env.bootstrap, consumed_topic, [signed_record(consumed_topic, wrong_topic)])
    produce_events(credit_env.bootstrap, consumed_topic, [(copied_key, copied_value, copied_headers)])
    produce_events(
        credit_env.bootstrap,
        locked_topic,
        [
            signed_record(locked_topic, good_locked),
            *(
                signed_record(
                    locked_topic,
                    event,
                    [(k, bogus[name] if k == name else v) for k, v in contract_headers(event.to_dict())],
                )
                for name, event in tampered.items()
            ),
            signed_record(
                locked_topic, headless, [(k, v) for k, v in contract_headers(headless.to_dict()) if k != "event_id"]
            ),
        ],
    )
    settings = credit_env.settings(signing=SigningSettings(keys=KEYS, required=True))
    with consumer_thread(credit_env, delivery_app(credit_env.schema), settings) as runner:
        wait_until(lambda: runner.applied == 2 and runner.dead_lettered == 6, message="2 applied, 6 dead letters")
    assert sorted(seen(credit_env)) == sorted([(good_locked.event_id, LOCKED), (good_consumed.event_id, CONSUMED)])

    letters = read_all(
        credit_env.bootstrap, [f"{consumed_topic}.dlq.delivery", f"{locked_topic}.dlq.delivery"], expect=6
    )
    by_subject = {(r.key or b"").decode(): r.headers for r in letters}
    assert by_subject["crr_c"]["dlq.reason"] == b"integrity"
    assert b"'credit.locked' envelope on the topic of 'credit.consumed'" in by_subject["crr_c"]["dlq.error.message"]
    assert by_subject["crr_c"]["dlq.original.topic"] == consumed_topic.encode()
    assert by_subject["crr_d"]["dlq.reason"] == b"signature"
    assert b"signature mismatch" in by_subject["crr_d"]["dlq.error.message"]
    for name in tampered:
        headers = by_subject[f"crr_{name}"]
        assert headers["dlq.reason"] == b"integrity", name
        assert f"header {name}=".encode() in headers["dlq.error.message"], name
    assert by_subject["crr_h"]["dlq.reason"] == b"integrity"
    assert b"contract header(s) missing: event_id" in by_subject["crr_h"]["dlq.error.message"]


@pytest.mark.parametrize("policy", ["dlq", "tolerate"])
def test_a_record_without_its_event_id_header_follows_the_missing_headers_policy(credit_env, policy):
    topic = credit_env.topic(LOCKED)
    headless = credit_event(LOCKED, "crr_h")
    disagreeing = credit_event(LOCKED, "crr_x")
    produce_events(
        credit_env.bootstrap,
        topic,
        [
            (
                b"crr_h",
                headless.to_json(),
                [(k, v) for k, v in contract_headers(headless.to_dict()) if k != "event_id"],
            ),
            # Tolerated or not, a header that is there must agree with the envelope.
            (
                b"crr_x",
                disagreeing.to_json(),
                [(k, b"sales" if k == "producer" else v) for k, v in contract_headers(disagreeing.to_dict())],
            ),
        ],
    )
    settings = credit_env.settings(consumer={"missing_headers": policy})
    with consumer_thread(credit_env, delivery_app(credit_env.schema), settings) as runner:
        expected_dead = 2 if policy == "dlq" else 1
        wait_until(lambda: runner.dead_lettered == expected_dead, message=f"{expected_dead} dead letter(s)")
        wait_until(lambda: runner.applied == 2 - expected_dead, message="the rest applied")
    letters = read_all(credit_env.bootstrap, [f"{topic}.dlq.delivery"], expect=expected_dead)
    reasons = {(r.key or b"").decode(): r.headers["dlq.reason"] for r in letters}
    if policy == "dlq":
        assert seen(credit_env) == []
        assert reasons == {"crr_h": b"integrity", "crr_x": b"integrity"}
    else:
        assert seen(credit_env) == [(headless.event_id, LOCKED)]
        assert reasons == {"crr_x": b"integrity"}
