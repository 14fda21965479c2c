"""Signed events end to end: the relay signs, a consumer that requires signatures applies what
verifies and dead-letters unsigned, tampered and unknown-key records as security failures."""

from __future__ import annotations

import psycopg
import pytest
from confluent_kafka import Producer
from support.consumer import APP_TYPE, applied, consumer_thread, counting_app, create_applied_table, envelope, produce
from support.kafka import create_topics, read_all
from support.outbox import relay_thread, wait_until

from bridge.config import SigningSettings
from bridge.signing import Signer

pytestmark = pytest.mark.integration


def test_relay_signs_and_a_consumer_requiring_signatures_verifies(relay_env):
    topic = relay_env.topic(APP_TYPE)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching"])
    create_applied_table(relay_env)
    outbox = relay_env.outbox("delivery")
    with psycopg.connect(relay_env.database_url) as conn:
        signed = [outbox.emit(conn, APP_TYPE, 1, f"coa_{i}", "t", {"seq": 1}) for i in range(5)]
        conn.commit()
    keys = {"old": "first-secret", "new": "second-secret"}
    signing = SigningSettings(keys=keys, sign_with=["old", "new"])  # mid-rotation: both keys
    with relay_thread(relay_env, relay_env.settings(signing=signing)) as relay:
        wait_until(lambda: relay.published == 5, message="signed publication")
    (sample,) = [r for r in read_all(relay_env.bootstrap, [topic], expect=5) if r.event_id == signed[0].event_id]
    assert sample.headers["bridge-signature"].startswith(b"v2;old=")

    # Unsigned, tampered (signed value altered) and unknown-key records.
    unsigned = envelope(subject="coa_u", payload={"seq": 1})
    produce(relay_env.bootstrap, topic, [unsigned])
    good_headers = dict(sample.headers)
    producer = Producer({"bootstrap.servers": relay_env.bootstrap})
    producer.produce(
        topic, key=sample.key, value=sample.value.replace(b'"seq":1', b'"seq":9'), headers=list(good_headers.items())
    )
    stranger = Signer({"mallory": "guess"}).header(topic, sample.key, sample.value, good_headers)
    producer.produce(
        topic,
        key=sample.key,
        value=sample.value,
        headers=[(k, v) for k, v in good_headers.items() if k != "bridge-signature"] + [stranger],
    )
    producer.flush(30)

    verifying = SigningSettings(keys={"new": "second-secret"}, required=True)  # verifiers moved to the new key
    with consumer_thread(relay_env, counting_app(relay_env.schema), relay_env.settings(signing=verifying)) as runner:
        wait_until(lambda: runner.applied == 5 and runner.dead_lettered == 3, message="verification")
    assert sorted(r[0] for r in applied(relay_env)) == sorted(e.event_id for e in signed)
    letters = read_all(relay_env.bootstrap, [f"{topic}.dlq.coaching"], expect=3)
    assert {r.headers["dlq.error.class"] for r in letters} == {b"bridge.errors.SignatureError"}
    assert any(b"unsigned record" in r.headers["dlq.error.message"] for r in letters)
    assert any(b"signature mismatch" in r.headers["dlq.error.message"] for r in letters)
    assert any(b"unknown key" in r.headers["dlq.error.message"] for r in letters)
