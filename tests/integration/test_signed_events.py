"""Signed events end to end: the relay signs, a consumer that requires signatures applies what
verifies and dead-letters unsigned, tampered and unknown-key records as security failures."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg import sql
from pydantic import SecretStr
from support.consumer import APP_TYPE, applied, consumer_thread, counting_app, create_applied_table, envelope, produce
from support.kafka import create_topics, read_all
from support.outbox import CONTRACTS, relay_thread, wait_until

from bridge.config import SigningSettings
from bridge.consumer import ConsumerApp
from bridge.dlq import replay
from bridge.envelope import Envelope
from bridge.signing import Signer
from bridge.topics import replay_topic_name

pytestmark = pytest.mark.integration


def test_relay_signs_and_a_consumer_requiring_signatures_verifies(relay_env):
    topic = relay_env.topic(APP_TYPE)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching"])
    create_applied_table(relay_env)
    outbox = relay_env.outbox("delivery")
    with psycopg.connect(relay_env.database_url) as conn:
        signed = [outbox.emit(conn, APP_TYPE, 1, f"coa_{i}", "t", {"seq": 1}) for i in range(5)]
        conn.commit()
    keys = {"old": SecretStr("first-secret"), "new": SecretStr("second-secret")}
    signing = SigningSettings(keys=keys, sign_with=["old", "new"])  # mid-rotation: both keys
    with relay_thread(relay_env, relay_env.settings(signing=signing)) as relay:
        wait_until(lambda: relay.published == 5, message="signed publication")
    (sample,) = [r for r in read_all(relay_env.bootstrap, [topic], expect=5) if r.event_id == signed[0].event_id]
    assert sample.headers["bridge-signature"].startswith(b"v2;old=")
    assert sample.key is not None
    assert sample.value is not None

    # Unsigned, tampered (signed value altered) and unknown-key records.
    unsigned = envelope(subject="coa_u", payload={"seq": 1})
    produce(relay_env.bootstrap, topic, [unsigned])
    good_headers = dict(sample.headers)
    producer = Producer({"bootstrap.servers": relay_env.bootstrap})
    producer.produce(
        topic, key=sample.key, value=sample.value.replace(b'"seq":1', b'"seq":9'), headers=list(good_headers.items())
    )
    stranger = Signer({"mallory": "guess"}).header(topic, sample.key, sample.value, good_headers)
    stranger_headers: list[tuple[str, str | bytes | None]] = [
        (k, v) for k, v in good_headers.items() if k != "bridge-signature"
    ]
    stranger_headers.append(stranger)
    producer.produce(topic, key=sample.key, value=sample.value, headers=stranger_headers)
    producer.flush(30)

    # The verifiers moved to the new key.
    verifying = SigningSettings(keys={"new": SecretStr("second-secret")}, required=True)
    with consumer_thread(relay_env, counting_app(relay_env.schema), relay_env.settings(signing=verifying)) as runner:
        wait_until(lambda: runner.applied == 5 and runner.dead_lettered == 3, message="verification")
    assert sorted(r[0] for r in applied(relay_env)) == sorted(e.event_id for e in signed)
    letters = read_all(relay_env.bootstrap, [f"{topic}.dlq.coaching"], expect=3)
    assert {r.headers["dlq.error.class"] for r in letters} == {b"bridge.errors.SignatureError"}
    assert any(b"unsigned record" in r.headers["dlq.error.message"] for r in letters)
    assert any(b"signature mismatch" in r.headers["dlq.error.message"] for r in letters)
    assert any(b"unknown key" in r.headers["dlq.error.message"] for r in letters)


def test_a_signed_event_replayed_from_the_dlq_verifies_on_the_replay_topic(relay_env):
    """The relay signed it for its own topic; the replay sends it to the consumer's replay topic,
    where the consumer verifies it against the original topic named in the replay header."""
    topic, dlq = relay_env.topic(APP_TYPE), f"{relay_env.topic(APP_TYPE)}.dlq.coaching"
    replay_topic = replay_topic_name(relay_env.prefix, "coaching")
    create_topics(relay_env.bootstrap, [topic, dlq, replay_topic])
    create_applied_table(relay_env)
    with psycopg.connect(relay_env.database_url) as conn:
        refused = relay_env.outbox("delivery").emit(conn, APP_TYPE, 1, "coa_r", "t", {"seq": 1, "decide": "dead"})
        conn.commit()
    signing = SigningSettings(keys={"k": SecretStr("secret")}, sign_with=["k"], required=True)
    settings = relay_env.settings(signing=signing)
    with relay_thread(relay_env, settings) as relay:
        wait_until(lambda: relay.published == 1, message="the signed publication")
    with consumer_thread(relay_env, counting_app(relay_env.schema), settings) as runner:
        wait_until(lambda: runner.dead_lettered == 1, message="the handler's refusal")
    (letter,) = read_all(relay_env.bootstrap, [dlq], expect=1)
    assert letter.headers["dlq.error.class"] == b"bridge.errors.DeadLetter"  # not a signature failure

    # The fix is deployed: the handler accepts it now. The replay goes to the replay topic.
    assert replay(relay_env.clients(), dlq, topic_prefix=relay_env.prefix).replayed == [(refused.event_id, "decision")]
    with consumer_thread(relay_env, accepting_app(relay_env.schema), settings) as runner:
        wait_until(lambda: runner.applied == 1, message="the replayed event applied")
        assert runner.dead_lettered == 0
    assert [r[0] for r in applied(relay_env)] == [refused.event_id]
    assert len(read_all(relay_env.bootstrap, [dlq], expect=1)) == 1  # no new dead letter


def accepting_app(schema: str) -> ConsumerApp:
    """coaching's app after the fix: it applies every coach.assigned, whatever the payload asks."""
    app = ConsumerApp("coaching", contracts=CONTRACTS)
    insert = sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: psycopg.Connection[Any]) -> None:
        conn.execute(insert, (event.event_id, event.subject, event.payload.get("seq")))

    return app
