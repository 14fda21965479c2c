"""``bridge demo``: the main job end to end on a throwaway local stack.

PostgreSQL and Tansu start in a temporary directory (no Docker, no Java); every domain gets its own
schema (outbox, inbox), the topics are applied from the catalog, and then: a generator emits a
realistic stream of every registered event type across tenants and subjects (payloads valid per
schema) through each producer's outbox; one relay per producing domain publishes; one consumer
per domain applies what the registry gives it; the warehouse sink lands everything. A few
poisonous records and redelivered duplicates are mixed in, to show the DLQ and the inbox at work.
Live progress, then a summary; everything is stopped and deleted at the end.
"""

from __future__ import annotations

import gc
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bridge.consumer import ConsumerApp, ConsumerRunner, ErrorPolicy
from bridge.contracts import CONSUMER_NAMES, WAREHOUSE, Contracts
from bridge.devstack.stack import DevStack
from bridge.fakes import PayloadFaker
from bridge.ids import new_id
from bridge.outbox import EventSpec, Outbox, migrate
from bridge.relay import Relay, RelayOptions
from bridge.sinks import warehouse_app
from bridge.topics import Catalog, desired_topics, topic_name
from bridge.topics.provisioning import apply_plan, plan_topics

__all__ = ["DemoResult", "run_demo"]

PREFIX = "sguild."
TENANTS = ["acme-music", "harbor-arts", "north-studio"]


@dataclass
class DemoResult:
    emitted: int = 0
    published: int = 0
    expected: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    expected_dlq: int = 0
    dlq_reasons: Counter = field(default_factory=Counter)
    warehouse_rows: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    complete: bool = False


def _schema(consumer: str) -> str:
    return "demo_" + consumer.replace("-", "_")


def run_demo(events: int = 1500, *, seed: int = 7, console: Console | None = None, timeout: float = 180,
             broker: str | None = None) -> DemoResult:
    """Run the whole pipeline on a fresh local stack and tear it down. Returns what happened."""
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    workdir.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root: it must get in
    stack = DevStack(workdir / "stack", env_file=None)
    result = DemoResult()
    workers: list[tuple[object, threading.Thread]] = []
    try:
        with console.status("starting PostgreSQL and the broker…"):
            state, _ = stack.up(broker)
        console.print(f"[green]✓[/] PostgreSQL {state.database_url}  ·  {state.broker} {state.bootstrap_servers}")
        contracts = Contracts.load()
        registry = contracts.registry
        kafka = {"bootstrap.servers": state.bootstrap_servers}
        domains = sorted(CONSUMER_NAMES)
        with psycopg.connect(state.database_url, autocommit=True) as conn:
            for name in domains:
                migrate(conn, _schema(name))
                conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.effects (event_id text, event_type text)").format(
                    sql.Identifier(_schema(name))))
        console.print(f"[green]✓[/] migrated {len(domains)} schemas (outbox, inbox, warehouse)")
        admin = AdminClient(kafka)
        wanted = {t: replace(s, partitions=min(s.partitions, 3)) for t, s in desired_topics(Catalog.load(), registry, PREFIX).items()}
        apply_plan(admin, plan_topics(admin, wanted))
        del admin
        console.print(f"[green]✓[/] applied {len(wanted)} topics (event types and DLQs)")

        runners = _start_consumers(contracts, state.database_url, kafka, workers)
        relays = _start_relays(registry, state.database_url, kafka, workers)
        console.print(f"[green]✓[/] {len(relays)} relays, {len(runners)} consumers and the warehouse sink running")

        with console.status("waiting for the consumer groups to settle…"):
            settle = time.monotonic() + 60
            while time.monotonic() < settle and not all(r.assigned for r in runners.values()):
                time.sleep(0.2)
        plan = _generate(contracts, registry, events, seed)
        result.expected = Counter()
        for spec, _producer in plan:
            for consumer in registry.events[spec.event_type].consumers:
                result.expected[consumer] += 1
        emitted_json = _emit(state.database_url, plan, contracts, result)
        result.expected_dlq = _inject_trouble(registry, kafka, emitted_json, result, seed)

        deadline = time.monotonic() + timeout
        with psycopg.connect(state.database_url, autocommit=True) as monitor, \
                Live(_progress(result, relays, runners), console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                _collect(result, relays, runners, monitor)
                live.update(_progress(result, relays, runners))
                if _done(result):
                    result.complete = True
                    break
                time.sleep(0.25)
            _latency(result, monitor)
        console.print(_summary(result))
        if not result.complete:
            console.print("[bold red]the demo did not finish in time[/]")
        return result
    finally:
        for worker, _thread in workers:
            worker.stop()
        for _worker, thread in workers:
            thread.join(timeout=60)
        # Drop every Kafka client before the broker goes, so none logs the broker's departure.
        workers.clear()
        gc.collect()
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)


