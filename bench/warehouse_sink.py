"""Warehouse sink throughput: rows landed per second, against raw consumption of the same topic.

N events of a warehouse-consumed type (lead.stage.changed, a realistic payload) are produced to a
6-partition topic. Baseline, in the same run: a bare confluent-kafka poll() loop over the topic.
Then ``bridge sink warehouse``'s app: decode, validate, one multi-row INSERT … ON CONFLICT DO NOTHING
per poll, offsets after commit. ratio = rows landed/s / raw events/s. Latency: one poll's batch.

Prints a table, then one JSON line: {"bench": "warehouse_sink", "ratio": …}.

    python bench/warehouse_sink.py [--events N] [--batch B]
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
from confluent_kafka.admin import AdminClient, NewTopic
from consume_inbox import produce, raw_consume
from psycopg import sql

from bridge.consumer import ConsumerRunner
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.ids import new_event_id, new_id
from bridge.outbox import migrate
from bridge.sinks import warehouse_app

TYPE = "lead.stage.changed"


def make_events(n: int) -> list[Envelope]:
    now = datetime.now(UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    events = []
    for i in range(n):
        lead = new_id("led")
        events.append(
            Envelope(
                new_event_id(),
                TYPE,
                1,
                "sales",
                "tenant-1",
                lead,
                now,
                now,
                {
                    "tenant_id": "tenant-1",
                    "lead_id": lead,
                    "from_stage": "new",
                    "to_stage": "contacted",
                    "transition_reason": "operator_action",
                    "changed_by": f"op_{i % 40}",
                    "changed_at": stamp,
                },
            )
        )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with services() as (url, bootstrap):
        run = uuid.uuid4().hex[:6]
        schema, prefix = f"bench_{run}", f"w{run}."
        topic = f"{prefix}{TYPE}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(60)
        time.sleep(1)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        produce(bootstrap, topic, make_events(args.events))
        raw_rate = raw_consume(bootstrap, topic, args.events, batched=False)

        app = warehouse_app(contracts=Contracts.load(), schema=schema)
        runner = ConsumerRunner(
            app, url, {"bootstrap.servers": bootstrap}, topic_prefix=prefix, schema=schema, batch_size=args.batch
        )
        latencies = _common.record_durations(runner, "_handle")  # one poll's batch
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        while runner.applied == 0:
            time.sleep(0.001)
        start, first = time.perf_counter(), runner.applied
        while runner.applied < args.events:
            time.sleep(0.005)
        rate = (args.events - first) / (time.perf_counter() - start)
        runner.stop()
        thread.join(60)
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.warehouse_events").format(sql.Identifier(schema))
            ).fetchone()[0]
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            conn.commit()
        assert rows == args.events, rows
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    print(f"{args.events} events, polls of up to {args.batch}")
    print(f"{'raw poll() ev/s':>16} {'sink rows/s':>12} {'ratio':>7} {'batch p50 ms':>13} {'p99 ms':>8}")
    print(f"{raw_rate:16.0f} {rate:12.0f} {rate / raw_rate:7.3f} {p50:13.1f} {p99:8.1f}")
    _common.report(
        "warehouse_sink",
        {
            "ratio": round(rate / raw_rate, 3),
            "rows_per_s": round(rate),
            "raw_events_per_s": round(raw_rate),
            "batch_p50_ms": round(p50, 1),
            "batch_p99_ms": round(p99, 1),
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "events": args.events,
        },
    )


if __name__ == "__main__":
    main()
