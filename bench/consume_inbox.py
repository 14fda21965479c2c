"""Consumer adapter throughput against raw consumption of the same topic, with a per-stage breakdown.

N envelopes of ``coach.assigned`` (with the headers the relay writes) are produced to a 6-partition
topic. The baseline, in the same run, is a bare confluent-kafka consumer reading the topic with the
canonical ``poll()`` loop (the ratio's denominator); ``consume()`` in batches of 500 is reported
too. Then the adapter (``bridge.wiring.build_consumer``: decode, validate, integrity checks, one
transaction per poll writing the inbox rows and running the handlers, offsets stored after the
commit), once per line:

- ``noop``: inbox + a handler that does nothing;
- ``bulk``: inbox + one row per event through the bulk path (``@app.rows``: COPY in the transaction);
- ``execute``: inbox + one ``INSERT`` per event from a per-event handler (pipeline mode);
- ``execute, 10% duplicates`` and ``bulk, 10% duplicates``: the same with every tenth event sent twice.

Then one instrumented run of the bulk line gives µs per event per stage (poll, parse, validate, the
rest of reading, inbox, handler, commit, the runner's own work), and a micro-benchmark gives the
whole per-record read (decode + validate + envelope + integrity) in µs.

Prints a table, then one JSON line: ``{"bench": "consume_inbox", "ratio": <bulk line>,
"ratio_noop": …, "decode_validate_us": …}``.

    python bench/consume_inbox.py [--events N] [--batch B]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import _common
import psycopg
from _services import services
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from pydantic import SecretStr

from bridge.config import BridgeSettings, ConsumerSettings, DatabaseSettings, KafkaSettings
from bridge.consumer import ConsumerApp, ConsumerRunner
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.ids import new_event_id
from bridge.kafka.records import Record
from bridge.outbox import migrate
from bridge.wiring import build_consumer, record_reader

TYPE = "coach.assigned"  # consumed by coaching
CONSUMER = "coaching"
CONTRACTS = Contracts.load()


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


def headers_of(event: Envelope) -> list[tuple[str, bytes]]:
    """The headers the relay writes (the consumer checks them against the envelope)."""
    return [
        ("event_id", event.event_id.encode()),
        ("event_type", event.event_type.encode()),
        ("schema_version", str(event.schema_version).encode()),
        ("producer", event.producer.encode()),
        ("tenant_id", event.tenant_id.encode()),
        ("content-type", b"application/json"),
    ]


def produce(bootstrap: str, topic: str, events: list[Envelope]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
    for e in events:
        while True:
            try:
                producer.produce(topic, key=e.subject.encode(), value=e.to_json(), headers=headers_of(e))
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
    assert start is not None
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def make_app(kind: str, schema: str) -> ConsumerApp:
    app = ConsumerApp(CONSUMER, contracts=CONTRACTS)
    insert = sql.SQL("INSERT INTO {}.assignments (event_id, coach_id, lesson_id) VALUES (%s, %s, %s)").format(
        sql.Identifier(schema)
    )
    if kind == "noop":

        @app.handler(TYPE)
        def nothing(event: Envelope, conn: psycopg.Connection[Any]) -> None:
            pass

    elif kind == "execute":

        @app.handler(TYPE)
        def assign(event: Envelope, conn: psycopg.Connection[Any]) -> None:
            conn.execute(insert, (event.event_id, event.payload["coach_id"], event.payload["lesson_id"]))

    else:

        @app.rows(TYPE, into=f"{schema}.assignments", columns=("event_id", "coach_id", "lesson_id"))
        def assignment(event: Envelope) -> tuple[str, str, str]:
            return (event.event_id, event.payload["coach_id"], event.payload["lesson_id"])

    for event_type in app.subscriptions:
        if event_type != TYPE:
            app.skip(event_type, reason="not in this benchmark")
    return app


def settings_for(url: str, bootstrap: str, schema: str, prefix: str, batch: int) -> BridgeSettings:
    return BridgeSettings(
        database=DatabaseSettings(url=SecretStr(url), schema_name=schema),
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        consumer=ConsumerSettings(batch_size=batch),
        topic_prefix=prefix,
    )


class Stages:
    """Seconds spent per stage, summed over the run (wrapped methods: only for the instrumented run)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: object, method: str, stage: str) -> None:
        original: Callable[..., Any] = getattr(obj, method)
        seconds = self.seconds
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] += clock() - began

        setattr(obj, method, timed)