def _start_consumers(contracts: Contracts, url: str, kafka: dict, workers: list) -> dict[str, ConsumerRunner]:
    runners = {}
    policy = ErrorPolicy(backoff_initial=0.2, backoff_max=2.0)
    for name in sorted(CONSUMER_NAMES - {WAREHOUSE}):
        app = ConsumerApp(name, contracts=contracts, policy=policy)
        insert = sql.SQL("INSERT INTO {}.effects (event_id, event_type) VALUES (%s, %s)").format(sql.Identifier(_schema(name)))
        for event_type in app.subscriptions:
            app.handler(event_type)(lambda event, conn, insert=insert: conn.execute(insert, (event.event_id, event.event_type)))
        runners[name] = _run(ConsumerRunner(app, url, kafka, topic_prefix=PREFIX, schema=_schema(name), batch_size=200,
                                            consumer_overrides={"session.timeout.ms": 6000}), workers)
    sink = warehouse_app(contracts=contracts, schema=_schema(WAREHOUSE), policy=policy)
    runners[WAREHOUSE] = _run(ConsumerRunner(sink, url, kafka, topic_prefix=PREFIX, schema=_schema(WAREHOUSE),
                                             batch_size=200, consumer_overrides={"session.timeout.ms": 6000}), workers)
    return runners


def _start_relays(registry, url: str, kafka: dict, workers: list) -> dict[str, Relay]:
    producers = sorted({entry.producer for entry in registry.events.values()})
    return {
        name: _run(Relay(url, kafka, RelayOptions(schema=_schema(name), topic_prefix=PREFIX, idle_interval=0.05)), workers)
        for name in producers
    }


def _run(worker, workers: list):
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    workers.append((worker, thread))
    return worker


def _generate(contracts: Contracts, registry, count: int, seed: int) -> list[tuple[EventSpec, str]]:
    rng = random.Random(seed)
    faker = PayloadFaker(contracts, seed)
    current = datetime.now(UTC).date()
    types = sorted(registry.events)
    subjects = {t: [new_id(faker.subject_prefix(t, max(registry.events[t].emittable_versions(current))))
                    for _ in range(12)] for t in types}
    plan = []
    for _ in range(count):
        event_type = rng.choice(types)
        version = max(registry.events[event_type].emittable_versions(current))
        tenant = rng.choice(TENANTS)
        spec = EventSpec(event_type, version, rng.choice(subjects[event_type]), tenant,
                         faker.payload(event_type, version, tenant))
        plan.append((spec, registry.events[event_type].producer))
    return plan


def _emit(url: str, plan: list, contracts: Contracts, result: DemoResult) -> list[tuple[str, bytes, bytes]]:
    outboxes: dict[str, Outbox] = {}
    emitted = []
    with psycopg.connect(url) as conn:
        for start in range(0, len(plan), 50):
            by_producer: dict[str, list[EventSpec]] = {}
            for spec, producer in plan[start : start + 50]:
                by_producer.setdefault(producer, []).append(spec)
            for producer, specs in by_producer.items():
                outbox = outboxes.setdefault(producer, Outbox(contracts, producer, schema=_schema(producer)))
                for envelope in outbox.emit_batch(conn, specs):
                    emitted.append((envelope.event_type, envelope.subject.encode(), envelope.to_json()))
                conn.commit()
            result.emitted = len(emitted)
    return emitted


