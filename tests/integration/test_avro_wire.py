"""Relay and consumer on the Avro wire format end to end; an unknown fingerprint goes to the DLQ."""

from __future__ import annotations

import psycopg
import pytest
from confluent_kafka import Producer
from support.consumer import APP_TYPE, applied, consumer_thread, counting_app, create_applied_table, envelope, produce
from support.kafka import create_topics, read_all
from support.outbox import CONTRACTS, relay_thread, wait_until

from bridge.avro import AvroCodec

pytestmark = pytest.mark.integration


def test_avro_on_the_wire_end_to_end(relay_env):
    topic = relay_env.topic(APP_TYPE)
    dlq = f"{topic}.dlq.coaching"
    create_topics(relay_env.bootstrap, [topic, dlq])
    create_applied_table(relay_env)
    outbox = relay_env.outbox("delivery")
    with psycopg.connect(relay_env.database_url) as conn:
        emitted = [outbox.emit(conn, APP_TYPE, 1, f"coa_{i}", "t", {"seq": 1, "coach": f"c{i}"}) for i in range(5)]
        conn.commit()
    with relay_thread(relay_env, relay_env.settings(value_format="avro")) as relay:
        wait_until(lambda: relay.published == 5, message="Avro publication")
    records = read_all(relay_env.bootstrap, [topic], expect=5)
    codec = AvroCodec(CONTRACTS.registry)  # a consumer's own codec
    for record in records:
        assert record.headers["content-type"] == b"application/avro"
        assert record.value is not None
        assert record.value[:2] == b"\xc3\x01"
        document = codec.decode(record.value)
        assert document["event_id"] == record.event_id
    # A JSON record on the same topic, and an Avro record with a fingerprint nobody knows.
    produce(relay_env.bootstrap, topic, [json_event := envelope(subject="coa_j", payload={"seq": 1})])
    assert records[0].value is not None
    alien = records[0].value[:2] + b"\x01" * 8 + records[0].value[10:]
    producer = Producer({"bootstrap.servers": relay_env.bootstrap})
    producer.produce(topic, key=b"coa_x", value=alien, headers=[("content-type", b"application/avro")])
    producer.flush(30)
    with consumer_thread(relay_env, counting_app(relay_env.schema)) as runner:
        wait_until(lambda: runner.applied == 6 and runner.dead_lettered == 1, message="both formats and the alien")
    assert sorted(r[0] for r in applied(relay_env)) == sorted([e.event_id for e in emitted] + [json_event.event_id])
    (letter,) = read_all(relay_env.bootstrap, [dlq], expect=1)
    assert letter.headers["dlq.error.class"] == b"bridge.errors.DecodeError"
    assert b"unknown Avro schema fingerprint 0101010101010101" in letter.headers["dlq.error.message"]