def instrument(runner: ConsumerRunner) -> Stages:
    stages = Stages()
    reader = runner.reader
    stages.wrap(reader, "_decode", "parse")
    stages.wrap(reader.contracts, "validate_envelope", "validate")
    stages.wrap(reader, "read", "read")
    applier: Any = runner.applier
    stages.wrap(applier.inbox, "claim", "inbox")
    stages.wrap(applier, "_run_handlers", "handler")
    stages.wrap(applier, "_write_rows", "rows")
    stages.wrap(applier, "apply", "apply")
    stages.wrap(runner, "_handle", "handle")
    make_consumer = runner._clients.consumer

    def consumer(*args: Any, **kwargs: Any) -> Any:
        made = make_consumer(*args, **kwargs)
        stages.wrap(made, "consume", "poll")
        stages.wrap(made, "store_offsets", "offsets")
        return made

    runner._clients.consumer = consumer  # type: ignore[method-assign]
    return stages


def breakdown(stages: Stages, events: int) -> dict[str, float]:
    s = stages.seconds
    per = {
        "poll": s["poll"],
        "parse": s["parse"],
        "validate": s["validate"],
        "envelope+integrity": s["read"] - s["parse"] - s["validate"],
        "inbox": s["inbox"],
        "handler": s["handler"],
        "rows (COPY)": s["rows"],
        "commit": s["apply"] - s["inbox"] - s["handler"] - s["rows"],
        "offsets": s["offsets"],
        "runner": s["handle"] - s["read"] - s["apply"] - s["offsets"],
    }
    return {stage: seconds / events * 1e6 for stage, seconds in per.items()}


def run_adapter(
    url: str, bootstrap: str, kind: str, expected: int, batch: int, *, instrumented: bool = False
) -> tuple[float, list[float], ConsumerRunner, Stages | None, int]:
    """Consume ``expected`` records of a fresh topic; events/s from the first applied record."""
    run = uuid.uuid4().hex[:6]
    schema, prefix = f"bench_{run}", f"b{run}."
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schema)
        conn.execute(
            sql.SQL("CREATE TABLE {}.assignments (event_id text, coach_id text, lesson_id text)").format(
                sql.Identifier(schema)
            )
        )
    runner = build_consumer(make_app(kind, schema), settings_for(url, bootstrap, schema, prefix, batch))
    stages = instrument(runner) if instrumented else None
    latencies = _common.record_durations(runner, "_handle")
    with _topic(bootstrap, prefix, expected) as (topic, events):
        del topic
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        while runner.applied + runner.duplicates == 0:
            time.sleep(0.001)
        start = time.perf_counter()
        first = runner.applied + runner.duplicates
        while runner.applied + runner.duplicates < expected:
            time.sleep(0.002)
        rate = (expected - first) / (time.perf_counter() - start)
        runner.stop()
        thread.join(60)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}.assignments").format(sql.Identifier(schema))).fetchone()
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    written = rows[0] if rows else 0
    if kind != "noop" and written != events:
        raise SystemExit(f"{kind}: {written} rows written for {events} events")
    return rate, latencies, runner, stages, events


_PLAN: dict[str, list[Envelope]] = {}


@contextmanager
def _topic(bootstrap: str, prefix: str, expected: int) -> Iterator[tuple[str, int]]:
    """The run's topic, filled with the planned records (``_PLAN['records']``)."""
    topic = f"{prefix}{TYPE}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(60)
    time.sleep(0.5)
    records = _PLAN["records"]
    assert len(records) == expected
    produce(bootstrap, topic, records)
    try:
        yield topic, len({e.event_id for e in records})
    finally:
        admin.delete_topics([topic])