def _inject_trouble(registry, kafka: dict, emitted: list, result: DemoResult, seed: int) -> int:
    """Redeliver a few events (the inbox absorbs them) and add poison (the DLQ takes it)."""
    rng = random.Random(seed + 1)
    producer = Producer({**kafka, "partitioner": "murmur2_random"})
    for event_type, key, value in rng.sample(emitted, max(1, len(emitted) // 50)):
        producer.produce(topic_name(PREFIX, event_type), key=key, value=value)
    poisoned = ["credit.released", "lead.created", "payment.received"]
    poisons = [b"{not json", b'{"event_id": "evt_nope"}', b"\xff\xfe binary junk"]
    expected = 0
    for event_type, value in zip(poisoned, poisons, strict=True):
        producer.produce(topic_name(PREFIX, event_type), key=b"poison", value=value)
        expected += len(registry.events[event_type].consumers)
    producer.flush(30)
    return expected


def _collect(result: DemoResult, relays: dict, runners: dict, conn: psycopg.Connection) -> None:
    result.published = sum(r.published for r in relays.values())
    for name, runner in runners.items():
        result.applied[name] = runner.applied
        result.duplicates[name] = runner.duplicates
        result.dead_lettered[name] = runner.dead_lettered
    result.warehouse_rows = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.warehouse_events").format(sql.Identifier(_schema(WAREHOUSE)))
    ).fetchone()[0]
    result.dlq_reasons = Counter()
    for runner in runners.values():
        for metric in runner.metrics.dead_lettered.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    result.dlq_reasons[sample.labels["error_class"]] += int(sample.value)


def _done(result: DemoResult) -> bool:
    consumers_done = all(
        (result.warehouse_rows if name == WAREHOUSE else result.applied.get(name, 0)) >= count
        for name, count in result.expected.items()
    )
    return consumers_done and sum(result.dead_lettered.values()) >= result.expected_dlq


def _progress(result: DemoResult, relays: dict, runners: dict) -> Table:
    table = Table(title="bridge demo: outbox → relay → Kafka → consumers", expand=False)
    table.add_column("stage")
    table.add_column("progress", justify="right")
    table.add_row("emitted (outbox)", str(result.emitted))
    table.add_row("published (relays)", f"{result.published} / {result.emitted}")
    for name in sorted(result.expected):
        done = result.warehouse_rows if name == WAREHOUSE else result.applied.get(name, 0)
        table.add_row(f"consumed by {name}", f"{done} / {result.expected[name]}")
    table.add_row("dead-lettered", f"{sum(result.dead_lettered.values())} / {result.expected_dlq}")
    return table


def _latency(result: DemoResult, conn: psycopg.Connection) -> None:
    row = conn.execute(sql.SQL(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM loaded_at - recorded_at)), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM loaded_at - recorded_at)) "
        "FROM {}.warehouse_events"
    ).format(sql.Identifier(_schema(WAREHOUSE)))).fetchone()
    result.latency_p50_ms = float(row[0] or 0) * 1000
    result.latency_p99_ms = float(row[1] or 0) * 1000


def _summary(result: DemoResult) -> Table:
    table = Table(title="summary")
    for column in ("consumer", "expected", "applied", "duplicates absorbed", "dead-lettered"):
        table.add_column(column, justify="right" if column != "consumer" else "left")
    for name in sorted(result.expected):
        applied = result.warehouse_rows if name == WAREHOUSE else result.applied.get(name, 0)
        table.add_row(name, str(result.expected[name]), str(applied), str(result.duplicates.get(name, 0)),
                      str(result.dead_lettered.get(name, 0)))
    table.caption = (
        f"{result.emitted} emitted, {result.published} published; DLQ reasons: "
        + (", ".join(f"{k} ×{v}" for k, v in sorted(result.dlq_reasons.items())) or "none")
        + f"; end-to-end latency (outbox write → warehouse row) p50 {result.latency_p50_ms:.0f} ms, "
        f"p99 {result.latency_p99_ms:.0f} ms"
    )
    return table
