"""Failure is a feature: SIGKILL at random instants, broker and database restarts, graceful
shutdown, and several relays killed in turn. Nothing committed is lost; per-subject order holds."""

from __future__ import annotations

import os
import random
import threading
import time

import psycopg
import pytest
from support.kafka import create_topics, first_copy_order_violations, read_all
from support.outbox import BULK_TYPE, Env, RelayProcess, relay_thread, seq_of, wait_until

from bridge.devstack import KafkaServer, PostgresServer
from bridge.outbox import EventSpec, migrate

pytestmark = pytest.mark.integration


class Writer(threading.Thread):
    """Emits numbered events for its own subjects, in batches, until told to stop or done.

    Survives database outages: a batch whose commit raised is recorded as "maybe" (it may or may
    not have committed) and its subjects' numbers are not reused.
    """

    def __init__(self, env: Env, subjects: list[str], total: int, batch: int = 100, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.env, self.subjects, self.total, self.batch, self.pause = env, subjects, total, batch, pause
        self.committed: list[str] = []
        self.maybe: list[str] = []
        self.outages = 0  # commits or statements that failed because the database went away
        self.error: BaseException | None = None  # anything else: check_delivery fails the test
        self.counters = dict.fromkeys(subjects, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:
            self.error = exc
            raise

    def _write(self) -> None:
        outbox = self.env.outbox()
        rng = random.Random(7)
        conn = None
        while len(self.committed) + len(self.maybe) < self.total and not self.stop.is_set():
            specs = []
            for _ in range(self.batch):
                subject = rng.choice(self.subjects)
                self.counters[subject] += 1
                specs.append(EventSpec(BULK_TYPE, 1, subject, "t", {"seq": self.counters[subject]}))
            ids = []
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.env.database_url, connect_timeout=3)
                ids = [e.event_id for e in outbox.emit_batch(conn, specs)]
                conn.commit()
                self.committed += ids
            except psycopg.OperationalError:
                self.maybe += ids  # the commit may have happened; numbers are never reused either way
                self.outages += 1
                conn = None
                time.sleep(0.2)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()


def check_delivery(env: Env, writer: Writer, records) -> int:
    """All committed events arrived, nothing unknown did, order holds; returns the duplicates."""
    assert writer.error is None, f"the writer crashed: {writer.error!r}"
    assert not writer.is_alive(), "the writer is still writing"
    seen = [r.event_id for r in records]
    unique = set(seen)
    missing = set(writer.committed) - unique
    assert not missing, f"{len(missing)} committed events never reached Kafka"
    assert unique <= set(writer.committed) | set(writer.maybe)
    assert first_copy_order_violations(records, seq_of) == []
    return len(seen) - len(unique)


def test_sigkill_at_random_instants_loses_nothing(relay_env, tmp_path):
    create_topics(relay_env.bootstrap, [relay_env.topic()], partitions=3)
    writer = Writer(relay_env, [f"k{i}" for i in range(100)], total=20_000, batch=100, pause=0.02)
    # At most 500 rows are sent and not yet deleted at any instant: what one kill can make the next
    # relay send again.
    max_in_flight = 500
    relay = RelayProcess(relay_env, tmp_path, {"BRIDGE_RELAY__MAX_IN_FLIGHT": str(max_in_flight)}).start()
    rng = random.Random(11)
    kills = 0
    writer.start()
    try:
        while writer.is_alive() or kills < 6:
            time.sleep(rng.uniform(0.3, 1.5))
            relay.kill()
            kills += 1
            relay.start()
        writer.join()
        relay.kill()
        kills += 1
        relay.start_leading()  # a last, undisturbed relay drains the rest and stops gracefully
        wait_until(lambda: relay_env.outbox_count() == 0, timeout=120, message="the outbox to drain")
        assert relay.terminate() == 0, relay.log()[-3000:]
    finally:
        relay.kill()
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=20_000, timeout=120)
    duplicates = check_delivery(relay_env, writer, records)
    assert len(writer.committed) == 20_000
    # Each kill can resend at most what was in flight or acknowledged but not yet deleted.
    assert duplicates <= kills * max_in_flight, (duplicates, kills)
    assert kills * max_in_flight < 20_000  # so the bound says something: a relay resending all would fail it
    print(f"\n{kills} SIGKILLs, 20000 events, {duplicates} duplicates on the topic")