def read_us(events: list[Envelope]) -> float:
    """µs per record of the whole read: decode, validate, envelope, integrity checks."""
    reader = record_reader(BridgeSettings(topic_prefix="b."), CONTRACTS, consumer=CONSUMER)
    records = [
        Record(f"b.{TYPE}", 0, i, e.subject.encode(), e.to_json(), headers_of(e), 0) for i, e in enumerate(events)
    ]
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for record in records:
            reader.read(record)
        best = min(best, (time.perf_counter() - began) / len(records) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--lines", default="noop,bulk,execute,execute+dup,bulk+dup")
    parser.add_argument("--instrument", default="bulk", help="the line whose stages are measured")
    args = parser.parse_args()
    unique = make_events(args.events)
    with_dups = unique + unique[: args.events // 10]
    lines = args.lines.split(",")
    results: dict[str, dict[str, float]] = {}
    with services() as (url, bootstrap):
        _PLAN["records"] = unique
        raw = raw_consume_fresh(bootstrap, unique, batched=False)
        raw_batched = raw_consume_fresh(bootstrap, unique, batched=True)
        for line in lines:
            kind, _, dup = line.partition("+")
            _PLAN["records"] = with_dups if dup else unique
            rate, latencies, runner, _, _ = run_adapter(url, bootstrap, kind, len(_PLAN["records"]), args.batch)
            results[line] = {
                "rate": rate,
                "ratio": rate / raw,
                "p50_ms": _common.percentile(latencies, 0.5) * 1000,
                "p99_ms": _common.percentile(latencies, 0.99) * 1000,
                "duplicates": runner.duplicates,
            }
        _PLAN["records"] = unique
        _, _, _, stages, _ = run_adapter(url, bootstrap, args.instrument, len(unique), args.batch, instrumented=True)
    assert stages is not None
    per_stage = breakdown(stages, args.events)
    decode_validate = read_us(unique[:20_000])
    print(
        f"{args.events} events of {TYPE}, polls of up to {args.batch}; raw poll() {raw:.0f}/s, raw consume() "
        f"{raw_batched:.0f}/s"
    )
    print(f"{'line':28} {'events/s':>10} {'ratio':>7} {'batch p50 ms':>13} {'p99 ms':>8} {'dupes':>6}")
    for line, r in results.items():
        print(
            f"{line:28} {r['rate']:10.0f} {r['ratio']:7.3f} {r['p50_ms']:13.1f} {r['p99_ms']:8.1f} "
            f"{r['duplicates']:6.0f}"
        )
    print(f"µs per event per stage ({args.instrument} line, instrumented run: the wrappers add ~0.3 µs per call):")
    for stage, us in per_stage.items():
        print(f"  {stage:20} {us:7.2f}")
    print(f"decode + validate (whole read of one record): {decode_validate:.2f} µs")
    report: dict[str, object] = {
        "ratio": round(results["bulk"]["ratio"], 3) if "bulk" in results else None,
        "ratio_noop": round(results["noop"]["ratio"], 3) if "noop" in results else None,
    }
    for line, r in results.items():
        report[f"ratio_{line.replace('+dup', '_10pct_duplicates')}"] = round(r["ratio"], 3)
    report.update(
        {
            "raw_events_per_s": round(raw),
            "raw_batched_events_per_s": round(raw_batched),
            "batch_p50_ms": round(results.get("bulk", next(iter(results.values())))["p50_ms"], 1),
            "batch_p99_ms": round(results.get("bulk", next(iter(results.values())))["p99_ms"], 1),
            "stage_us": {k: round(v, 2) for k, v in per_stage.items()},
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "events": args.events,
            "decode_validate_us": round(decode_validate, 2),
        }
    )
    _common.report("consume_inbox", report)


def raw_consume_fresh(bootstrap: str, events: list[Envelope], *, batched: bool) -> float:
    prefix = f"r{uuid.uuid4().hex[:6]}."
    with _topic(bootstrap, prefix, len(events)) as (topic, _):
        return raw_consume(bootstrap, topic, len(events), batched=batched)


if __name__ == "__main__":
    main()
