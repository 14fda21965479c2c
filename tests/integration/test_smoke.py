"""Both services are real: a topic made with the admin client, a record with headers produced and
consumed back over a real connection, and a query on a real PostgreSQL cluster."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from bridge.devstack import TansuServer

pytestmark = pytest.mark.integration


def round_trip(
    bootstrap: str, topic: str, group: str
) -> tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    delivered = []
    producer.produce(
        topic,
        key=b"crr_subject",
        value=b'{"hello":"world"}',
        headers=[("event_type", b"credit.released"), ("content-type", b"application/json")],
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    assert producer.flush(30) == 0
    assert delivered, "no delivery report"
    assert delivered[0][0] is None, delivered

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Tansu completes a group join only after about half the session timeout.
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            headers = message.headers()
            assert isinstance(headers, list), headers
            return message.key(), message.value(), headers
        pytest.fail(f"no record came back from {topic} within 60 s")
    finally:
        consumer.close()


def test_kafka_topic_produce_consume_with_headers(kafka_service, topic_factory, group_id):
    topic = topic_factory(partitions=3)
    metadata = kafka_service.admin().list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    key, value, headers = round_trip(kafka_service.bootstrap_servers, topic, group_id)

    assert key == b"crr_subject"
    assert value == b'{"hello":"world"}'
    assert ("event_type", b"credit.released") in headers
    assert ("content-type", b"application/json") in headers


def test_postgres_query_on_real_cluster(postgres_service, pg_conn, pg_schema):
    row = pg_conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    version = row[0]
    assert int(version) >= 140000
    pg_conn.execute("CREATE TABLE smoke (id int PRIMARY KEY, note text)")
    pg_conn.execute("INSERT INTO smoke VALUES (1, 'real')")
    pg_conn.commit()
    # A second, independent connection sees the committed row: a real server, not a mock.
    with psycopg.connect(postgres_service.url) as other:
        row = other.execute(f'SELECT note FROM "{pg_schema}".smoke WHERE id = 1').fetchone()
    assert row == ("real",)


def test_each_test_gets_its_own_database(pg_database):
    with psycopg.connect(pg_database) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    name = row[0]
    assert name.startswith("db_")


def test_tansu_broker_round_trip():
    """The compatibility subset: Tansu, the zero-Java broker of the demo, speaks enough Kafka for us."""
    tansu = TansuServer.start()
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"smoke-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
        key, value, headers = round_trip(tansu.bootstrap_servers, topic, f"g-{uuid.uuid4().hex[:8]}")
        assert (key, value) == (b"crr_subject", b'{"hello":"world"}')
        assert ("event_type", b"credit.released") in headers
    finally:
        tansu.stop()
