"""From the producer's commit to the effect committed in the consumer's database, per event.

One run: the services are started as the tests start them (PostgreSQL with
``track_commit_timestamp=on``, so both commit times come from the database itself); ``bridge relay``
and a consumer group of two ``bridge consume`` processes run as their own processes with their
default settings; their handler writes one row per event. This process emits, in one
transaction every 10 ms (a business row per event and ``emit_batch``), at R events/s for S
seconds, then at a quiet 200 events/s.

Per event: latency = the handler row's commit time minus the emitting transaction's commit time.
Stages: outbox → Kafka (the record's timestamp, set when the relay produces it), Kafka → consumer
receipt (the handler is called), receipt → commit (the rest of the batch, the inbox, the commit).

Prints a table, then one JSON line with "p50_ms", "p95_ms", "p99_ms", "max_ms", "quiet_p50_ms",
the stage medians and the processes' peak memory.

    python bench/e2e.py [--rate 2000] [--seconds 20] [--quiet-rate 200] [--quiet-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import psycopg
from _e2e_app import CONSUMER, EVENT_TYPE
from _services import services
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from bridge.consumer import ConsumerApp
from bridge.contracts import Contracts
from bridge.outbox import EventSpec, Outbox, migrate
from bridge.topics.naming import dlq_topic_name, replay_topic_name

PRODUCER = "delivery"
SUBJECTS = 1000
PARTITIONS = 12
BENCH = Path(__file__).resolve().parent


class Pipeline:
    """The relay and the consumer group as processes, on one schema and topic prefix."""

    def __init__(self, url: str, bootstrap: str) -> None:
        run = uuid.uuid4().hex[:6]
        self.url, self.bootstrap = url, bootstrap
        self.schema, self.prefix = f"e2e_{run}", f"e2e{run}."
        self.topic = f"{self.prefix}{EVENT_TYPE}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"bridge-e2e-{run}"
        self.logs.mkdir(parents=True, exist_ok=True)

    def prepare(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            migrate(conn, self.schema)
            for statement in (
                "CREATE TABLE {}.writes (event_id text PRIMARY KEY, phase text NOT NULL)",
                "CREATE TABLE {}.applied (event_id text NOT NULL, received_at timestamptz NOT NULL, member int)",
            ):
                conn.execute(sql.SQL(statement).format(sql.Identifier(self.schema)))
        subscribed = [f"{self.prefix}{t}" for t in ConsumerApp(CONSUMER).subscriptions]
        topics = [NewTopic(t, num_partitions=PARTITIONS if t == self.topic else 1) for t in subscribed]
        topics += [NewTopic(dlq_topic_name(t, CONSUMER), num_partitions=1) for t in subscribed]
        topics.append(NewTopic(replay_topic_name(self.prefix, CONSUMER), num_partitions=1))
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics(topics, operation_timeout=30).values():
            future.result(timeout=60)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        return env | {
            "BRIDGE_DATABASE__URL": self.url,
            "BRIDGE_DATABASE__SCHEMA_NAME": self.schema,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "BRIDGE_TOPIC_PREFIX": self.prefix,
            "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH", "")) if p),
        }

    def start(self, consumers: int) -> None:
        argv = {"relay": ["relay"]} | {f"consumer_{i}": ["consume", "_e2e_app:app"] for i in range(1, consumers + 1)}
        for name, args in argv.items():
            with open(self.logs / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "bridge", *args, "--log-level", "WARNING"],
                    env=self.environment(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def warm_up(self, members: int, timeout: float = 120) -> None:
        """Emit a trickle until every member of the group has applied events (the group settled,
        connections and caches warm), then let it drain."""
        query = sql.SQL("SELECT count(DISTINCT member) FROM {}.applied").format(sql.Identifier(self.schema))
        deadline = time.monotonic() + timeout
        emitted = 0
        while time.monotonic() < deadline:
            emitted += self.emit("warmup", 100, 1)[0]
            self.check_alive()
            row = self.query(query, ())[0]
            if row[0] >= members:
                self.wait_applied("warmup", emitted)
                return
        raise SystemExit(f"the consumer group did not settle with {members} members in {timeout} s")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited ({process.returncode}): see {self.logs / (name + '.log')}")

    def peak_rss_mb(self) -> dict[str, float]:
        peaks = {}
        for name, process in self.processes.items():
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peaks[name] = round(float(line.split()[1]) / 1024, 1)
        return peaks

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    def emit(self, phase: str, rate: float, seconds: float) -> tuple[int, float]:
        """Emit at ``rate`` for ``seconds``: every 10 ms one transaction with the events due (a
        business row per event and ``emit_batch``), as a busy service does; return (events, rate)."""
        outbox = Outbox(Contracts.load(), PRODUCER, schema=self.schema)
        write = sql.SQL("INSERT INTO {}.writes (event_id, phase) VALUES (%s, %s)").format(sql.Identifier(self.schema))
        total = int(rate * seconds)
        emitted = 0
        with psycopg.connect(self.url) as conn:
            began = time.monotonic()
            while emitted < total:
                due = min(total, int((time.monotonic() - began) * rate) + 1)
                if due > emitted:
                    specs = [
                        EventSpec(EVENT_TYPE, 1, f"coa_{n % SUBJECTS}", "tenant-1", {"seq": n})
                        for n in range(emitted, due)
                    ]
                    envelopes = outbox.emit_batch(conn, specs)
                    with conn.cursor() as cursor:
                        cursor.executemany(write, [(e.event_id, phase) for e in envelopes])
                    conn.commit()
                    emitted = due
                time.sleep(max(0.0, began + emitted / rate - time.monotonic()) if rate < 100 else 0.01)
            took = time.monotonic() - began
        return total, total / took

    def wait_applied(self, phase: str, count: int, timeout: float = 180) -> None:
        query = sql.SQL(
            "SELECT count(*) FROM {0}.applied a JOIN {0}.writes w USING (event_id) WHERE w.phase = %s"
        ).format(sql.Identifier(self.schema))
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(query, (phase,)).fetchone()
                if row and row[0] >= count:
                    return
                self.check_alive()
                time.sleep(0.2)
        raise SystemExit(f"{phase}: {count} events were not all applied in {timeout} s")

    def kafka_timestamps(self, count: int, timeout: float = 60) -> dict[str, float]:
        """event id → the record's timestamp (seconds), for every record on the topic."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"e2e-reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.topic])
        stamps: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(stamps) < count and time.monotonic() < deadline:
                for message in consumer.consume(1000, 0.5):
                    if message.error():
                        continue
                    headers = dict(message.headers() or [])
                    stamps[headers["event_id"].decode()] = message.timestamp()[1] / 1000
        finally:
            consumer.close()
        return stamps

    def latencies(self, phase: str, stamps: dict[str, float]) -> dict[str, list[float]]:
        """Per event, in ms: total and each stage."""
        rows = self.query(
            sql.SQL(
                "SELECT w.event_id, extract(epoch FROM pg_xact_commit_timestamp(w.xmin)), "
                "extract(epoch FROM a.received_at), extract(epoch FROM pg_xact_commit_timestamp(a.xmin)) "
                "FROM {0}.writes w JOIN {0}.applied a USING (event_id) WHERE w.phase = %s"
            ).format(sql.Identifier(self.schema)),
            (phase,),
        )
        stages: dict[str, list[float]] = {
            "total": [],
            "outbox_to_kafka": [],
            "kafka_to_receipt": [],
            "receipt_to_commit": [],
        }
        for event_id, committed, received, applied in rows:
            produced = stamps.get(event_id)
            stages["total"].append((float(applied) - float(committed)) * 1000)
            if produced is not None:
                stages["outbox_to_kafka"].append((produced - float(committed)) * 1000)
                stages["kafka_to_receipt"].append((float(received) - produced) * 1000)
            stages["receipt_to_commit"].append((float(applied) - float(received)) * 1000)
        return stages

    def query(self, statement: sql.Composed, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(statement, params).fetchall()


def summary(stages: dict[str, list[float]]) -> dict[str, float]:
    total = stages["total"]
    figures = {
        "p50_ms": _common.percentile(total, 0.5),
        "p95_ms": _common.percentile(total, 0.95),
        "p99_ms": _common.percentile(total, 0.99),
        "max_ms": max(total, default=float("nan")),
    }
    for stage in ("outbox_to_kafka", "kafka_to_receipt", "receipt_to_commit"):
        figures[f"{stage}_p50_ms"] = _common.percentile(stages[stage], 0.5)
        figures[f"{stage}_p99_ms"] = _common.percentile(stages[stage], 0.99)
    return {k: round(v, 1) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--quiet-rate", type=float, default=200)
    parser.add_argument("--quiet-seconds", type=float, default=10)
    parser.add_argument("--consumers", type=int, default=2)
    args = parser.parse_args()

    with services(commit_timestamps=True) as (url, bootstrap):
        pipeline = Pipeline(url, bootstrap)
        pipeline.prepare()
        try:
            pipeline.start(args.consumers)  # inside: a process that fails to start must not outlive the run
            pipeline.warm_up(args.consumers)
            results: dict[str, Any] = {}
            for phase, rate, seconds in (
                ("load", args.rate, args.seconds),
                ("quiet", args.quiet_rate, args.quiet_seconds),
            ):
                count, achieved = pipeline.emit(phase, rate, seconds)
                pipeline.wait_applied(phase, count)
                results[phase] = {"events": count, "emitted_per_s": round(achieved)}
            written = pipeline.query(
                sql.SQL("SELECT count(*) FROM {}.writes").format(sql.Identifier(pipeline.schema)), ()
            )
            stamps = pipeline.kafka_timestamps(int(written[0][0]))
            for phase in results:
                results[phase] |= summary(pipeline.latencies(phase, stamps))
            memory = pipeline.peak_rss_mb()
        finally:
            pipeline.stop()

    print(f"{'commit → applied (ms)':<26}{'events':>8}{'per s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
    for phase, r in results.items():
        print(
            f"{phase:<26}{r['events']:>8}{r['emitted_per_s']:>8}{r['p50_ms']:>8}{r['p95_ms']:>8}{r['p99_ms']:>8}"
            f"{r['max_ms']:>8}"
        )
    print(f"{'stage p50 / p99 (ms)':<26}{'load':>16}{'quiet':>16}")
    for stage in ("outbox_to_kafka", "kafka_to_receipt", "receipt_to_commit"):
        cells = "".join(f"{r[stage + '_p50_ms']:>8}{r[stage + '_p99_ms']:>8}" for r in results.values())
        print(f"{stage:<26}{cells}")
    print(f"peak RSS (MB): {memory}")
    load, quiet = results["load"], results["quiet"]
    _common.report(
        "e2e",
        {
            "rate": args.rate,
            "events": load["events"],
            "emitted_per_s": load["emitted_per_s"],
            "p50_ms": load["p50_ms"],
            "p95_ms": load["p95_ms"],
            "p99_ms": load["p99_ms"],
            "max_ms": load["max_ms"],
            "quiet_p50_ms": quiet["p50_ms"],
            "quiet_p99_ms": quiet["p99_ms"],
            "stages_p50_ms": {
                s: load[f"{s}_p50_ms"] for s in ("outbox_to_kafka", "kafka_to_receipt", "receipt_to_commit")
            },
            "quiet_stages_p50_ms": {
                s: quiet[f"{s}_p50_ms"] for s in ("outbox_to_kafka", "kafka_to_receipt", "receipt_to_commit")
            },
            "peak_rss_mb": memory,
        },
    )


if __name__ == "__main__":
    main()
