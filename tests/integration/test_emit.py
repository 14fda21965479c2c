"""Migrations, emit and its refusals, and the least-privilege GRANTs, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.kafka import create_topics, read_all
from support.outbox import BULK_TYPE, CONTRACTS, Env, relay_thread, wait_until
from support.schemas import example_payload

from bridge.contracts import Contracts
from bridge.envelope import decode_envelope
from bridge.errors import (
    ConfigurationError,
    OutboxError,
    ProducerMismatchError,
    SunsetVersionError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    ValidationError,
)
from bridge.outbox import AsyncOutbox, EventSpec, Outbox, OutboxStore, ReadRequest, grant_statements, migrate, status
from bridge.resources import shipped_contracts

pytestmark = pytest.mark.integration


def released_payload() -> dict[str, Any]:
    return example_payload(CONTRACTS, "credit.released", 2)


# --- migrations ------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_safe_when_run_concurrently(postgres_service, unique_name):
    schema = unique_name("mig")
    errors: list[BaseException] = []
    applied: list[list[int]] = []

    def run() -> None:
        try:
            with psycopg.connect(postgres_service.url, autocommit=True) as conn:
                applied.append(migrate(conn, schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(applied) == [[], [], [], [1, 2, 3, 4]]  # exactly one run applied them
    with psycopg.connect(postgres_service.url, autocommit=True) as conn:
        st = status(conn, schema)
        assert (st.current, st.pending) == (st.latest, [])
        assert migrate(conn, schema) == []
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_migrate_upgrades_a_schema_that_already_holds_rows(relay_env, unique_name, monkeypatch):
    """An outbox made by an older bridge (migration 1 only), with events waiting and one
    quarantined, is upgraded in place: the rows are untouched and the relay publishes them."""
    from bridge.outbox import migrations

    schema = unique_name("up")
    url = relay_env.database_url
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])  # what the older bridge knew
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert migrate(conn, schema) == [1]
        env = Env(url, schema, relay_env.prefix, relay_env.bootstrap)
        with psycopg.connect(url) as conn:
            waiting = [env.outbox().emit(conn, BULK_TYPE, 1, f"s{i}", "t", {"seq": 1}) for i in range(4)]
            conn.commit()
            conn.execute(
                sql.SQL(
                    "UPDATE {}.outbox SET failed_at = now(), attempts = 5, failure = 'old' WHERE subject = 's3'"
                ).format(sql.Identifier(schema))
            )
            conn.commit()
        table = sql.SQL("SELECT * FROM {}.outbox ORDER BY id").format(sql.Identifier(schema))
        with psycopg.connect(url, autocommit=True) as conn:
            before = conn.execute(table).fetchall()
            monkeypatch.undo()
            assert migrate(conn, schema) == [2, 3, 4]
            assert status(conn, schema).pending == []
            assert conn.execute(table).fetchall() == before  # every row as it was, byte for byte
        create_topics(env.bootstrap, [env.topic()])
        with relay_thread(env) as relay:
            wait_until(lambda: relay.published == 3, message="the rows emitted before the upgrade")
        records = read_all(env.bootstrap, [env.topic()], expect=3)
        assert sorted(r.event_id for r in records) == sorted(e.event_id for e in waiting[:3])
        assert [r.value for r in records if r.event_id == waiting[0].event_id] == [waiting[0].to_json()]
        with psycopg.connect(url, autocommit=True) as conn:
            assert [r.event_id for r in OutboxStore(conn, schema).quarantined()] == [waiting[3].event_id]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_status_of_an_unmigrated_schema(postgres_service):
    with psycopg.connect(postgres_service.url, autocommit=True) as conn:
        st = status(conn, "never_migrated_here")
    assert st.current == 0
    assert st.pending == [1, 2, 3, 4]


@pytest.mark.parametrize("schema", ['x"; DROP SCHEMA public; --', "Bridge", "1abc", "a" * 64, ""])
def test_hostile_schema_names_are_rejected(postgres_service, schema):
    with psycopg.connect(postgres_service.url, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match="invalid schema name"):
            migrate(conn, schema)
        row = conn.execute("SELECT to_regnamespace('public')").fetchone()
        assert row is not None
        assert row[0] is not None
    with pytest.raises(ConfigurationError):
        Outbox(CONTRACTS, "revenue", schema=schema)
    with pytest.raises(ConfigurationError):
        grant_statements(schema, producer_role="p")


# --- emit ------------------------------------------------------------------------------------------


def rows(env) -> list[tuple[Any, ...]]:
    with psycopg.connect(env.database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT id, event_id, event_type, subject, value, headers FROM {}.outbox ORDER BY id").format(
                sql.Identifier(env.schema)
            )
        ).fetchall()


def test_emit_writes_a_validated_envelope_in_the_callers_transaction(relay_env):
    outbox = relay_env.outbox("revenue")
    with psycopg.connect(relay_env.database_url) as conn:
        envelope = outbox.emit(
            conn,
            "credit.released",
            2,
            "crr_0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b",
            "t1",
            released_payload(),
            correlation_id="corr-1",
        )
        assert rows(relay_env) == []  # not committed yet: invisible to others
        conn.commit()
    (row,) = rows(relay_env)
    assert row[1] == envelope.event_id
    assert row[2] == "credit.released"
    decoded = decode_envelope(bytes(row[4]))
    assert decoded == envelope
    assert decoded.producer == "revenue"
    assert decoded.correlation_id == "corr-1"


def test_a_rolled_back_transaction_emits_nothing(relay_env):
    outbox = relay_env.outbox()
    with psycopg.connect(relay_env.database_url) as conn:
        outbox.emit(conn, "lesson.scheduled", 1, "les_1", "t1", {"a": 1})
        conn.rollback()
    assert rows(relay_env) == []


def test_batch_emit_keeps_order_and_is_all_or_nothing(relay_env):
    outbox = relay_env.outbox()
    specs = [EventSpec("lesson.scheduled", 1, f"les_{i % 3}", "t1", {"n": i}) for i in range(50)]
    with psycopg.connect(relay_env.database_url) as conn:
        envelopes = outbox.emit_batch(conn, specs)
        conn.commit()
    stored = rows(relay_env)
    assert [r[1] for r in stored] == [e.event_id for e in envelopes]
    # One invalid event refuses the whole batch before anything is written.
    not_an_object = EventSpec("lesson.scheduled", 1, "les_9", "t1", ["not", "an", "object"])  # type: ignore[arg-type]  # the point: a payload that is not an object must be refused at run time
    bad = [*specs[:3], not_an_object]
    with psycopg.connect(relay_env.database_url) as conn:
        with pytest.raises(ValidationError):
            outbox.emit_batch(conn, bad)
        conn.commit()
    assert len(rows(relay_env)) == 50


def test_async_emit(relay_env):
    outbox = AsyncOutbox(CONTRACTS, "delivery", schema=relay_env.schema)

    async def main() -> list[str]:
        async with await psycopg.AsyncConnection.connect(relay_env.database_url) as conn:
            one = await outbox.emit(conn, "lesson.scheduled", 1, "les_a", "t1", {"n": 1})
            more = await outbox.emit_batch(conn, [EventSpec("lesson.scheduled", 1, "les_b", "t1", {"n": 2})])
            await conn.commit()
            return [one.event_id] + [e.event_id for e in more]

    ids = asyncio.run(main())
    assert [r[1] for r in rows(relay_env)] == ids


def test_emit_refuses_an_autocommit_connection(relay_env):
    with (
        psycopg.connect(relay_env.database_url, autocommit=True) as conn,
        pytest.raises(OutboxError, match="autocommit"),
    ):
        relay_env.outbox().emit(conn, "lesson.scheduled", 1, "les_1", "t1", {})

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(relay_env.database_url, autocommit=True) as conn:
            await AsyncOutbox(CONTRACTS, "delivery", schema=relay_env.schema).emit(
                conn, "lesson.scheduled", 1, "s", "t", {}
            )

    with pytest.raises(OutboxError, match="autocommit"):
        asyncio.run(main())
    assert rows(relay_env) == []


@pytest.mark.parametrize(
    ("producer", "event_type", "version", "error", "message"),
    [
        ("revenue", "credit.refunded", 1, UnknownEventTypeError, "not registered"),
        ("revenue", "credit.released", 3, UnknownSchemaVersionError, "registered: 1, 2"),
        ("sales", "credit.released", 2, ProducerMismatchError, "registered producer is 'revenue'"),
    ],
)
def test_emit_refuses_what_the_registry_forbids(relay_env, producer, event_type, version, error, message):
    with psycopg.connect(relay_env.database_url) as conn, pytest.raises(error, match=message):
        relay_env.outbox(producer).emit(conn, event_type, version, "crr_x", "t1", released_payload())
    assert rows(relay_env) == []


def test_emit_refuses_a_sunset_version(relay_env, tmp_path):
    root = tmp_path / "contracts"
    shutil.copytree(shipped_contracts(), root)
    registry = json.loads((root / "event-types-registry.json").read_text())
    registry["events"]["credit.released"]["schema_versions"][0]["status"] = "sunset"
    (root / "event-types-registry.json").write_text(json.dumps(registry))
    outbox = Outbox(Contracts.load(root), "revenue", schema=relay_env.schema)
    payload = released_payload()
    del payload["reason_code"]
    with psycopg.connect(relay_env.database_url) as conn, pytest.raises(SunsetVersionError, match="sunset"):
        outbox.emit(conn, "credit.released", 1, "crr_x", "t1", payload)


def test_emit_refuses_an_invalid_payload_naming_each_pointer(relay_env):
    payload = released_payload()
    payload["released_credits"] = 2
    payload["credit_account_id"] = "acct-42"
    del payload["reason_code"]
    with psycopg.connect(relay_env.database_url) as conn, pytest.raises(ValidationError) as info:
        relay_env.outbox("revenue").emit(conn, "credit.released", 2, "crr_x", "t1", payload)
    pointers = {v.pointer for v in info.value.violations}
    assert {"/payload/released_credits", "/payload/credit_account_id", "/payload/reason_code"} <= pointers
    assert info.value.event_id is not None
    assert info.value.event_id in str(info.value)
    assert rows(relay_env) == []


def test_trace_context_is_recorded_when_one_exists(relay_env):
    trace = pytest.importorskip("opentelemetry.trace")
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(1),
    )
    with trace.use_span(NonRecordingSpan(context)), psycopg.connect(relay_env.database_url) as conn:
        relay_env.outbox().emit(conn, "lesson.scheduled", 1, "les_1", "t1", {})
        conn.commit()
    headers = rows(relay_env)[0][5]
    assert headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- least privilege -------------------------------------------------------------------------------


def test_least_privilege_roles_are_enough_and_no_more(relay_env, unique_name):
    producer_role, relay_role = unique_name("prod")[:40], unique_name("rel")[:40]
    info = psycopg.conninfo.conninfo_to_dict(relay_env.database_url)
    with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
        for role in (producer_role, relay_role):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        for statement in grant_statements(relay_env.schema, producer_role=producer_role, relay_role=relay_role):
            admin.execute(statement)

    def url(role: str) -> str:
        return psycopg.conninfo.make_conninfo("", **{**info, "user": role, "password": "pw"})

    try:
        # The producer can emit, and do nothing else with the outbox.
        with psycopg.connect(url(producer_role)) as conn:
            relay_env.outbox().emit(conn, "lesson.scheduled", 1, "les_1", "t1", {"n": 1})
            conn.commit()
            for query in ("SELECT * FROM {}.outbox", "DELETE FROM {}.outbox", "UPDATE {}.outbox SET attempts = 1"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL(query).format(sql.Identifier(relay_env.schema)))
                conn.rollback()
        # The relay can read, quarantine, retry and delete, and cannot write events.
        with psycopg.connect(url(relay_role), autocommit=True) as conn:
            store = OutboxStore(conn, relay_env.schema)
            assert store.try_lead()
            assert store.holds_lock()
            start = store.start()  # reads the id sequence (GRANT SELECT ON SEQUENCE)
            assert start.last_id >= 1
            result = store.read(ReadRequest(0, 10))
            assert result.leading
            (row,) = result.rows
            assert store.quarantine(row.id, "test")
            assert store.retry() == 1
            assert store.record_attempt([row.id], "test") == {row.id: 1}
            assert store.stats().backlog == 1
            store.delete([row.id])
            assert store.stats().backlog == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.outbox "
                        "(event_id, event_type, schema_version, subject, tenant_id, producer, value) "
                        "VALUES ('e', 't', 1, 's', 't', 'p', '')"
                    ).format(sql.Identifier(relay_env.schema))
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("UPDATE {}.outbox SET value = ''").format(sql.Identifier(relay_env.schema)))
    finally:
        with psycopg.connect(relay_env.database_url, autocommit=True) as admin:
            for role in (producer_role, relay_role):
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
