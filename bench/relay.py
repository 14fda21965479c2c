"""Relay throughput and latency against raw confluent-kafka produce of the same records.

1. Fill an outbox with N events (``emit_batch``), then time the relay draining it to Kafka
   (read, produce, acknowledge, delete). Baseline, in the same run: a bare idempotent
   confluent-kafka producer (acks=all, the same linger and compression) producing the same
   key/value/header records and flushing. ratio = relay events/s / raw events/s.
2. Live: emit at a steady rate while the relay runs and a consumer reads; latency is from the
   outbox write (recorded_at) to the consumer receiving the record. The baseline latency is the raw
   producer's produce-to-acknowledgement time.

Prints a table, then one JSON line: {"bench": "relay", "ratio": …}.

    python bench/relay.py [--events N] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from datetime import UTC, datetime

import _common
import psycopg
from _services import services
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.contracts import Contracts
from bridge.envelope import parse_timestamp
from bridge.outbox import EventSpec, Outbox, OutboxStore, migrate
from bridge.relay import Relay, RelayOptions, producer_config

TYPE = "lesson.scheduled"


def fill(url: str, schema: str, outbox: Outbox, n: int, subjects: int = 200) -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, n, 1000):
            specs = [
                EventSpec(
                    TYPE,
                    1,
                    f"les_{(start + i) % subjects}",
                    "tenant-1",
                    {"seq": start + i, "room": "B12", "minutes": 45},
                )
                for i in range(min(1000, n - start))
            ]
            outbox.emit_batch(conn, specs)
            conn.commit()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=2_000, help="events/s emitted in the live phase")
    parser.add_argument("--live-seconds", type=float, default=5.0)
    args = parser.parse_args()

    with services() as (url, bootstrap):
        run = uuid.uuid4().hex[:6]
        schema, prefix = f"bench_{run}", f"bench{run}."
        topic = f"{prefix}{TYPE}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 6, 1), NewTopic(f"{prefix}raw", 6, 1)])[topic].result(60)
        time.sleep(1)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        outbox = Outbox(Contracts.load(), "delivery", schema=schema)
        options = RelayOptions(schema=schema, topic_prefix=prefix, idle_interval=0.01)

        # --- baseline: raw produce of the same records ------------------------------------------
        fill(url, schema, outbox, args.events)
        with psycopg.connect(url, autocommit=True) as conn:
            records = [(r.subject.encode(), r.value, r.event_id) for r in OutboxStore(conn, schema).fetch(args.events)]
        raw_config = producer_config({"bootstrap.servers": bootstrap}, options)
        raw = Producer(raw_config)
        raw.produce(f"{prefix}raw", b"warm-up")
        raw.flush(30)
        latencies: list[float] = []
        start = time.perf_counter()
        for key, value, event_id in records:
            sent = time.perf_counter()
            while True:
                try:
                    raw.produce(
                        f"{prefix}raw",
                        key=key,
                        value=value,
                        headers=[
                            ("event_id", event_id.encode()),
                            ("event_type", TYPE.encode()),
                            ("content-type", b"application/json"),
                        ],
                        on_delivery=lambda err, msg, s=sent: latencies.append(time.perf_counter() - s),
                    )
                    break
                except BufferError:
                    raw.poll(0.01)
            raw.poll(0)
        raw.flush(60)
        raw_rate = len(records) / (time.perf_counter() - start)

        # --- relay drains the same outbox ---------------------------------------------------------
        relay = Relay(url, {"bootstrap.servers": bootstrap}, options)
        thread = threading.Thread(target=relay.run, daemon=True)
        start = time.perf_counter()
        thread.start()
        while relay.published < args.events:
            time.sleep(0.005)
        relay_rate = args.events / (time.perf_counter() - start)

        # --- live: steady emits, relay running, consumer measuring end-to-end ---------------------
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{run}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.subscribe([topic])
        while not consumer.assignment():
            consumer.poll(0.1)
        end_to_end: list[float] = []
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                for message in consumer.consume(500, timeout=0.05):
                    if message.error():
                        continue
                    recorded = parse_timestamp(json.loads(message.value())["recorded_at"])
                    end_to_end.append((datetime.now(UTC) - recorded).total_seconds())

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        live_total = int(args.rate * args.live_seconds)
        per_tick = max(1, args.rate // 100)
        with psycopg.connect(url) as conn:
            begin = time.perf_counter()
            for tick in range(live_total // per_tick):
                outbox.emit_batch(
                    conn, [EventSpec(TYPE, 1, f"live_{i % 50}", "t", {"seq": i}) for i in range(per_tick)]
                )
                conn.commit()
                time.sleep(max(0.0, begin + (tick + 1) / 100 - time.perf_counter()))
        deadline = time.monotonic() + 30
        while len(end_to_end) < live_total and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        reader.join()
        consumer.close()
        relay.stop()
        thread.join(timeout=60)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    rows = [
        ("raw confluent-kafka produce", raw_rate, percentile(latencies, 0.5), percentile(latencies, 0.99)),
        ("relay (outbox -> Kafka, delete)", relay_rate, percentile(end_to_end, 0.5), percentile(end_to_end, 0.99)),
    ]
    print(f"{args.events} events drained; live phase {live_total} events at {args.rate}/s")
    print(f"{'':34} {'events/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for name, rate, p50, p99 in rows:
        print(f"{name:34} {rate:10.0f} {p50 * 1000:9.1f} {p99 * 1000:9.1f}")
    print("(raw latency: produce -> ack; relay latency: outbox write -> consumer, at the live rate)")
    _common.report(
        "relay",
        {
            "ratio": round(relay_rate / raw_rate, 3),
            "relay_events_per_s": round(relay_rate),
            "raw_events_per_s": round(raw_rate),
            "relay_e2e_p50_ms": round(percentile(end_to_end, 0.5) * 1000, 1),
            "relay_e2e_p99_ms": round(percentile(end_to_end, 0.99) * 1000, 1),
            "raw_ack_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "raw_ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "live_events": len(end_to_end),
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "events": args.events,
        },
    )


if __name__ == "__main__":
    main()
