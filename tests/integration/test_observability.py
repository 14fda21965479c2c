"""A trace id survives from emit to the consumer handler's span; consumer metrics are served and move."""

from __future__ import annotations

import urllib.request

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from support.consumer import APP_TYPE, consumer_thread
from support.kafka import create_topics
from support.outbox import CONTRACTS, relay_thread, wait_until

from bridge.consumer import ConsumerApp
from bridge.observability import ProbeServer

pytestmark = pytest.mark.integration

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


def test_trace_id_survives_from_emit_to_handler_and_metrics_move(relay_env):
    topic = relay_env.topic(APP_TYPE)
    create_topics(relay_env.bootstrap, [topic, f"{topic}.dlq.coaching"])
    parent = SpanContext(trace_id=TRACE_ID, span_id=0xB7AD6B7169203331, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(parent)), psycopg.connect(relay_env.database_url) as conn:
        traced = relay_env.outbox("delivery").emit(conn, APP_TYPE, 1, "coa_t", "t", {"seq": 1})
        conn.commit()
    with psycopg.connect(relay_env.database_url) as conn:  # and one without a trace
        untraced = relay_env.outbox("delivery").emit(conn, APP_TYPE, 1, "coa_u", "t", {"seq": 1})
        conn.commit()

    seen: dict[str, int] = {}
    app = ConsumerApp("coaching", contracts=CONTRACTS)

    @app.handler(APP_TYPE)
    def record(event, conn):
        seen[event.event_id] = trace.get_current_span().get_span_context().trace_id

    with relay_thread(relay_env) as relay:
        wait_until(lambda: relay.published == 2, message="publication")
    with consumer_thread(relay_env, app) as runner:
        server = ProbeServer(runner.metrics.registry, runner.health, host="127.0.0.1", port=0).start()
        try:
            wait_until(lambda: len(seen) == 2, message="both events")
            body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        finally:
            server.close()
    assert seen[traced.event_id] == TRACE_ID
    assert seen[untraced.event_id] != TRACE_ID
    assert f'bridge_consumer_applied_total{{consumer="coaching",event_type="{APP_TYPE}"}} 2.0' in body
    assert 'bridge_consumer_batch_size_count{consumer="coaching"}' in body
