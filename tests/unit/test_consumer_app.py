from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from bridge.consumer import ConsumerApp, ErrorPolicy
from bridge.dlq import DLQ_HEADERS, DeadLetterRecord
from bridge.errors import ConfigurationError


def test_subscriptions_come_from_the_registry():
    app = ConsumerApp("coaching")
    assert app.subscriptions == [
        "coach.assigned",
        "credit.forfeited",
        "credit.locked",
        "credit.released",
        "credit.reserved",
    ]


def test_handlers_resolve_version_specific_first():
    app = ConsumerApp("coaching")

    @app.handler("credit.released")
    def any_version(event, conn): ...

    @app.handler("credit.released", version=2)
    def v2(event, conn): ...

    assert app.resolve("credit.released", 2) is v2
    assert app.resolve("credit.released", 1) is any_version
    assert app.resolve("credit.locked", 1) is None
    assert app.handles("credit.released", 1)
    assert not app.handles("credit.locked", 1)


@pytest.mark.parametrize(
    ("consumer", "event_type", "version", "message"),
    [
        ("finance", "credit.released", None, "unknown consumer 'finance'"),
        ("coaching", "lead.created", None, "does not list 'coaching' as a consumer of 'lead.created'"),
        ("coaching", "credit.released", 7, "has no registered version 7"),
    ],
)
def test_registration_mistakes_are_refused(consumer, event_type, version, message):
    with pytest.raises(ConfigurationError, match=message):
        ConsumerApp(consumer).handler(event_type, version)


def test_a_handler_cannot_be_registered_twice():
    app = ConsumerApp("coaching")
    app.handler("credit.locked")(lambda e, c: None)
    with pytest.raises(ConfigurationError, match="exists"):
        app.handler("credit.locked")(lambda e, c: None)


def test_default_policy_is_the_safe_one():
    policy = ErrorPolicy()
    assert (policy.max_attempts, policy.unhandled) == (3, "dlq")


def test_dlq_headers_keep_the_original_ones_and_add_both_conventions():
    letter = DeadLetterRecord(
        topic="sguild.lead.created",
        partition=3,
        offset=1042,
        key=b"led_1",
        value=b"\xff",
        headers=[("event_id", b"evt_1"), ("dlq.attempts", b"9")],
        error_class="bridge.errors.DecodeError",
        error_message="invalid UTF-8 at byte 0" + "x" * 10_000,
        attempts=1,
        reason="decode",
        stacktrace="Traceback …",
    )
    headers = letter.dlq_headers("platform-warehouse", datetime(2026, 6, 1, tzinfo=UTC))
    names = [k for k, _ in headers]
    assert names[0] == "event_id"
    assert names.count("dlq.attempts") == 1
    values = dict(headers)
    assert values["dlq.original.topic"] == values["kafka_dlt-original-topic"] == b"sguild.lead.created"
    assert values["dlq.original.partition"] == b"3"
    assert struct.unpack(">i", values["kafka_dlt-original-partition"]) == (3,)
    assert values["dlq.original.offset"] == b"1042"
    assert struct.unpack(">q", values["kafka_dlt-original-offset"]) == (1042,)
    assert values["dlq.consumer"] == b"platform-warehouse"
    assert values["dlq.failed_at"] == b"2026-06-01T00:00:00.000000Z"
    assert len(values["dlq.error.message"]) == 4000
    assert values["dlq.reason"] == b"decode"
    assert values["dlq.error.stacktrace"] == values["kafka_dlt-exception-stacktrace"] == "Traceback …".encode()
    assert set(DLQ_HEADERS) - {"dlq.value"} <= set(names)  # dlq.value only when the value was replaced


def test_an_app_with_no_handlers_refuses_to_run():
    with pytest.raises(ConfigurationError, match="has no handlers"):
        ConsumerApp("coaching").check_ready()


def test_unhandled_lists_every_subscribed_version_no_handler_takes_and_skip_is_explicit():
    app = ConsumerApp("coaching")
    app.handler("credit.released", version=2)(lambda e, c: None)
    app.skip("credit.locked", reason="sales tracks locks, not us")
    assert app.unhandled() == [
        ("coach.assigned", 1),
        ("credit.forfeited", 1),
        ("credit.released", 1),
        ("credit.reserved", 1),
    ]
    assert app.skip_reason("credit.locked", 1) == "sales tracks locks, not us"
    with pytest.raises(ConfigurationError, match="does not list 'coaching'"):
        app.skip("lead.created")


