"""Test helpers for the outbox and the relay: run a relay in a thread or as a real process, emit
numbered events per subject, and read them back."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from bridge.config import BridgeSettings, ConsumerSettings, DatabaseSettings, KafkaSettings, RelaySettings
from bridge.contracts import Contracts
from bridge.kafka.confluent import ConfluentClients
from bridge.outbox import EventSpec, Outbox
from bridge.relay import Relay
from bridge.wiring import build_relay
from support.process import BridgeProcess, running

CONTRACTS = Contracts.load()
#: A registered type with no payload schema and no consumers: any object payload is valid.
BULK_TYPE = "lesson.scheduled"
BULK_PRODUCER = "delivery"


@dataclass
class Env:
    """Where one test's relay works: its database, schema, topic prefix and broker."""

    database_url: str
    schema: str
    prefix: str
    bootstrap: str

    def topic(self, event_type: str = BULK_TYPE) -> str:
        return f"{self.prefix}{event_type}"

    def outbox(self, producer: str = BULK_PRODUCER, **kwargs) -> Outbox:
        return Outbox(CONTRACTS, producer, schema=self.schema, **kwargs)

    def settings(
        self, *, relay: dict[str, Any] | None = None, consumer: dict[str, Any] | None = None, **top: Any
    ) -> BridgeSettings:
        """Settings for a library relay or consumer of this test (fast polls, a short session)."""
        relay_settings = {"idle_interval": 0.05, "standby_interval": 0.3, "stats_interval": 0.5, **(relay or {})}
        consumer_settings = {"session_timeout_ms": 6000, "backoff_initial": 0.1, "backoff_max": 0.5, **(consumer or {})}
        return BridgeSettings(
            database=DatabaseSettings(url=SecretStr(self.database_url), schema_name=self.schema),
            kafka=KafkaSettings(bootstrap_servers=self.bootstrap),
            relay=RelaySettings(**relay_settings),
            consumer=ConsumerSettings(**consumer_settings),
            topic_prefix=self.prefix,
            **top,
        )

    def clients(self, **settings: Any) -> ConfluentClients:
        return ConfluentClients(self.settings(**settings))

    def environ(self, **extra: str) -> dict[str, str]:
        """Settings for a ``bridge relay`` process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DATABASE__URL=self.database_url,
            BRIDGE_DATABASE__SCHEMA_NAME=self.schema,
            BRIDGE_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            BRIDGE_TOPIC_PREFIX=self.prefix,
            BRIDGE_RELAY__IDLE_INTERVAL="0.05",
            BRIDGE_RELAY__STANDBY_INTERVAL="0.3",
        )
        env.update(extra)
        return env

    def outbox_count(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{self.schema}".outbox').fetchone()
        assert row is not None
        count: int = row[0]
        return count


@contextmanager
def relay_thread(env: Env, settings: BridgeSettings | None = None, **relay_settings: Any) -> Iterator[Relay]:
    """A library relay running in a thread, stopped gracefully on exit (``relay_settings``:
    BRIDGE_RELAY__*, or whole ``settings``)."""
    relay = build_relay(settings or env.settings(relay=relay_settings))
    with running(relay):
        yield relay


class RelayProcess(BridgeProcess):
    """``python -m bridge relay`` as a real process, so it can be SIGKILLed."""

    def __init__(self, env: Env, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(log_dir, "relay")
        self.env = env
        self.extra_env = extra_env or {}

    def command(self) -> list[str]:
        return ["relay", "--log-level", "INFO"]

    def environ(self) -> dict[str, str]:
        return self.env.environ(**self.extra_env)

    def start_leading(self, timeout: float = 60) -> RelayProcess:
        """Start, and wait until this process leads (its signal handlers are installed by then)."""
        leading = self.log().count("leading the outbox") if self.starts else 0
        self.start()
        wait_until(
            lambda: self.log().count("leading the outbox") > leading, timeout=timeout, message="the relay to lead"
        )
        return self


def emit_numbered(
    env: Env, subjects: list[str], per_subject: int, *, batch: int = 100, counters: dict[str, int] | None = None
) -> list[str]:
    """Emit ``per_subject`` events for each subject, payload {"seq": n} numbered 1.. per subject in
    commit order (one writer per subject). Returns the event ids."""
    outbox = env.outbox()
    counters = counters if counters is not None else {}
    specs = []
    for _ in range(per_subject):
        for subject in subjects:
            counters[subject] = counters.get(subject, 0) + 1
            specs.append(EventSpec(BULK_TYPE, 1, subject, "tenant-a", {"seq": counters[subject]}))
    ids = []
    with psycopg.connect(env.database_url) as conn:
        for start in range(0, len(specs), batch):
            ids += [e.event_id for e in outbox.emit_batch(conn, specs[start : start + batch])]
            conn.commit()
    return ids


def seq_of(record) -> int:
    seq: int = json.loads(record.value)["payload"]["seq"]
    return seq


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")
