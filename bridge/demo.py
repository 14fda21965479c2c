"""``bridge demo``: the main job end to end on a throwaway local stack.

PostgreSQL and Tansu start in a temporary directory (no Docker, no Java); every domain gets its own
schema (outbox, inbox), the topics are applied from the catalog, and then: a generator emits a
realistic stream of every registered event type across tenants and subjects (payloads valid per
schema) through each producer's outbox; one relay per producing domain publishes; one consumer
per domain applies what the registry gives it; the warehouse sink lands everything. A few
poisonous records and redelivered duplicates are mixed in, to show the DLQ and the inbox at work.
Live progress, then a summary with the time from each emit's commit to its effect committed in
each consumer's database; everything is stopped and deleted at the end.
"""

from __future__ import annotations

import gc
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bridge.config import BridgeSettings, ConsumerSettings, DatabaseSettings, KafkaSettings, RelaySettings
from bridge.consumer import ConsumerApp, ConsumerRunner
from bridge.contracts import Contracts, Registry
from bridge.devstack.stack import DevStack
from bridge.envelope import Envelope
from bridge.fakes import PayloadFaker
from bridge.ids import new_id
from bridge.kafka.ports import KafkaClients
from bridge.lifecycle import ServiceThread
from bridge.outbox import EventSpec, Outbox, OutboxRow, migrate
from bridge.relay import RecordEncoder, Relay
from bridge.topics import desired_topics
from bridge.topics.provisioning import apply_plan, plan_topics
from bridge.wiring import build_consumer, build_relay, build_warehouse_sink, kafka_clients, topic_catalog

__all__ = ["DemoResult", "run_demo"]

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
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    warehouse_rows: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    complete: bool = False


def _schema(consumer: str) -> str:
    return "demo_" + consumer.replace("-", "_")


def _settings(url: str, bootstrap: str, schema: str) -> BridgeSettings:
    # Tansu completes a group join only after about half the session timeout: keep it short.
    return BridgeSettings(
        database=DatabaseSettings(url=SecretStr(url), schema_name=schema),
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        relay=RelaySettings(idle_interval=0.05),
        consumer=ConsumerSettings(batch_size=200, session_timeout_ms=6000, backoff_initial=0.2, backoff_max=2.0),
    )


def run_demo(
    events: int = 1500,
    *,
    seed: int = 7,
    console: Console | None = None,
    timeout: float = 180,
    broker: str | None = None,
) -> DemoResult:
    """Run the whole pipeline on a fresh local stack and tear it down. Returns what happened."""
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    workdir.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root: it must get in
    stack = DevStack(workdir / "stack", env_file=None)
    result = DemoResult()
    threads: list[ServiceThread] = []
    try:
        with console.status("starting PostgreSQL and the broker…"):
            state, _ = stack.up(broker)
        console.print(f"[green]✓[/] PostgreSQL {state.database_url}  ·  {state.broker} {state.bootstrap_servers}")
        contracts = Contracts.load()
        registry = contracts.registry
        base = _settings(state.database_url, state.bootstrap_servers, "bridge")
        clients = kafka_clients(base)
        prefix = registry.topic_prefix
        names = sorted(registry.consumer_names)
        with psycopg.connect(state.database_url, autocommit=True) as conn:
            for name in names:
                migrate(conn, _schema(name))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.effects (event_id text, event_type text, "
                        "recorded_at timestamptz, "
                        "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
                    ).format(sql.Identifier(_schema(name)))
                )
        console.print(f"[green]✓[/] migrated {len(names)} schemas (outbox, inbox, warehouse)")
        wanted = {
            t: replace(s, partitions=min(s.partitions, 3))
            for t, s in desired_topics(topic_catalog(base, registry), registry, prefix).items()
        }
        admin = clients.admin()
        try:
            # The demo's broker is a single node: replication fitted to it, explicitly.
            apply_plan(admin, plan_topics(admin, wanted, fit_replication=True))
        finally:
            admin.close()
        console.print(f"[green]✓[/] applied {len(wanted)} topics (event types, DLQs and replay topics)")

        runners = _start_consumers(contracts, state.database_url, state.bootstrap_servers, clients, threads)
        relays = _start_relays(registry, state.database_url, state.bootstrap_servers, clients, threads)
        console.print(f"[green]✓[/] {len(relays)} relays, {len(runners)} consumers and the warehouse sink running")

        with console.status("waiting for the consumer groups to settle…"):
            settle = time.monotonic() + 60
            while time.monotonic() < settle and not all(r.assigned for r in runners.values()):
                time.sleep(0.2)
        plan = _generate(contracts, registry, events, seed)
        expected: Counter[str] = Counter()
        for spec, _producer in plan:
            for consumer in registry.events[spec.event_type].consumers:
                expected[consumer] += 1
        result.expected = dict(expected)
        emitted = _emit(state.database_url, plan, contracts, result)
        result.expected_dlq = _inject_trouble(registry, clients, prefix, emitted, seed)

        deadline = time.monotonic() + timeout
        warehouse = registry.warehouse_consumer
        with (
            psycopg.connect(state.database_url, autocommit=True) as monitor,
            Live(_progress(result, warehouse), console=console, refresh_per_second=4) as live,
        ):
            while time.monotonic() < deadline:
                _collect(result, relays, runners, monitor, warehouse)
                live.update(_progress(result, warehouse))
                if _done(result, warehouse):
                    result.complete = True
                    break
                time.sleep(0.25)
            _latency(result, monitor, [n for n in names if n != warehouse])
        console.print(_summary(result, warehouse))
        if not result.complete:
            console.print("[bold red]the demo did not finish in time[/]")
        return result
    finally:
        for thread in threads:
            thread.service.stop()
        for thread in threads:
            try:
                thread.join(timeout=60)
            except Exception:  # noqa: BLE001 - tearing down: report, keep stopping the others
                console.print(f"[yellow]{thread.service.name} did not stop cleanly[/]")
        # Drop every Kafka client before the broker goes, so none logs the broker's departure.
        threads.clear()
        gc.collect()
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)


