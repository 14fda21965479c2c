"""The relay on a real PostgreSQL and a real Kafka: the wire contract, late commits, per-subject
order, quarantine, leadership and metrics."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.request

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from pydantic import SecretStr
from support.kafka import create_topics, first_copy_order_violations, java_partition, read_all
from support.netproxy import TcpProxy
from support.outbox import BULK_TYPE, emit_numbered, relay_thread, seq_of, wait_until
from support.schemas import example_for

from bridge.config import DatabaseSettings
from bridge.contracts import Contracts
from bridge.envelope import decode_envelope
from bridge.lifecycle import ServiceThread
from bridge.observability import ProbeServer
from bridge.outbox import EventSpec, OutboxStore, grant_statements
from bridge.wiring import build_relay

pytestmark = pytest.mark.integration


def test_wire_contract(relay_env):
    contracts = Contracts.load()
    topic = relay_env.topic("credit.released")
    create_topics(relay_env.bootstrap, [topic], partitions=6)
    version = contracts.registry.lookup("credit.released", 2)
    assert version is not None
    schema_file = contracts.registry.schema_file(version)
    assert schema_file is not None
    schema = json.loads(schema_file.read_text())
    subjects = [f"crr_0190a1b2-c3d4-7e5f-8a6b-{i:012x}" for i in range(40)]
    outbox = relay_env.outbox("revenue")
    with psycopg.connect(relay_env.database_url) as conn:
        emitted = {
            e.event_id: e
            for e in outbox.emit_batch(
                conn,
                [
                    EventSpec("credit.released", 2, s, "tenant-7", example_for(schema), correlation_id="c-1")
                    for s in subjects
                ],
            )
        }
        conn.commit()
    with relay_thread(relay_env):
        records = read_all(relay_env.bootstrap, [topic], expect=len(subjects))
    assert len(records) == len(subjects)
    for record in records:
        assert record.value is not None
        envelope = decode_envelope(record.value)
        contracts.validate(envelope)
        assert emitted[envelope.event_id] == envelope
        assert record.topic == f"{relay_env.prefix}credit.released"
        assert record.key == envelope.subject.encode()
        assert record.partition == java_partition(record.key, 6)
        assert record.headers == {
            "event_id": envelope.event_id.encode(),
            "event_type": b"credit.released",
            "schema_version": b"2",
            "producer": b"revenue",
            "tenant_id": b"tenant-7",
            "content-type": b"application/json",
        }
    assert relay_env.outbox_count() == 0


def test_a_transaction_that_takes_its_id_early_and_commits_late_is_published(relay_env):
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    outbox = relay_env.outbox()
    with relay_thread(relay_env) as relay:
        with psycopg.connect(relay_env.database_url) as early, psycopg.connect(relay_env.database_url) as late:
            slow = outbox.emit(early, BULK_TYPE, 1, "subject-early", "t", {"seq": 1})  # smaller id, not committed
            fast = outbox.emit(late, BULK_TYPE, 1, "subject-late", "t", {"seq": 1})
            late.commit()
            wait_until(lambda: relay.published >= 1, message="the committed event")
            early.commit()
        wait_until(lambda: relay.published >= 2, message="the late-committing event")
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=2)
    assert [r.event_id for r in records] == [fast.event_id, slow.event_id]


@pytest.mark.parametrize("relays", [1, 2])
def test_per_subject_order_under_interleaved_writers(relay_env, relays):
    """Many writers, each transaction bumping a per-subject counter row (so the counter follows
    commit order) and emitting {"seq": counter}; one or two relays run throughout."""
    topic = relay_env.topic()
    create_topics(relay_env.bootstrap, [topic], partitions=4)
    subjects = [f"sub-{i}" for i in range(25)]
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.counters (subject text PRIMARY KEY, n int NOT NULL)").format(
                sql.Identifier(relay_env.schema)
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {}.counters SELECT s, 0 FROM unnest(%s::text[]) s").format(
                sql.Identifier(relay_env.schema)
            ),
            (subjects,),
        )
    bump = sql.SQL("UPDATE {}.counters SET n = n + 1 WHERE subject = %s RETURNING n").format(
        sql.Identifier(relay_env.schema)
    )
    outbox = relay_env.outbox()
    per_writer, writers = 300, 4

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(relay_env.database_url) as conn:
            for _ in range(per_writer):
                picked = sorted(rng.sample(subjects, 2))  # one lock order: no deadlocks between writers
                specs = []
                for subject in picked:
                    row = conn.execute(bump, (subject,)).fetchone()
                    assert row is not None
                    n = row[0]
                    specs.append(EventSpec(BULK_TYPE, 1, subject, "t", {"seq": n}))
                outbox.emit_batch(conn, specs)
                conn.commit()

    with contextlib.ExitStack() as stack:
        for _ in range(relays):
            stack.enter_context(relay_thread(relay_env, batch_size=50))
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: relay_env.outbox_count() == 0, message="the outbox to drain")
    records = read_all(relay_env.bootstrap, [topic], expect=per_writer * writers * 2)
    assert len({r.event_id for r in records}) == per_writer * writers * 2
    assert first_copy_order_violations(records, seq_of) == []
    for subject in subjects:
        seqs = sorted({seq_of(r) for r in records if r.key == subject.encode()})
        assert seqs == list(range(1, len(seqs) + 1))


def test_oversized_and_unroutable_rows_are_quarantined_while_the_rest_flows(relay_env):
    topic = relay_env.topic()
    # The topic accepts 3 MB records, but the relay starts believing the broker takes 1 MB.
    create_topics(relay_env.bootstrap, [topic], config={"max.message.bytes": str(3_000_000)})
    outbox = relay_env.outbox()
    with psycopg.connect(relay_env.database_url) as conn:
        big = outbox.emit(conn, BULK_TYPE, 1, "subject-big", "t", {"seq": 1, "blob": "x" * 2_000_000})
        after_big = outbox.emit(conn, BULK_TYPE, 1, "subject-big", "t", {"seq": 2})
        lost = outbox.emit(conn, "lesson.cancelled", 1, "subject-lost", "t", {"seq": 1})  # its topic does not exist
        conn.commit()
    others = emit_numbered(relay_env, [f"other-{i}" for i in range(10)], per_subject=5)

    with relay_thread(relay_env) as relay:
        wait_until(lambda: relay.published >= len(others), message="the healthy subjects")
        with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
            store = OutboxStore(conn, relay_env.schema)
            failed = {r.event_id: r for r in store.quarantined()}
            assert set(failed) == {big.event_id, lost.event_id}
            assert "oversized" in failed[big.event_id].failure
            assert failed[big.event_id].size > 2_000_000
            assert "does not exist" in failed[lost.event_id].failure
            assert store.stats().backlog == 1  # the event after the big one waits for it
    records = read_all(relay_env.bootstrap, [topic], expect=len(others))
    assert {r.event_id for r in records} == set(others)

    # The operator creates the missing topic, lets the relay take bigger records, and retries.
    create_topics(relay_env.bootstrap, [relay_env.topic("lesson.cancelled")])
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        assert OutboxStore(conn, relay_env.schema).retry() == 2
    with relay_thread(relay_env, max_message_bytes=3_000_000):
        wait_until(lambda: relay_env.outbox_count() == 0, message="the retried rows")
    records = read_all(relay_env.bootstrap, [topic, relay_env.topic("lesson.cancelled")], expect=len(others) + 3)
    big_subject = [r.event_id for r in sorted(records, key=lambda r: r.offset) if r.key == b"subject-big"]
    assert big_subject == [big.event_id, after_big.event_id]  # order kept across the quarantine
    assert lost.event_id in {r.event_id for r in records}


LOCK_HOLDERS = (
    "SELECT a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
    "AND l.granted AND l.classid = hashtext('bridge.relay')::oid AND l.objid = hashtext(%s)::oid"
)


def test_standby_takes_over_when_the_leaders_session_is_lost(relay_env, unique_name):
    """Two relays, each with its own database role; the leader reaches PostgreSQL through a proxy
    that the test cuts (a network partition) and heals. While the leader cannot reconnect, the
    standby must take over; once it can, it must stand by. A sampler reads pg_locks throughout:
    the lock is never held by two sessions, and it moves from the first role to the second once."""
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    roles = [unique_name("rla")[:40], unique_name("rlb")[:40]]
    info = psycopg.conninfo.conninfo_to_dict(relay_env.database_url)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(str(info.get("port") or 5432)))
    urls = [
        psycopg.conninfo.make_conninfo(**{**info, "user": roles[0], "password": "pw", "port": str(proxy.port)}),
        psycopg.conninfo.make_conninfo(**{**info, "user": roles[1], "password": "pw"}),
    ]
    with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
        for role in roles:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
            for statement in grant_statements(relay_env.schema, relay_role=role):
                admin.execute(statement)
    holders: list[list[str]] = []
    sampling = threading.Event()

    def sample() -> None:
        with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
            while not sampling.is_set():
                holders.append([r[0] for r in conn.execute(LOCK_HOLDERS, (relay_env.schema,)).fetchall()])
                time.sleep(0.005)

    def relay_settings(url: str):
        database = DatabaseSettings(url=SecretStr(url), schema_name=relay_env.schema, connect_timeout=2)
        return relay_env.settings().model_copy(update={"database": database})

    sampler = threading.Thread(target=sample)
    subjects = [f"s{i}" for i in range(5)]
    counters: dict[str, int] = {}
    try:
        with relay_thread(relay_env, relay_settings(urls[0])) as first:
            wait_until(lambda: first.is_leader, message="a leader")
            sampler.start()
            with relay_thread(relay_env, relay_settings(urls[1])) as second:
                emit_numbered(relay_env, subjects, 20, counters=counters)
                wait_until(lambda: relay_env.outbox_count() == 0, message="the first events")
                assert (first.published, second.published, second.is_leader) == (100, 0, False)
                proxy.cut()  # the leader's session is lost, and it cannot get a new one
                wait_until(lambda: second.is_leader, timeout=15, message="the standby to take over")
                emit_numbered(relay_env, subjects, 20, counters=counters)
                wait_until(lambda: relay_env.outbox_count() == 0, message="the events after the takeover")
                assert (first.published, second.published) == (100, 100)  # the new leader sent them
                assert not first.is_leader
                proxy.heal()  # the old leader gets a session again: it stands by
                wait_until(lambda: first.health().ready, timeout=15, message="the old leader to stand by")
                emit_numbered(relay_env, subjects, 4, counters=counters)
                wait_until(lambda: relay_env.outbox_count() == 0, message="the last events")
                assert (first.published, second.published) == (100, 120)
                assert second.is_leader
                assert not first.is_leader
            sampling.set()
            sampler.join()
    finally:
        sampling.set()
        proxy.close()
        with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
            for role in roles:
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert max(len(h) for h in holders) == 1  # never two holders at once
    moves = [h[0] for i, h in enumerate(holders) if h and (i == 0 or holders[i - 1] != h)]
    assert moves[:2] == roles, moves  # held by the first relay, then by the second
    assert set(moves) == set(roles)
    after_takeover = holders[next(i for i, h in enumerate(holders) if h == [roles[1]]) :]
    assert [roles[0]] not in after_takeover  # the old leader never took it back
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=220)
    assert len({r.event_id for r in records}) == 220
    assert first_copy_order_violations(records, seq_of) == []


def test_metrics_are_exposed_and_move(relay_env):
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    relay = build_relay(relay_env.settings(relay={"stats_interval": 0.2}))
    server = ProbeServer(relay.metrics.registry, relay.health, host="127.0.0.1", port=0).start()
    thread = ServiceThread(relay)
    try:
        emit_numbered(relay_env, ["m1", "m2"], 25)
        thread.start()
        wait_until(lambda: relay.published == 50, message="publication")
        wait_until(lambda: relay.metrics.backlog._value.get() == 0, message="stats refresh")
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        thread.stop(timeout=30)
        server.close()
    samples = {
        (found.name, tuple(sorted(found.labels.items()))): found.value
        for family in text_string_to_metric_families(body)
        for found in family.samples
    }
    assert samples[("bridge_relay_published_total", (("event_type", BULK_TYPE),))] == 50
    # Latency is observed once per batch acknowledged in full, not once per row.
    assert 1 <= samples[("bridge_relay_delivery_latency_seconds_count", ())] <= 50
    assert samples[("bridge_relay_batch_size_sum", ())] == 50  # every row was read once
    assert 1 <= samples[("bridge_relay_batch_size_count", ())] <= 50
    assert samples[("bridge_relay_backlog_events", ())] == 0
    assert samples[("bridge_relay_oldest_unpublished_age_seconds", ())] == 0  # nothing is waiting
    assert samples[("bridge_relay_leader", ())] == 1
    assert samples[("bridge_relay_in_flight_events", ())] == 0
    assert not [key for key in samples if key[0] == "bridge_relay_errors_total"]  # no error of any kind


def test_relay_never_relies_on_auto_creation(relay_env):
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    with psycopg.connect(relay_env.database_url) as conn:
        relay_env.outbox().emit(conn, "lesson.attended", 1, "x", "t", {})
        conn.commit()
    with relay_thread(relay_env) as relay:
        wait_until(lambda: quarantined(relay_env) == 1, message="quarantine")
        assert relay.published == 0
    admin = AdminClient({"bootstrap.servers": relay_env.bootstrap})
    assert relay_env.topic("lesson.attended") not in admin.list_topics(timeout=10).topics


def quarantined(env) -> int:
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        return OutboxStore(conn, env.schema).stats().quarantined
