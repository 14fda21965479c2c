"""Permanent errors told from transient ones, without services: a host name that does not resolve
is a bad URL at start-up but an outage later, and a coordinator that is not ready yet right after a
broker starts is asked again within a bound."""

from __future__ import annotations

import types
from typing import Any

import confluent_kafka
import psycopg
import pytest
from support.outbox import CONTRACTS

import bridge.kafka.confluent as confluent
from bridge.consumer import ConsumerApp
from bridge.consumer.applying import PostgresApplier
from bridge.errors import BrokerUnavailableError, DatabaseConfigurationError, DatabaseUnavailableError, KafkaError
from bridge.kafka.records import TopicPartition
from bridge.postgres import at_startup, classify_error

UNRESOLVED = [
    "failed to resolve host 'db.invalid': [Errno -2] Name or service not known",  # psycopg's resolver
    'could not translate host name "db.invalid" to address: Name or service not known',  # libpq's
]


@pytest.mark.parametrize("message", UNRESOLVED)
def test_an_unresolvable_host_is_an_outage_at_run_time_and_a_bad_url_at_start_up(message):
    error = classify_error(psycopg.OperationalError(message), "connect")
    assert isinstance(error, DatabaseUnavailableError)
    assert error.retriable  # later, a DNS hiccup is waited out like any outage

    at_start = at_startup(error)
    assert isinstance(at_start, DatabaseConfigurationError)
    assert not at_start.retriable
    assert at_start.setting == "BRIDGE_DATABASE__URL"
    assert "BRIDGE_DATABASE__URL" in str(at_start)
    assert "db.invalid" in str(at_start)


def test_at_startup_leaves_other_outages_transient():
    refused = classify_error(psycopg.OperationalError("connection refused"), "connect")
    assert at_startup(refused) is refused
    assert refused.retriable


def test_a_consumer_starting_with_an_unresolvable_host_fails_fast_naming_the_url():
    app = ConsumerApp("coaching", contracts=CONTRACTS)
    applier = PostgresApplier(app, "postgresql://bridge@no-such-host.invalid:5432/bridge", "bridge")
    with pytest.raises(DatabaseConfigurationError, match="BRIDGE_DATABASE__URL"):
        applier.check_schema()


def test_the_warehouse_sink_checks_its_table_at_start():
    from bridge.sinks.warehouse import warehouse_app

    app = warehouse_app(contracts=CONTRACTS, schema="bridge")
    assert app.required_tables == ("warehouse_events",)
    assert ConsumerApp("coaching", contracts=CONTRACTS).required_tables == ("inbox",)


# --- NOT_COORDINATOR right after a broker starts ---------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _admin(monkeypatch: pytest.MonkeyPatch, failures: list[str]) -> tuple[confluent.ConfluentAdmin, _Clock, list[Any]]:
    """A ConfluentAdmin whose offsets reader fails with ``failures`` (librdkafka error names), one
    per call, then answers; on a fake clock."""
    calls: list[Any] = []
    pending = list(failures)

    class Reader:
        def __init__(self, config: dict[str, Any]) -> None:
            self.closed = False

        def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
            calls.append(timeout)
            if pending:
                code = getattr(confluent_kafka.KafkaError, pending.pop(0))
                raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))
            return [confluent_kafka.TopicPartition(p.topic, p.partition, 42) for p in partitions]

        def close(self) -> None:
            self.closed = True

    clock = _Clock()
    monkeypatch.setattr(confluent, "AdminClient", lambda config: object())
    monkeypatch.setattr(confluent_kafka, "Consumer", Reader)
    monkeypatch.setattr(confluent, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    return confluent.ConfluentAdmin({"bootstrap.servers": "stub:9092"}, request_timeout=5.0), clock, calls


def test_a_coordinator_not_ready_at_start_up_is_asked_again(monkeypatch):
    admin, clock, calls = _admin(monkeypatch, ["NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS"])
    tp = TopicPartition("t.coach.assigned", 0)
    assert admin.committed_offsets("g", [tp], timeout=10.0) == {tp: 42}
    assert len(calls) == 3
    assert clock.slept == [0.2, 0.2]


def test_a_coordinator_that_never_gets_ready_fails_within_the_bound(monkeypatch):
    admin, clock, calls = _admin(monkeypatch, ["NOT_COORDINATOR"] * 1000)
    with pytest.raises(BrokerUnavailableError, match="BRIDGE_KAFKA__BOOTSTRAP_SERVERS") as raised:
        admin.committed_offsets("g", [TopicPartition("t.coach.assigned", 0)], timeout=3.0)
    assert raised.value.code == "NOT_COORDINATOR"
    assert raised.value.retriable
    assert clock.now <= 3.0 + 0.2  # asked again only within the timeout
    assert 1 < len(calls) < 1000


def test_a_permanent_error_while_reading_offsets_is_not_retried(monkeypatch):
    admin, _, calls = _admin(monkeypatch, ["GROUP_AUTHORIZATION_FAILED"])
    with pytest.raises(KafkaError) as raised:
        admin.committed_offsets("g", [TopicPartition("t.coach.assigned", 0)], timeout=10.0)
    assert not isinstance(raised.value, BrokerUnavailableError)
    assert len(calls) == 1