def _start_consumers(
    contracts: Contracts, url: str, bootstrap: str, clients: KafkaClients, threads: list[ServiceThread]
) -> dict[str, ConsumerRunner]:
    registry = contracts.registry
    warehouse = registry.warehouse_consumer
    runners: dict[str, ConsumerRunner] = {}
    for name in registry.active_consumers:
        settings = _settings(url, bootstrap, _schema(name))
        if name == warehouse:
            runners[name] = build_warehouse_sink(settings, clients=clients, contracts=contracts)
        else:
            app = ConsumerApp(name, contracts=contracts)
            insert = sql.SQL("INSERT INTO {}.effects (event_id, event_type, recorded_at) VALUES (%s, %s, %s)").format(
                sql.Identifier(_schema(name))
            )

            def record(event: Envelope, conn: psycopg.Connection[Any], insert: sql.Composed = insert) -> None:
                conn.execute(insert, (event.event_id, event.event_type, event.recorded_at))

            for event_type in app.subscriptions:
                app.handler(event_type)(record)
            runners[name] = build_consumer(app, settings, clients=clients)
        threads.append(ServiceThread(runners[name]).start())
    return runners


def _start_relays(
    registry: Registry, url: str, bootstrap: str, clients: KafkaClients, threads: list[ServiceThread]
) -> dict[str, Relay]:
    relays = {}
    for name in sorted({entry.producer for entry in registry.events.values()}):
        relays[name] = build_relay(_settings(url, bootstrap, _schema(name)), clients=clients)
        threads.append(ServiceThread(relays[name]).start())
    return relays


def _generate(contracts: Contracts, registry: Registry, count: int, seed: int) -> list[tuple[EventSpec, str]]:
    rng = random.Random(seed)
    faker = PayloadFaker(contracts, seed)
    current = datetime.now(UTC).date()
    types = sorted(registry.events)
    subjects = {
        t: [new_id(faker.subject_prefix(t, max(registry.events[t].emittable_versions(current)))) for _ in range(12)]
        for t in types
    }
    plan = []
    for _ in range(count):
        event_type = rng.choice(types)
        version = max(registry.events[event_type].emittable_versions(current))
        tenant = rng.choice(TENANTS)
        spec = EventSpec(
            event_type, version, rng.choice(subjects[event_type]), tenant, faker.payload(event_type, version, tenant)
        )
        plan.append((spec, registry.events[event_type].producer))
    return plan


def _emit(url: str, plan: Sequence[tuple[EventSpec, str]], contracts: Contracts, result: DemoResult) -> list[Envelope]:
    outboxes: dict[str, Outbox] = {}
    emitted: list[Envelope] = []
    with psycopg.connect(url) as conn:
        for start in range(0, len(plan), 50):
            by_producer: dict[str, list[EventSpec]] = {}
            for spec, producer in plan[start : start + 50]:
                by_producer.setdefault(producer, []).append(spec)
            for producer, specs in by_producer.items():
                outbox = outboxes.setdefault(producer, Outbox(contracts, producer, schema=_schema(producer)))
                emitted += outbox.emit_batch(conn, specs)
                conn.commit()
            result.emitted = len(emitted)
    return emitted


