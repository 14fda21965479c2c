"""The relay against raw confluent-kafka produce of the same records, and its latency and memory.

Phases (one run, the services started as the tests start them):

1. **drain**: a backlog of N events (default 100,000; ~500-byte payloads, 1,000 subjects over 4
   types, 6 partitions each) emitted with ``emit``; then the raw baseline produces the identical
   records (same topic, key, value, headers) with the relay's producer settings and flushes; then
   the relay drains the outbox. ratio = relay events/s ÷ raw events/s.
2. **idle, then a burst**: the outbox is ``VACUUM ANALYZE``d while empty and the relay polls it idle
   (more than 20 reads), then a burst is emitted: its drain rate against the backlog's shows
   whether a read's cost depends on statistics or cached plans.
3. **live**: ``emit`` at R events/s (default 2,000) for S seconds while the relay runs and a plain
   consumer reads; latency = the consumer's receipt minus the event's ``recorded_at``.
4. **emit overhead**: a business INSERT alone vs the same INSERT plus one ``emit``, per committed
   transaction.
5. **memory**: ``bridge relay`` as its own process drains a backlog of M events (default
   1,000,000; ``--rss-events`` for quick runs); its resident memory is sampled throughout.

Prints a table, then one JSON line with "ratio", "events", "relay_e2e_p50_ms",
"relay_e2e_p99_ms", "peak_rss_mb" and the rest.

    python bench/relay.py [--events N] [--rate R] [--live-seconds S] [--rss-events M] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import _common
import psycopg
from _services import services
from confluent_kafka import Consumer, Producer
from psycopg import sql
from pydantic import SecretStr

from bridge.config import BridgeSettings, DatabaseSettings, KafkaSettings
from bridge.contracts import Contracts
from bridge.kafka.confluent import ConfluentClients
from bridge.kafka.records import NewTopic
from bridge.lifecycle import ServiceThread
from bridge.outbox import EventSpec, Outbox, OutboxRow, migrate
from bridge.relay import RecordEncoder
from bridge.wiring import build_relay

TYPES = ["lesson.scheduled", "lesson.attended", "lesson.cancelled", "coach.assigned"]  # no payload schema: any object
PRODUCER = "delivery"
SUBJECTS = 1000
PARTITIONS = 6


def payload(seq: int) -> dict[str, object]:
    return {"seq": seq, "room": "B12", "minutes": 45, "notes": "x" * 420}  # ~500 bytes of payload JSON


def specs(start: int, count: int) -> list[EventSpec]:
    return [
        EventSpec(TYPES[i % len(TYPES)], 1, f"les_{i % SUBJECTS}", "tenant-1", payload(i))
        for i in range(start, start + count)
    ]


def fill(url: str, outbox: Outbox, count: int, batch: int = 1000) -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, count, batch):
            outbox.emit_batch(conn, specs(start, min(batch, count - start)))
            conn.commit()


def fill_fast(url: str, schema: str, count: int) -> None:
    """A large backlog written by SQL (emit's validation would take minutes): rows the relay cannot
    tell from emitted ones, since it never reads their payload."""
    template = Outbox(Contracts.load(), PRODUCER, schema=schema).prepare(specs(0, 1))[1].values[0].decode()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.outbox (event_id, event_type, schema_version, subject, tenant_id, producer, value) "
                "SELECT 'evt_' || gen_random_uuid(), %s, 1, 'les_' || (g %% %s), 'tenant-1', %s, "
                "convert_to(%s, 'UTF8') FROM generate_series(1, %s) AS g"
            ).format(sql.Identifier(schema)),
            (TYPES[0], SUBJECTS, PRODUCER, template, count),
        )


def outbox_count(url: str, schema: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.outbox").format(sql.Identifier(schema))).fetchone()
        return int(row[0]) if row else 0


def raw_produce(clients: ConfluentClients, url: str, schema: str, prefix: str) -> tuple[float, list[float]]:
    """The baseline: the identical records, by a bare confluent-kafka producer with the relay's settings."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT id, event_id, event_type, schema_version, subject, tenant_id, producer, value, recorded_at "
                "FROM {}.outbox ORDER BY id"
            ).format(sql.Identifier(schema))
        ).fetchall()
    encoder = RecordEncoder(prefix)
    records = [encoder.encode(OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], {}, r[8], 0)) for r in rows]
    config = clients.producer_config("relay", client_id="bench-raw")
    config.pop("logger", None)
    config.pop("error_cb", None)
    producer = Producer(config)
    acknowledged: list[float] = []
    failures = [0]

    def delivered(err: object, _msg: object) -> None:
        if err is None:
            acknowledged.append(time.perf_counter())
        else:
            failures[0] += 1

    began = time.perf_counter()
    for record in records:
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, headers=record.headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(120)
    took = time.perf_counter() - began
    if failures[0] or len(acknowledged) != len(records):
        raise SystemExit(f"the raw baseline lost records: {failures[0]} failed, {len(acknowledged)} acknowledged")
    return len(records) / took, acknowledged


