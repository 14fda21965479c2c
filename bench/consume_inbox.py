"""Consumer adapter throughput (inbox + a handler writing one row) against raw consumption.

N envelopes are produced to a 6-partition topic. Baselines, in the same run: a bare confluent-kafka
consumer reading the same topic with the canonical poll() loop (the ratio's denominator), and with
consume() in batches of 500 (reported too). Then the adapter:
decode, validate, one transaction per poll writing the inbox rows and running a handler that
inserts one row per event, offsets stored after commit. Repeated with 10% duplicates.
ratio = adapter events/s / raw poll() events/s. Latency: time to apply one poll's batch (p50/p99).

Prints a table, then one JSON line: {"bench": "consume_inbox", "ratio": …}.

    python bench/consume_inbox.py [--events N] [--batch B]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from datetime import UTC, datetime

import _common
import psycopg
from _services import services
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from bridge.consumer import ConsumerApp, ConsumerRunner
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.ids import new_event_id
from bridge.outbox import migrate

TYPE = "coach.assigned"  # consumed by coaching


def make_events(n: int) -> list[Envelope]:
    now = datetime.now(UTC)
    return [
        Envelope(
            new_event_id(),
            TYPE,
            1,
            "delivery",
            "tenant-1",
            f"coa_{i % 500}",
            now,
            now,
            {"seq": i, "coach_id": f"coa_{i % 500}", "lesson_id": f"les_{i}", "note": "assigned by scheduler"},
        )
        for i in range(n)
    ]


def produce(bootstrap: str, topic: str, events: list[Envelope]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
    for e in events:
        while True:
            try:
                producer.produce(
                    topic,
                    key=e.subject.encode(),
                    value=e.to_json(),
                    headers=[("event_id", e.event_id.encode()), ("event_type", TYPE.encode())],
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def raw_consume(bootstrap: str, topic: str, n: int, *, batched: bool) -> float:
    """Raw consumption: the canonical poll() loop (one message per call), or consume() in batches."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen, start, size = 0, None, 0
    while seen < n:
        batch = consumer.consume(500, timeout=0.5) if batched else [m for m in [consumer.poll(0.5)] if m is not None]
        if batch and start is None:
            start = time.perf_counter()
        for message in batch:
            if message.error() is None:
                size += len(message.value())
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def run_adapter(
    url: str, bootstrap: str, schema: str, prefix: str, expected: int, batch: int
) -> tuple[float, list[float], ConsumerRunner]:
    app = ConsumerApp("coaching", contracts=Contracts.load())
    insert = sql.SQL("INSERT INTO {}.assignments (event_id, coach_id, lesson_id) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )

    @app.handler(TYPE)
    def assign(event, conn):
        conn.execute(insert, (event.event_id, event.payload["coach_id"], event.payload["lesson_id"]))

    runner = ConsumerRunner(
        app, url, {"bootstrap.servers": bootstrap}, topic_prefix=prefix, schema=schema, batch_size=batch
    )
    latencies = _common.record_durations(runner, "_handle")  # one poll's batch
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while runner.applied + runner.duplicates == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    first = runner.applied + runner.duplicates
    while runner.applied + runner.duplicates < expected:
        time.sleep(0.005)
    rate = (expected - first) / (time.perf_counter() - start)
    runner.stop()
    thread.join(60)
    return rate, latencies, runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    results = {}
    with services() as (url, bootstrap):
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for label, duplicate_share in (("unique", 0.0), ("10% duplicates", 0.1)):
            run = uuid.uuid4().hex[:6]
            schema, prefix = f"bench_{run}", f"b{run}."
            topic = f"{prefix}{TYPE}"
            admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(60)
            time.sleep(1)
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn, schema)
                conn.execute(
                    sql.SQL("CREATE TABLE {}.assignments (event_id text, coach_id text, lesson_id text)").format(
                        sql.Identifier(schema)
                    )
                )
            events = make_events(args.events)
            extra = events[: int(args.events * duplicate_share)]
            produce(bootstrap, topic, events + extra)
            total = len(events) + len(extra)
            raw_rate = raw_consume(bootstrap, topic, total, batched=False)
            raw_batched = raw_consume(bootstrap, topic, total, batched=True)
            rate, latencies, runner = run_adapter(url, bootstrap, schema, prefix, total, args.batch)
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.assignments").format(sql.Identifier(schema))
                ).fetchone()[0]
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                conn.commit()
            assert rows == args.events, (rows, args.events)
            latencies.sort()
            results[label] = {
                "raw": raw_rate,
                "raw_batched": raw_batched,
                "adapter": rate,
                "ratio": rate / raw_rate,
                "ratio_batched": rate / raw_batched,
                "duplicates": runner.duplicates,
                "p50_ms": latencies[len(latencies) // 2] * 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            }
    print(f"{args.events} events, polls of up to {args.batch}")
    print(
        f"{'':16} {'poll() ev/s':>11} {'consume() ev/s':>14} {'adapter ev/s':>13} {'ratio':>7} {'vs consume()':>12} "
        f"{'batch p50 ms':>13} {'p99 ms':>8} {'dupes':>7}"
    )
    for label, r in results.items():
        print(
            f"{label:16} {r['raw']:11.0f} {r['raw_batched']:14.0f} {r['adapter']:13.0f} {r['ratio']:7.3f} "
            f"{r['ratio_batched']:12.3f} {r['p50_ms']:13.1f} {r['p99_ms']:8.1f} {r['duplicates']:7}"
        )
    print("ratio: adapter / raw poll() loop; 'vs consume()': adapter / raw batched consume()")
    unique, dupes = results["unique"], results["10% duplicates"]
    _common.report(
        "consume_inbox",
        {
            "ratio": round(unique["ratio"], 3),
            "ratio_10pct_duplicates": round(dupes["ratio"], 3),
            "ratio_vs_batched_consume": round(unique["ratio_batched"], 3),
            "raw_batched_events_per_s": round(unique["raw_batched"]),
            "adapter_events_per_s": round(unique["adapter"]),
            "raw_events_per_s": round(unique["raw"]),
            "batch_p50_ms": round(unique["p50_ms"], 1),
            "batch_p99_ms": round(unique["p99_ms"], 1),
            "duplicates_absorbed": dupes["duplicates"],
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "events": args.events,
        },
    )


if __name__ == "__main__":
    main()