def _inject_trouble(registry: Registry, clients: KafkaClients, prefix: str, emitted: list[Envelope], seed: int) -> int:
    """Redeliver a few events exactly as the relay sent them (the inbox absorbs them) and add
    poison (the DLQ takes it)."""
    rng = random.Random(seed + 1)
    producer = clients.producer("replay", client_id="bridge-demo")
    encoder = RecordEncoder(prefix)

    def ignore(_error: object) -> None:
        pass

    for envelope in rng.sample(emitted, max(1, len(emitted) // 50)):
        row = OutboxRow(
            0,
            envelope.event_id,
            envelope.event_type,
            envelope.schema_version,
            envelope.subject,
            envelope.tenant_id,
            envelope.producer,
            envelope.to_json(),
            {},
            envelope.recorded_at,
            0,
        )
        record = encoder.encode(row)
        producer.produce(record.topic, record.key, record.value, record.headers, ignore)
    poisons = [b"{not json", b'{"event_id": "evt_nope"}', b"\xff\xfe binary junk"]
    consumed = sorted(name for name, entry in registry.events.items() if entry.consumers)
    expected = 0
    for index, value in enumerate(poisons):
        event_type = consumed[index % len(consumed)]
        producer.produce(encoder.topic(event_type), b"poison", value, [], ignore)
        expected += len(registry.events[event_type].consumers)
    producer.close(30)
    return expected


def _collect(
    result: DemoResult,
    relays: dict[str, Relay],
    runners: dict[str, ConsumerRunner],
    conn: psycopg.Connection[Any],
    warehouse: str,
) -> None:
    result.published = sum(r.published for r in relays.values())
    for name, runner in runners.items():
        result.applied[name] = runner.applied
        result.duplicates[name] = runner.duplicates
        result.dead_lettered[name] = runner.dead_lettered
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.warehouse_events").format(sql.Identifier(_schema(warehouse)))
    ).fetchone()
    result.warehouse_rows = int(row[0]) if row else 0
    result.dlq_reasons = Counter()
    for runner in runners.values():
        for metric in runner.metrics.dead_lettered.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    result.dlq_reasons[sample.labels["error_class"]] += int(sample.value)


def _done(result: DemoResult, warehouse: str) -> bool:
    consumers_done = all(
        (result.warehouse_rows if name == warehouse else result.applied.get(name, 0)) >= count
        for name, count in result.expected.items()
    )
    return consumers_done and sum(result.dead_lettered.values()) >= result.expected_dlq


def _progress(result: DemoResult, warehouse: str) -> Table:
    table = Table(title="bridge demo: outbox → relay → Kafka → consumers", expand=False)
    table.add_column("stage")
    table.add_column("progress", justify="right")
    table.add_row("emitted (outbox)", str(result.emitted))
    table.add_row("published (relays)", f"{result.published} / {result.emitted}")
    for name in sorted(result.expected):
        done = result.warehouse_rows if name == warehouse else result.applied.get(name, 0)
        table.add_row(f"consumed by {name}", f"{done} / {result.expected[name]}")
    table.add_row("dead-lettered", f"{sum(result.dead_lettered.values())} / {result.expected_dlq}")
    return table


def _latency(result: DemoResult, conn: psycopg.Connection[Any], consumers: list[str]) -> None:
    """Commit → applied: from the emit (recorded_at, written just before the producer's commit) to
    the handler's row in each consumer's database (clock_timestamp(), just before its commit)."""
    parts = [
        sql.SQL("SELECT extract(epoch FROM applied_at - recorded_at) AS s FROM {}.effects").format(
            sql.Identifier(_schema(c))
        )
        for c in consumers
    ]
    query = sql.SQL(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY s) FROM ({}) t"
    ).format(sql.SQL(" UNION ALL ").join(parts))
    row = conn.execute(query).fetchone()
    result.latency_p50_ms = float(row[0] or 0) * 1000 if row else 0.0
    result.latency_p99_ms = float(row[1] or 0) * 1000 if row else 0.0


def _summary(result: DemoResult, warehouse: str) -> Table:
    table = Table(title="summary")
    for column in ("consumer", "expected", "applied", "duplicates absorbed", "dead-lettered"):
        table.add_column(column, justify="right" if column != "consumer" else "left")
    for name in sorted(result.expected):
        applied = result.warehouse_rows if name == warehouse else result.applied.get(name, 0)
        table.add_row(
            name,
            str(result.expected[name]),
            str(applied),
            str(result.duplicates.get(name, 0)),
            str(result.dead_lettered.get(name, 0)),
        )
    table.caption = (
        f"{result.emitted} emitted, {result.published} published; DLQ reasons: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(result.dlq_reasons.items())) or "none")
        + f"; commit → applied in the consumers' databases p50 {result.latency_p50_ms:.0f} ms, "
        f"p99 {result.latency_p99_ms:.0f} ms"
    )
    return table
