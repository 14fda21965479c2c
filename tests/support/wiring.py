"""Running the real ``bridge`` commands in-process with the worker captured, and a Kafka port that
fails chosen deliveries asynchronously.

:func:`capture` invokes the click application (``bridge relay``, ``bridge consume …``, ``bridge sink
…``) with ``BRIDGE_*`` variables exactly as a shell would pass them, and returns the service the
command built instead of running it: a test then checks the settings reached it, and runs it in a
thread (:func:`support.process.running`) to check what the setting does.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

import bridge.cli.run
from bridge.cli import app
from bridge.config import BridgeSettings
from bridge.errors import KafkaError
from bridge.kafka.confluent import ConfluentClients
from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole
from bridge.kafka.records import DeliveryCallback, Headers, Record
from bridge.lifecycle import Service

#: BRIDGE_* variables that are the tests' own, not settings (bridge.config ignores them too).
_OWN = ("BRIDGE_TEST_", "BRIDGE_PG_", "BRIDGE_DEV_", "BRIDGE_TANSU_", "BRIDGE_BENCH_", "BRIDGE_CHAOS_")


@dataclass
class Captured:
    """What a command built and would have run."""

    service: Service
    settings: BridgeSettings
    clients: KafkaClients | None
    shutdown_timeout: float
    run_options: dict[str, Any] = field(default_factory=dict)


def capture(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    environ: dict[str, str],
    *,
    wrap_clients: Callable[[KafkaClients], KafkaClients] | None = None,
    real_logging: bool = False,
) -> Captured:
    """Run ``bridge <argv>`` with exactly ``environ`` as its BRIDGE_* settings; return its worker.

    ``real_logging``: let the command set up logging as it does for real (the root logger writes to
    ``sys.stderr`` in ``BRIDGE_LOG_FORMAT``); the caller restores the root logger afterwards."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") and not name.startswith(_OWN):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: list[Captured] = []

    def run_service(service: Service, settings: BridgeSettings, **options: Any) -> None:
        clients = options.pop("clients")
        timeout = options.pop("shutdown_timeout")
        seen.append(Captured(service, settings, clients, timeout, options))

    monkeypatch.setattr(bridge.cli.run, "run_service", run_service)
    if not real_logging:
        # Logging stays with pytest (the command would point the root logger at its own stderr).
        monkeypatch.setattr(bridge.cli.run, "setup_logging", lambda *_args, **_kwargs: None)
    if wrap_clients is not None:
        wrap = wrap_clients
        monkeypatch.setattr(bridge.cli.run, "kafka_clients", lambda settings: wrap(ConfluentClients(settings)))
    app(args=argv, prog_name="bridge", standalone_mode=False)
    assert len(seen) == 1, f"bridge {' '.join(argv)} built {len(seen)} services"
    return seen[0]


class RecordedPolls(KafkaClients):
    """Real clients whose consumers record the ``(max_records, timeout)`` of every ``consume`` call."""

    def __init__(self, inner: KafkaClients) -> None:
        self.inner = inner
        self.polls: list[tuple[int, float]] = []

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer:
        return self.inner.producer(role, client_id=client_id, max_message_bytes=max_message_bytes)

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer:
        inner = self.inner.consumer(group_id, client_id=client_id, commit_in_background=commit_in_background)
        return cast(Consumer, _RecordingConsumer(inner, self.polls))

    def admin(self) -> Admin:
        return self.inner.admin()


class _RecordingConsumer:
    def __init__(self, inner: Consumer, polls: list[tuple[int, float]]) -> None:
        self._inner = inner
        self._polls = polls

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        self._polls.append((max_records, timeout))
        return self._inner.consume(max_records, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FailingDeliveries(KafkaClients):
    """Real clients, except that every record whose ``event_id`` header is in ``poison`` is reported
    failed, from the next ``poll``/``flush`` as librdkafka reports an asynchronous delivery error,
    and never sent."""

    def __init__(self, inner: KafkaClients, poison: set[str]) -> None:
        self.inner = inner
        self.poison = {event_id.encode() for event_id in poison}
        self.failed: collections.Counter[str] = collections.Counter()

    def producer(self, role: ProducerRole, *, client_id: str, max_message_bytes: int | None = None) -> Producer:
        return _FailingProducer(
            self.inner.producer(role, client_id=client_id, max_message_bytes=max_message_bytes), self
        )

    def consumer(self, group_id: str, *, client_id: str, commit_in_background: bool = True) -> Consumer:
        return self.inner.consumer(group_id, client_id=client_id, commit_in_background=commit_in_background)

    def admin(self) -> Admin:
        return self.inner.admin()


class _FailingProducer(Producer):
    def __init__(self, inner: Producer, owner: FailingDeliveries) -> None:
        self.inner = inner
        self.owner = owner
        self.pending: list[tuple[str, DeliveryCallback]] = []

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers, on_delivery: DeliveryCallback) -> bool:
        event_id = dict(headers).get("event_id", b"")
        if event_id in self.owner.poison:
            self.pending.append((event_id.decode(), on_delivery))
            return True
        return self.inner.produce(topic, key, value, headers, on_delivery)

    def _report(self) -> int:
        pending, self.pending = self.pending, []
        for event_id, callback in pending:
            self.owner.failed[event_id] += 1
            callback(KafkaError("delivery: Broker: injected failure (INVALID_RECORD)", code="INVALID_RECORD"))
        return len(pending)

    def poll(self, timeout: float) -> int:
        return self.inner.poll(timeout) + self._report()

    def flush(self, timeout: float) -> int:
        self._report()
        return self.inner.flush(timeout)

    def outstanding(self) -> int:
        return self.inner.outstanding() + len(self.pending)

    def topic_exists(self, topic: str, timeout: float) -> bool:
        return self.inner.topic_exists(topic, timeout)

    def close(self, timeout: float) -> int:
        self._report()
        return self.inner.close(timeout)