def test_the_contracts_path_setting_reaches_contracts_and_apps(monkeypatch, tmp_path):
    from bridge.contracts import Contracts
    from bridge.contracts.scaffold import Scaffold, scaffold

    scaffold(tmp_path, Scaffold(("storefront", "ledger")))
    monkeypatch.setenv("BRIDGE_CONTRACTS_PATH", str(tmp_path / "contracts"))
    assert list(Contracts.load().registry.events) == ["order.placed"]
    assert ConsumerApp("ledger").subscriptions == ["order.placed"]
    with pytest.raises(ConfigurationError, match="unknown consumer 'coaching'"):
        ConsumerApp("coaching")


def test_one_app_runs_one_kind_of_handler():
    app = ConsumerApp("coaching")

    @app.handler("coach.assigned")
    def sync_handler(event, conn):
        pass

    with pytest.raises(ConfigurationError, match="async but this app's handlers are sync"):

        @app.handler("credit.released")
        async def async_handler(event, conn):
            pass

    assert not app.is_async


def test_rows_functions_are_the_bulk_path_and_give_tuples_of_their_columns():
    app = ConsumerApp("coaching")

    @app.rows("coach.assigned", into="coaching.assignments", columns=("event_id", "coach_id"))
    def assignment(event):
        return (event.event_id, event.payload["coach_id"])

    @app.rows("credit.released", into="ledger", columns=("event_id",))
    def several(event):
        return [(event.event_id,), (event.event_id,)] if event.payload.get("twice") else None

    assert app.handles("coach.assigned", 1)
    mapper = app.resolve_rows("coach.assigned", 1)
    assert mapper is not None
    assert (mapper.table, mapper.columns) == (("coaching", "assignments"), ("event_id", "coach_id"))
    event = envelope_of("coach.assigned", {"coach_id": "coa_1"})
    assert mapper.rows(event) == [(event.event_id, "coa_1")]
    ledger = app.resolve_rows("credit.released", 2)
    assert ledger is not None
    assert ledger.rows(envelope_of("credit.released", {})) == []
    assert len(ledger.rows(envelope_of("credit.released", {"twice": True}))) == 2
    with pytest.raises(ConfigurationError, match="exists"):
        app.rows("coach.assigned", into="other", columns=("event_id",))(assignment)
    with pytest.raises(ConfigurationError, match=r"schema\.name"):
        app.rows("credit.locked", into="a.b.c", columns=("x",))


def test_a_rows_function_returning_the_wrong_shape_names_the_table_and_columns():
    app = ConsumerApp("coaching")

    @app.rows("coach.assigned", into="assignments", columns=("event_id", "coach_id"))
    def wrong(event):
        return (event.event_id,)

    mapper = app.resolve_rows("coach.assigned", 1)
    assert mapper is not None
    with pytest.raises(TypeError, match=r"assignments must return tuples of 2 values \(event_id, coach_id\)"):
        mapper.rows(envelope_of("coach.assigned", {}))


def envelope_of(event_type, payload):
    from datetime import UTC, datetime

    from bridge.envelope import Envelope
    from bridge.ids import new_event_id

    now = datetime.now(UTC)
    return Envelope(new_event_id(), event_type, 1, "delivery", "t", "coa_1", now, now, payload)


def test_an_app_on_djangos_connection_refuses_async_handlers():
    """Django's applier calls handlers without awaiting them: an async one would never run while
    its event's inbox row committed."""
    app = ConsumerApp("coaching", connection="django")

    with pytest.raises(ConfigurationError, match="connection='django' runs sync handlers"):

        @app.handler("coach.assigned")
        async def async_handler(event, conn):
            pass

    with pytest.raises(ConfigurationError, match="connection='django' runs sync handlers"):

        @app.batch_handler
        async def async_batch(deliveries, conn):
            pass

    assert not app.handles("coach.assigned", 1)