def drain(relay_published: callable, target: int, timeout: float = 600) -> float:
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    while relay_published() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the relay published {relay_published()} of {target} in {timeout} s")
        time.sleep(0.002)
    return time.perf_counter() - began


def live(url: str, outbox: Outbox, bootstrap: str, topics: list[str], rate: int, seconds: float) -> list[float]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe(topics)
    while not consumer.assignment():
        consumer.poll(0.1)
    latencies: list[float] = []
    stop = threading.Event()
    expected = int(rate * seconds)

    def read() -> None:
        while not stop.is_set():
            message = consumer.poll(0.05)
            if message is None or message.error():
                continue
            received = datetime.now(UTC)
            recorded = datetime.fromisoformat(json.loads(message.value())["recorded_at"])
            latencies.append((received - recorded).total_seconds())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ticks = int(seconds * 100)
    per_tick = max(1, rate // 100)
    with psycopg.connect(url) as conn:
        began = time.perf_counter()
        for tick in range(ticks):
            outbox.emit_batch(conn, specs(10_000_000 + tick * per_tick, per_tick))
            conn.commit()
            time.sleep(max(0.0, began + (tick + 1) / 100 - time.perf_counter()))
    deadline = time.monotonic() + 60
    while len(latencies) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    consumer.close()
    return latencies


def emit_overhead(url: str, outbox: Outbox, schema: str, count: int = 2000) -> float:
    """Time per committed transaction: INSERT + emit ÷ INSERT alone."""
    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {}.business (id bigserial PRIMARY KEY, note text)").format(
                sql.Identifier(schema)
            )
        )
        conn.commit()
        insert = sql.SQL("INSERT INTO {}.business (note) VALUES (%s)").format(sql.Identifier(schema))
        timings = {}
        for with_emit in (False, True, False, True):  # alternated, so warm-up favours neither
            began = time.perf_counter()
            for i in range(count):
                conn.execute(insert, ("an order",))
                if with_emit:
                    outbox.emit(conn, TYPES[0], 1, f"les_{i % SUBJECTS}", "tenant-1", payload(i))
                conn.commit()
            timings[with_emit] = time.perf_counter() - began
    return timings[True] / timings[False]


def rss_drain(url: str, schema: str, bootstrap: str, prefix: str, count: int) -> dict[str, float]:
    """``bridge relay`` as its own process drains ``count`` events; sample its resident memory."""
    fill_fast(url, schema, count)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environ |= {
        "BRIDGE_DATABASE__URL": url,
        "BRIDGE_DATABASE__SCHEMA_NAME": schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "BRIDGE_TOPIC_PREFIX": prefix,
    }
    process = subprocess.Popen([sys.executable, "-m", "bridge", "relay", "--log-level", "WARNING"], env=environ)
    samples: list[tuple[float, float]] = []
    began = time.perf_counter()
    try:
        while True:
            samples.append((time.perf_counter() - began, _rss_mb(process.pid)))
            if len(samples) % 8 == 0 and outbox_count(url, schema) == 0:
                break
            if time.perf_counter() - began > 1800:
                raise RuntimeError("the 1M drain took more than 30 minutes")
            time.sleep(0.25)
        took = time.perf_counter() - began
        peak = _hwm_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    quarter = [samples[min(len(samples) - 1, int(len(samples) * q))][1] for q in (0.25, 0.5, 0.75, 1.0)]
    return {
        "peak_rss_mb": round(peak, 1),
        "rss_quartiles_mb": [round(q, 1) for q in quarter],
        "rss_events": count,
        "rss_drain_events_per_s": round(count / took),
    }