def test_graceful_shutdown_leaves_no_duplicates(relay_env, tmp_path):
    create_topics(relay_env.bootstrap, [relay_env.topic()], partitions=2)
    writer = Writer(relay_env, [f"g{i}" for i in range(20)], total=6_000, batch=100, pause=0.01)
    relay = RelayProcess(relay_env, tmp_path).start_leading()
    writer.start()
    try:
        time.sleep(1.5)
        assert relay.terminate() == 0, relay.log()[-3000:]  # while events are flowing
        relay.start_leading()
        time.sleep(0.3)
        assert relay.terminate() == 0, relay.log()[-3000:]
        writer.join()
        relay.start_leading()
        wait_until(lambda: relay_env.outbox_count() == 0, timeout=60, message="the outbox to drain")
        assert relay.terminate() == 0
    finally:
        relay.kill()
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=6_000)
    assert check_delivery(relay_env, writer, records) == 0, relay.log()[-6000:]
    assert "received SIGTERM: stopping within" in relay.log()


def test_several_relays_killed_in_turn(relay_env, tmp_path):
    """Two relays; four times, the leader is SIGKILLed while the other stands by: the standby takes
    over, the killed one comes back as the standby, and no two ever lead at once."""
    create_topics(relay_env.bootstrap, [relay_env.topic()], partitions=3)
    writer = Writer(relay_env, [f"r{i}" for i in range(30)], total=8_000, batch=50, pause=0.01)
    relays = [RelayProcess(relay_env, tmp_path / "a"), RelayProcess(relay_env, tmp_path / "b")]
    for relay in relays:
        relay.log_dir.mkdir()
    leader, standby = relays[0].start_leading(), relays[1].start()
    writer.start()
    try:
        for _ in range(4):
            # The premise of each round: the other relay is up and standing by.
            wait_until(lambda s=standby: "standing by" in s.current_log(), message="the other relay to stand by")
            assert "leading the outbox" not in standby.current_log()  # one leader at a time
            leader.kill()
            wait_until(lambda s=standby: "leading the outbox" in s.current_log(), message="the standby to take over")
            leader.start()
            leader, standby = standby, leader
        writer.join()
        wait_until(lambda: relay_env.outbox_count() == 0, timeout=60, message="the outbox to drain")
    finally:
        for relay in relays:
            relay.kill()
    records = read_all(relay_env.bootstrap, [relay_env.topic()], expect=8_000)
    check_delivery(relay_env, writer, records)
    # The first leader, then one takeover per kill, and nothing else.
    assert sum(relay.log().count("leading the outbox") for relay in relays) == 5


@pytest.mark.skipif(
    os.environ.get("BRIDGE_TEST_BROKER") == "tansu", reason="Tansu's memory storage does not survive a restart"
)
def test_broker_restart_mid_stream(postgres_service, unique_name):
    kafka = KafkaServer.start()
    schema = unique_name("ob")
    with psycopg.connect(postgres_service.url, autocommit=True) as conn:
        migrate(conn, schema)
    env = Env(postgres_service.url, schema, "restart.", kafka.bootstrap_servers)
    try:
        create_topics(env.bootstrap, [env.topic()], partitions=3)
        writer = Writer(env, [f"b{i}" for i in range(30)], total=6_000, batch=50, pause=0.01)
        with relay_thread(env) as relay:
            writer.start()
            wait_until(lambda: relay.published > 500, message="first events")
            kafka.stop(remove=False)
            time.sleep(3)
            kafka.restart()
            writer.join()
            wait_until(lambda: env.outbox_count() == 0, timeout=120, message="the outbox to drain")
        records = read_all(env.bootstrap, [env.topic()], expect=6_000)
        check_delivery(env, writer, records)
    finally:
        kafka.stop()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_restart_mid_stream(kafka_service, unique_name, mode):
    """PostgreSQL restarted twice while a writer emits and a relay publishes: a clean restart
    (``fast``) or a crash (``immediate``: no checkpoint, crash recovery at start). With
    synchronous_commit on, no acknowledged commit is lost either way."""
    pg = PostgresServer.start()
    schema = unique_name("ob")
    prefix = unique_name("p") + "."
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn, schema)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        env = Env(pg.url, schema, prefix, kafka_service.bootstrap_servers)
        create_topics(env.bootstrap, [env.topic()], partitions=3)
        writer = Writer(env, [f"d{i}" for i in range(30)], total=6_000, batch=50, pause=0.03)
        with relay_thread(env) as relay:
            writer.start()
            wait_until(lambda: relay.published > 500, message="first events")
            assert writer.is_alive()  # the premise: the restarts happen while it writes
            pg.restart(mode=mode)
            time.sleep(1)
            pg.restart(mode=mode)
            writer.join(timeout=120)
            wait_until(lambda: env.outbox_count() == 0, timeout=120, message="the outbox to drain")
        records = read_all(env.bootstrap, [env.topic()], expect=len(writer.committed))
        check_delivery(env, writer, records)
        assert writer.outages >= 1  # the writer's session was cut, and it lived through it
        assert len(writer.committed) + len(writer.maybe) == 6_000
    finally:
        pg.stop()
