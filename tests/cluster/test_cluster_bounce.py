"""On a three-node Kafka cluster: brokers hard-bounced (SIGKILL) under load, nothing lost.

Kafka's own system tests anchor this: a leader hard-bounced under load, then every acknowledged
message consumed. Here a writer emits at a steady rate into the outbox; a relay process publishes
into a topic replicated three times with ``min.insync.replicas=2``; a consumer group of two
processes applies every event through the inbox. Then:

1. the broker leading the most partitions is SIGKILLed, and started again later;
2. then another one (the one leading the most partitions by then);
3. then two of the three are down at once: no write can meet ``min.insync.replicas``, so the
   relay must wait (nothing lost, nothing quarantined) and resume when one comes back.

Checks: nothing lost, per-subject order kept on the topic and in the applied order, every event
applied exactly once, nothing dead-lettered or quarantined. The relay's stall per bounce is printed
(a figure, not an assertion: it depends on the machine).
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from support.cluster import (
    Bounce,
    SteadyWriter,
    check_topic_delivery,
    create_replicated_topics,
    outbox_counts,
    read_timed,
    scrape,
    stall_figures,
)
from support.consumer import APP_TYPE, ConsumerProcess, applied, create_applied_table, order_violations
from support.outbox import RelayProcess, wait_until

from bridge.devstack.cluster import KafkaCluster
from bridge.devstack.process import free_port
from bridge.topics.catalog import TopicSpec
from bridge.topics.naming import dlq_topic_name, replay_topic_name
from bridge.topics.provisioning import plan_topics

pytestmark = pytest.mark.cluster

PARTITIONS = 6
RATE = 200  # events per second into the outbox
HOLD = 10.0  # seconds a killed broker stays down
REPLICATED = {"min.insync.replicas": "2", "message.timestamp.type": "LogAppendTime"}


class MeteredRelay(RelayProcess):
    """The relay process, serving its metrics (delivery errors, quarantines)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.port = free_port()

    def command(self) -> list[str]:
        return [*super().command(), "--metrics-port", str(self.port)]