def _rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS:") / 1024


def _hwm_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM:") / 1024


def _status_kb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return float(line.split()[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=2_000, help="events/s emitted in the live phase")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--rss-events", type=int, default=1_000_000)
    parser.add_argument("--profile", help="write a cProfile of the relay's drain to this file")
    args = parser.parse_args()

    with services() as (url, bootstrap):
        run = uuid.uuid4().hex[:6]
        schema, prefix = f"bench_{run}", f"bench{run}."
        settings = BridgeSettings(
            database=DatabaseSettings(url=SecretStr(url), schema_name=schema),
            kafka=KafkaSettings(bootstrap_servers=bootstrap),
            topic_prefix=prefix,
        )
        clients = ConfluentClients(settings)
        topics = [f"{prefix}{t}" for t in TYPES]
        admin = clients.admin()
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics], 60)
        admin.close()
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        outbox = Outbox(Contracts.load(), PRODUCER, schema=schema)

        fill(url, outbox, args.events)
        raw_rate, _ = raw_produce(clients, url, schema, prefix)

        relay = build_relay(settings, clients=clients)
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            relay_run = relay.run

            def profiled() -> None:
                profiler.runcall(relay_run)

            relay.run = profiled  # type: ignore[method-assign]  # the benchmark profiles the relay's own thread
        thread = ServiceThread(relay).start()
        took = drain(lambda: relay.published, args.events)
        relay_rate = args.events / took
        if profiler is not None:
            thread.stop(timeout=120)
            profiler.dump_stats(args.profile)
            relay = build_relay(settings, clients=clients)
            thread = ServiceThread(relay).start()

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM ANALYZE {}.outbox").format(sql.Identifier(schema)))
        time.sleep(3.0)  # idle reads (more than 20 at the idle interval) of an outbox analysed while empty
        before = relay.published
        began = time.perf_counter()
        fill_fast(url, schema, args.burst)  # one statement: the whole burst commits at once
        drain(lambda: relay.published - before, args.burst)
        burst_took = time.perf_counter() - began  # from the insert (an emit's commit) to the last publish
        burst_rate = args.burst / burst_took

        latencies = live(url, outbox, bootstrap, topics, args.rate, args.live_seconds)
        overhead = emit_overhead(url, outbox, schema)
        thread.stop(timeout=120)

        memory = rss_drain(url, schema, bootstrap, prefix, args.rss_events) if args.rss_events else {}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    p50, p99 = _common.percentile(latencies, 0.5) * 1000, _common.percentile(latencies, 0.99) * 1000
    print(f"{args.events} events drained; burst of {args.burst} after idle; live {len(latencies)} at {args.rate}/s")
    print(f"{'':42} {'events/s':>10}")
    print(f"{'raw confluent-kafka produce (same records)':42} {raw_rate:10.0f}")
    print(f"{'relay drain (read, produce, ack, delete)':42} {relay_rate:10.0f}   ratio {relay_rate / raw_rate:.2f}")
    print(
        f"{'relay burst after idle + VACUUM ANALYZE':42} {burst_rate:10.0f}   "
        f"{burst_rate / relay_rate:.2f} of the drain"
    )
    print(f"commit → consumer at {args.rate}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"business INSERT + emit ÷ INSERT alone: {overhead:.2f}")
    if memory:
        print(
            f"bridge relay draining {memory['rss_events']}: peak RSS {memory['peak_rss_mb']} MB, "
            f"quartiles {memory['rss_quartiles_mb']} MB, {memory['rss_drain_events_per_s']} events/s"
        )
    _common.report(
        "relay",
        {
            "ratio": round(relay_rate / raw_rate, 3),
            "events": args.events,
            "relay_events_per_s": round(relay_rate),
            "raw_events_per_s": round(raw_rate),
            "burst_events_per_s": round(burst_rate),
            "relay_e2e_p50_ms": round(p50, 1),
            "relay_e2e_p99_ms": round(p99, 1),
            "live_events": len(latencies),
            "emit_overhead_ratio": round(overhead, 2),
            "bench_peak_rss_mb": round(_common.peak_rss_mb(), 1),
            **memory,
        },
    )


if __name__ == "__main__":
    main()