class MeteredConsumer(ConsumerProcess):
    """A consumer process of the group, serving its metrics (redeliveries the inbox absorbed)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.port = free_port()

    def command(self) -> list[str]:
        return [*super().command(), "--metrics-port", str(self.port)]


def most_leading(cluster: KafkaCluster, topics: list[str], among: set[int] | None = None) -> int:
    counts = cluster.leaders(topics)
    candidates = {node: n for node, n in counts.items() if among is None or node in among}
    return max(sorted(candidates), key=lambda node: candidates[node])


def all_alive(*processes) -> None:
    for process in processes:
        assert process.process is not None
        assert process.process.poll() is None, f"{process.name} exited:\n{process.log()[-4000:]}"


def test_brokers_hard_bounced_under_load_lose_nothing(kafka_cluster, cluster_env, tmp_path):
    cluster, env = kafka_cluster, cluster_env
    topic = env.topic(APP_TYPE)
    side = [dlq_topic_name(topic, "coaching"), replay_topic_name(env.prefix, "coaching")]
    create_replicated_topics(env.bootstrap, [topic], partitions=PARTITIONS, replication_factor=3, config=REPLICATED)
    create_replicated_topics(env.bootstrap, side, partitions=1, replication_factor=3, config=REPLICATED)
    create_applied_table(env)
    # The topic is what the catalog's default event class asks for on three brokers: a plan for it
    # (refusal of more replicas than brokers included) finds nothing to do.
    admin = env.clients().admin()
    try:
        spec = TopicSpec(PARTITIONS, 3, 2, 604_800_000, "delete")
        assert plan_topics(admin, {topic: spec}).empty
    finally:
        admin.close()
    raw = AdminClient({"bootstrap.servers": env.bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    assert raw.describe_configs([resource])[resource].result(timeout=30)["min.insync.replicas"].value == "2"

    for name in ("relay", "a", "b"):
        (tmp_path / name).mkdir()
    relay = MeteredRelay(env, tmp_path / "relay")
    relay.start_leading()
    consumers = [MeteredConsumer(env, tmp_path / "a"), MeteredConsumer(env, tmp_path / "b")]
    for consumer in consumers:
        consumer.start()
    writer = SteadyWriter(env, APP_TYPE, [f"coa_{i}" for i in range(60)], rate=RATE)
    bounces: list[Bounce] = []
    two_down: dict[str, float] = {}
    try:
        writer.start()
        wait_until(lambda: len(applied(env)) >= RATE * 3, timeout=60, message="the pipeline to flow")

        # 1 and 2: the broker leading the most partitions, SIGKILLed, back after HOLD seconds.
        for name in ("bounce 1", "bounce 2"):
            previous = bounces[-1].killed[0] if bounces else None
            among = {n.node_id for n in cluster.brokers} - ({previous} if previous else set())
            victim = most_leading(cluster, [topic], among)
            bounce = Bounce(name, [victim], killed_at=time.time())
            cluster.kill(victim)
            time.sleep(HOLD)
            all_alive(relay, *consumers)
            bounce.restarted_at = time.time()
            cluster.restart(victim)
            cluster.wait_in_sync()
            bounce.in_sync_at = time.time()
            bounces.append(bounce)
            time.sleep(3)

        # 3: two of three down. Nothing can meet min.insync.replicas=2: the relay must wait.
        first = most_leading(cluster, [topic])
        cluster.kill(first)
        wait_until(lambda: first not in cluster.registered_brokers(), timeout=60, message="the broker to be fenced")
        second = most_leading(cluster, [topic], {n.node_id for n in cluster.brokers} - {first})
        cluster.kill(second)
        two_down["down_at"] = time.time()
        time.sleep(2)
        waiting_before, quarantined = outbox_counts(env)
        assert quarantined == 0
        time.sleep(HOLD)
        all_alive(relay, *consumers)
        waiting_after, quarantined = outbox_counts(env)
        assert quarantined == 0, relay.log()[-4000:]  # an outage is never a reason to quarantine
        assert waiting_after > waiting_before  # nothing is acknowledged, so nothing leaves the outbox
        two_down["backlog"] = waiting_after
        two_down["back_at"] = time.time()
        cluster.restart(first)  # one comes back (the one down the longest, with the most to catch up)
        wait_until(lambda: outbox_counts(env)[0] < RATE, timeout=120, message="the relay to resume")
        two_down["resumed_at"] = time.time()
        cluster.restart(second)
        cluster.wait_in_sync()
        two_down["in_sync_at"] = time.time()
        time.sleep(3)

        writer.stop.set()
        writer.join(timeout=30)
        total = len(writer.committed)
        wait_until(lambda: outbox_counts(env) == (0, 0), timeout=120, message="the outbox to drain")
        wait_until(lambda: len(applied(env)) >= total, timeout=180, message=f"{total} applied events")
        time.sleep(2)  # anything applied twice would show now
        all_alive(relay, *consumers)
        absorbed = sum(scrape(c.port, "bridge_consumer_duplicates_total") for c in consumers)
        delivery_errors = scrape(relay.port, "bridge_relay_errors_total")
        assert relay.terminate() == 0, relay.log()[-4000:]
        for consumer in consumers:
            assert consumer.terminate() == 0, consumer.log()[-4000:]
    finally:
        writer.stop.set()
        relay.kill()
        for consumer in consumers:
            consumer.kill()

    records = read_timed(env.bootstrap, [topic], expect=total)
    lost, reordered, duplicates = check_topic_delivery(writer, records)
    rows = applied(env)
    applied_ids = [r[0] for r in rows]
    applied_twice = len(applied_ids) - len(set(applied_ids))
    figures: dict[str, object] = {
        "events": total,
        "bounces": len(bounces) + 1,
        "lost": lost,
        "reordered": reordered,
        "duplicates_on_topic": duplicates,
        "redeliveries_absorbed_by_inbox": int(absorbed),
        "relay_errors": int(delivery_errors),
        "applied_twice": applied_twice,
        "applied_out_of_order": len(order_violations(rows)),
        "dead_lettered": len(read_timed(env.bootstrap, [side[0]], expect=0, timeout=10, settle=1.0)),
        "quarantined": outbox_counts(env)[1],
    }
    for bounce in bounces:
        figures[f"{bounce.name}: node {bounce.killed[0]} killed"] = {
            "down_s": round(bounce.restarted_at - bounce.killed_at, 1),
            "back_in_sync_s": round(bounce.in_sync_at - bounce.restarted_at, 1),
            **stall_figures(records, bounce.killed_at - 0.5, bounce.in_sync_at + 2),
        }
    figures[f"two down: nodes {first} and {second}"] = {
        "both_down_s": round(two_down["back_at"] - two_down["down_at"], 1),
        "backlog_while_down": two_down["backlog"],
        "resumed_after_one_back_s": round(two_down["resumed_at"] - two_down["back_at"], 1),
        **stall_figures(records, two_down["down_at"], two_down["resumed_at"]),
    }
    print("\ncluster bounce figures: " + json.dumps(figures))

    assert lost == 0, f"{lost} committed events never reached the topic"
    assert reordered == 0, "per-subject order broken on the topic"
    assert sorted(applied_ids) == sorted(writer.committed), "applied set differs from the committed set"
    assert applied_twice == 0
    assert figures["applied_out_of_order"] == 0, order_violations(rows)[:10]
    assert figures["dead_lettered"] == 0
    assert figures["quarantined"] == 0
    assert not writer.maybe
    with psycopg.connect(env.database_url) as conn:  # the inbox holds each event once
        count = conn.execute(f'SELECT count(*) FROM "{env.schema}".inbox').fetchone()
    assert count == (total,)
