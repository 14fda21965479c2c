"""The chaos suite's driver: the whole bridge under faults, then every guarantee checked.

``python -m chaos.driver`` (``tests`` on PYTHONPATH) or ``make chaos`` (through pytest). It starts
its own PostgreSQL (``synchronous_commit=on``, checked) and Apache Kafka, and runs, as real
processes:

- ``emitters`` processes emitting ``coach.assigned`` in real transactions, a few rolled back
  (:mod:`chaos.emitter`);
- two ``bridge relay`` processes on the outbox (one leads, one stands by);
- a consumer group of three ``bridge consume chaos.app:app`` processes applying to PostgreSQL
  through the inbox (:mod:`chaos.app`), with the default session settings;

and injects, one after the other while the events flow: a relay SIGKILL before every other fault
(the loop), poison of every kind written straight to the topics (oversized records included),
consumer SIGKILLs, a broker ``kill -9`` and restart on the same port and data, a PostgreSQL
immediate restart, ``pg_terminate_backend`` of the leading relay's session, and — where the machine
allows (root, ``ip netns``, ``nft``) — network partitions that drop the packets between a relay and
the broker and between a consumer and PostgreSQL (:mod:`chaos.netns`).

After each fault it measures the recovery: the time from the fault's end until an event committed
afterwards on every partition has been applied. A consumer SIGKILL also gives the failover: the
time until the other members were assigned its partitions (their logs), and until they applied
records of them (the database).

Then it checks, from the database, the topics and the DLQ topics: every committed event on its
topic at least once; per subject, first copies in commit order; every committed event applied
exactly once, in per-subject order; no rolled-back event anywhere; every poison on its DLQ with the
contract's headers and the expected reason; no other dead letter. The figures are printed as a
table and as one JSON line (``CHAOS_RESULT {...}``).

Size: ``CHAOS_SECONDS`` (the fault phase, default 240 s: the faults are injected in turn, over and
over, until it has passed and every kind was injected at least once) and ``CHAOS_EVENTS`` (default
30,000: the emitters' pace is ``CHAOS_EVENTS / CHAOS_SECONDS`` events per second, and they emit for
as long as the faults last). A run of ``CHAOS_SECONDS`` < 180 (CI) has shorter network partitions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from support.kafka import Record, read_all

from bridge.consumer import ConsumerApp
from bridge.contracts import Contracts
from bridge.devstack import KafkaServer, PostgresServer
from bridge.envelope import Envelope
from bridge.ids import new_event_id
from bridge.kafka.memory import partition_for
from bridge.outbox import Outbox, migrate
from bridge.signing import Signer
from chaos import netns
from chaos.app import APPLIED_TABLE
from chaos.emitter import EVENT_TYPE, PRODUCER, emit_transaction

__all__ = ["FAILOVER_BOUND", "ChaosConfig", "ChaosRun", "Figures", "report"]

TESTS = Path(__file__).resolve().parents[1]
CONTRACTS = Contracts.load()
SCHEMA = "chaos"
PREFIX = "chaos."
CONSUMER = "coaching"
MAIN_TOPIC = f"{PREFIX}{EVENT_TYPE}"
SIGNING_KEYS = {"chaos-k1": "chaos-secret-1"}
#: The bound issue 15 sets on a dead consumer's failover, in seconds.
FAILOVER_BOUND = 15.0
#: Headers every dead letter must carry (docs/design.md, "Wire contract").
DLQ_CONTRACT_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.consumer",
    "dlq.error.class",
    "dlq.error.message",
    "dlq.attempts",
    "dlq.failed_at",
    "dlq.reason",
)


@dataclass
class ChaosConfig:
    events: int = 30_000
    seconds: float = 240.0
    emitters: int = 3
    subjects: int = 300
    partitions: int = 12
    rollback: float = 0.05
    #: Use network namespaces for partitions when the machine allows.
    partitions_faults: bool = True
    workdir: Path | None = None
    #: More broker settings, and more settings (environment) of the consumer processes.
    broker_settings: dict[str, str] = field(default_factory=dict)
    consumer_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> ChaosConfig:
        return cls(
            events=int(os.environ.get("CHAOS_EVENTS", "30000")),
            seconds=float(os.environ.get("CHAOS_SECONDS", "240")),
        )

    @property
    def full(self) -> bool:
        return self.seconds >= 180

    @property
    def partition_seconds(self) -> float:
        return 8.0 if self.full else 4.0


# --- processes ---------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process (``python -m bridge …`` or a chaos module), maybe inside a network namespace."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Proc:
        self.starts += 1
        log = open(self.log_path(self.starts), "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [*self.prefix, *self.argv], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=TESTS
        )
        log.close()
        return self

    def log_path(self, start: int) -> Path:
        return self.log_dir / f"{self.name}-{start}.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int | None:
        if not self.alive():
            return self.process.returncode if self.process is not None else None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def json_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines of every start, each with ``t`` (epoch seconds) and ``start``."""
        lines = []
        for start in range(1, self.starts + 1):
            with contextlib.suppress(OSError):
                for raw in self.log_path(start).read_text(errors="replace").splitlines():
                    if raw.startswith("{"):
                        try:
                            entry = json.loads(raw)
                        except ValueError:
                            continue
                        entry["t"] = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
                        entry["start"] = start
                        lines.append(entry)
        return lines

    def text(self) -> str:
        return "\n".join(
            self.log_path(s).read_text(errors="replace") for s in range(1, self.starts + 1) if self.log_path(s).exists()
        )


def _partitions_in(message: str, verb: str) -> set[str]:
    """``consumer coaching: assigned chaos.coach.assigned/0, …`` → {"chaos.coach.assigned/0", …}."""
    marker = f": {verb} "
    if marker not in message:
        return set()
    listed = message.split(marker, 1)[1]
    return set() if listed == "nothing" else {p.strip() for p in listed.split(",")}


@dataclass
class Member:
    """One consumer process of the group."""

    proc: Proc

    def assignment_events(self) -> list[tuple[float, str, set[str]]]:
        events = []
        for entry in self.proc.json_lines():
            message = entry.get("message", "")
            for verb in ("assigned", "revoked"):
                partitions = _partitions_in(message, verb)
                if message.startswith("consumer ") and partitions:
                    events.append((entry["t"], verb, partitions))
        return events

    def assignment(self) -> set[str]:
        """What the current process holds (its log since it last started)."""
        held: set[str] = set()
        for entry in self.proc.json_lines():
            if entry["start"] != self.proc.starts:
                continue
            message = entry.get("message", "")
            held |= _partitions_in(message, "assigned")
            held -= _partitions_in(message, "revoked")
        return held


# --- figures -----------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    started: float
    healed: float = 0.0
    recovered: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "down_s": round(self.healed - self.started, 2),
            "recovery_s": None if self.recovered is None else round(self.recovered - self.healed, 2),
            **self.details,
        }


@dataclass
class Figures:
    config: dict[str, Any]
    faults: list[Fault] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failovers(self) -> list[dict[str, Any]]:
        return [f.details for f in self.faults if f.kind == "consumer SIGKILL"]

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            **self.counts,
            "faults": [f.row() for f in self.faults],
            "fault_counts": dict(Counter(f.kind for f in self.faults)),
            "consumer_failover_s": [f.get("reassigned_s") for f in self.failovers()],
            "consumer_failover_applied_s": [f.get("applied_by_others_s") for f in self.failovers()],
            "violations": self.violations,
            "skipped_faults": self.skipped,
            "notes": self.notes,
        }

    def table(self) -> str:
        data = self.as_json()
        lines = ["", "chaos run", "=" * 78]
        for key in (
            "duration_s",
            "events_committed",
            "events_rolled_back",
            "events_uncertain_commit",
            "topic_records",
            "duplicates_on_topic",
            "lost",
            "reordered",
            "applied",
            "double_applied",
            "not_applied",
            "applied_out_of_order",
            "rolled_back_seen",
            "phantoms",
            "poison_injected",
            "poison_dead_lettered",
            "unexpected_dead_letters",
            "rebalances",
            "rebalances_under_normal_load",
            "commit_to_applied_p50_s",
            "commit_to_applied_p99_s",
            "commit_to_applied_max_s",
            "synchronous_commit",
        ):
            lines.append(f"{key:<32} {data.get(key)}")
        lines.append(f"{'consumer failover (reassigned) s':<32} {data['consumer_failover_s']}")
        lines.append(f"{'consumer failover (applied) s':<32} {data['consumer_failover_applied_s']}")
        lines.append("-" * 78)
        lines.append(f"{'fault':<34}{'down s':>8}{'recovery s':>12}  details")
        for fault in self.faults:
            row = fault.row()
            extra = {k: v for k, v in row.items() if k not in ("kind", "down_s", "recovery_s")}
            recovery = "-" if row["recovery_s"] is None else f"{row['recovery_s']:.2f}"
            lines.append(f"{row['kind']:<34}{row['down_s']:>8.2f}{recovery:>12}  {json.dumps(extra) if extra else ''}")
        for skipped in self.skipped:
            lines.append(f"SKIPPED: {skipped}")
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("-" * 78)
        lines.append("violations: " + ("none" if not self.violations else ""))
        lines += [f"  - {v}" for v in self.violations[:50]]
        return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Poison:
    kind: str
    topic: str
    partition: int
    offset: int
    reason: str
    value_kept: bool | None = None  # oversized ones: the value as it was (True) or a marker (False)
    event_id: str | None = None


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.base = Path(config.workdir or tempfile.mkdtemp(prefix="bridge-chaos-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # PostgreSQL runs as another user when this runs as root
        (self.base / "logs").mkdir(exist_ok=True)
        self.network: netns.Network | None = None
        self.ns_relay: netns.Namespace | None = None
        self.ns_consumer: netns.Namespace | None = None
        self.host = "127.0.0.1"
        self.pg: PostgresServer | None = None
        self.kafka: KafkaServer | None = None
        self.relays: dict[str, Proc] = {}
        self.members: dict[str, Member] = {}
        self.emitters: list[Proc] = []
        self.poison: list[Poison] = []
        self.probe_count = 0
        self.quiet_windows: list[tuple[float, float]] = []
        self.figures = Figures(config={"events": config.events, "seconds": config.seconds})
        self.outbox = Outbox(CONTRACTS, PRODUCER, schema=SCHEMA)
        self._probe_subjects: dict[int, Iterator[str]] = {}

    # --- set-up ---

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return self.kafka.bootstrap_servers

    def url(self, user: str = "bridge") -> str:
        assert self.pg is not None
        return f"postgresql://{user}@{self.host}:{self.pg.port}/postgres"

    def start_services(self) -> None:
        reason = netns.unavailable() if self.config.partitions_faults else "disabled by the configuration"
        if reason is None:
            self.network = netns.Network()
            self.ns_relay = self.network.namespace("r")
            self.ns_consumer = self.network.namespace("c")
            self.host = netns.SERVICE_IP
        else:
            self.figures.skipped.append(f"network partitions: {reason}")
            print(f"chaos: network partitions skipped: {reason}", flush=True)
        trust = ("10.231.0.0/16",) if self.network is not None else ()
        listen = (netns.SERVICE_IP,) if self.network is not None else ()
        self.pg = PostgresServer.start(self.base / "postgres", listen=listen, trust=trust)
        self.kafka = KafkaServer.start(self.base / "kafka", host=self.host, settings=self.config.broker_settings)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            setting = conn.execute("SHOW synchronous_commit").fetchone()
            self.figures.counts["synchronous_commit"] = setting[0] if setting else None
            if self.figures.counts["synchronous_commit"] != "on":
                self.figures.violations.append(
                    f"PostgreSQL runs with synchronous_commit={self.figures.counts['synchronous_commit']}: "
                    "an immediate restart could lose acknowledged commits"
                )
            for role in ("relay_a", "relay_b"):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
            migrate(conn, SCHEMA)
            conn.execute(
                sql.SQL("CREATE TABLE {}.subjects (subject text PRIMARY KEY, seq int NOT NULL)").format(
                    sql.Identifier(SCHEMA)
                )
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.writes (event_id text PRIMARY KEY, subject text NOT NULL, seq int NOT NULL)"
                ).format(sql.Identifier(SCHEMA))
            )
            conn.execute(sql.SQL(APPLIED_TABLE).format(sql.Identifier(SCHEMA)))
            conn.execute(sql.SQL("CREATE INDEX ON {}.applied (event_id)").format(sql.Identifier(SCHEMA)))
        self._create_topics()

    def _subscribed_topics(self) -> list[str]:
        return [f"{PREFIX}{t}" for t in ConsumerApp(CONSUMER, contracts=CONTRACTS).subscriptions]

    def _create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topics = [NewTopic(MAIN_TOPIC, num_partitions=self.config.partitions, replication_factor=1)]
        for topic in self._subscribed_topics():
            if topic != MAIN_TOPIC:
                topics.append(NewTopic(topic, num_partitions=1, replication_factor=1))
            topics.append(NewTopic(f"{topic}.dlq.{CONSUMER}", num_partitions=1, replication_factor=1))
        topics.append(NewTopic(f"{PREFIX}{CONSUMER}.dlq-replay", num_partitions=1, replication_factor=1))
        for future in admin.create_topics(topics, operation_timeout=30).values():
            future.result(timeout=60)

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "CHAOS_"))}
        env.update(
            BRIDGE_DATABASE__URL=self.url(),
            BRIDGE_DATABASE__SCHEMA_NAME=SCHEMA,
            BRIDGE_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            BRIDGE_TOPIC_PREFIX=PREFIX,
            BRIDGE_LOG_FORMAT="json",
            BRIDGE_SIGNING__KEYS=json.dumps(SIGNING_KEYS),
            PYTHONPATH=str(TESTS),
        )
        env.update(extra)
        return env

    def start_relays(self) -> None:
        for name, role, ns in (("relay_a", "relay_a", None), ("relay_b", "relay_b", self.ns_relay)):
            env = self._env(
                BRIDGE_DATABASE__URL=self.url(role), BRIDGE_SIGNING__SIGN_WITH=json.dumps(list(SIGNING_KEYS))
            )
            self.relays[name] = Proc(
                name,
                [sys.executable, "-m", "bridge", "relay"],
                env,
                self.base / "logs",
                prefix=ns.prefix() if ns is not None else [],
            ).start()
            self.wait(lambda: self.leader() is not None, 60, "a relay to lead")

    def start_consumers(self) -> None:
        for index in (1, 2, 3):
            name = f"consumer_{index}"
            ns = self.ns_consumer if index == 3 else None
            env = self._env(BRIDGE_SIGNING__REQUIRED="true", CHAOS_MEMBER=name, **self.config.consumer_env)
            proc = Proc(
                name,
                [sys.executable, "-m", "bridge", "consume", "chaos.app:app"],
                env,
                self.base / "logs",
                prefix=ns.prefix() if ns is not None else [],
            )
            self.members[name] = Member(proc.start())
        self.wait_group_stable()

    def wait_group_stable(self, quiet: float = 4.0, timeout: float = 90) -> None:
        """Until every member holds partitions and no assignment changed for ``quiet`` seconds."""
        total = self.config.partitions

        def stable() -> bool:
            held = [
                {p for p in m.assignment() if p.startswith(f"{MAIN_TOPIC}/")}
                for m in self.members.values()
                if m.proc.alive()
            ]
            if sum(len(h) for h in held) != total or any(not h for h in held):
                return False
            last = max((t for m in self.members.values() for t, _, _ in m.assignment_events()), default=0.0)
            return time.time() - last >= quiet

        self.wait(stable, timeout, "the consumer group to settle")

    @property
    def stop_file(self) -> Path:
        return self.base / "stop-emitting"

    def start_emitters(self) -> None:
        rate = self.config.events / self.config.seconds / self.config.emitters
        for index in range(self.config.emitters):
            log = self.base / "logs" / f"emitter_{index + 1}.jsonl"
            argv = [
                sys.executable,
                "-m",
                "chaos.emitter",
                "--url",
                self.url(),
                "--schema",
                SCHEMA,
                "--stop-file",
                str(self.stop_file),
                "--rate",
                f"{rate:.3f}",
                "--subjects",
                str(self.config.subjects),
                "--rollback",
                str(self.config.rollback),
                "--seed",
                str(index + 1),
                "--log",
                str(log),
            ]
            self.emitters.append(Proc(f"emitter_{index + 1}", argv, self._env(), self.base / "logs").start())

    # --- helpers ---

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return time.time()
            except (psycopg.Error, OSError):
                pass
            time.sleep(interval)
        raise AssertionError(f"chaos: timed out after {timeout:.0f} s waiting for {what}")

    def query(self, statement: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=3) as conn:
            return conn.execute(cast(Any, statement), params).fetchall()

    def leader(self) -> str | None:
        """The relay role whose session holds the outbox's leadership lock."""
        rows = self.query(
            "SELECT a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND a.application_name = 'bridge-relay'"
        )
        return rows[0][0] if rows else None

    def probe_subject(self, partition: int) -> str:
        if partition not in self._probe_subjects:

            def subjects(p: int = partition) -> Iterator[str]:
                n = 0
                while True:
                    n += 1
                    subject = f"probe-{n}"
                    if partition_for(subject.encode(), self.config.partitions) == p:
                        yield subject

            self._probe_subjects[partition] = subjects()
        return next(self._probe_subjects[partition])

    def emit_probes(self, timeout: float = 120) -> list[str]:
        """One event per partition, committed (waiting out a database outage); their ids."""
        subjects = [self.probe_subject(p) for p in range(self.config.partitions)]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=3) as conn:
                    ids = emit_transaction(conn, self.outbox, SCHEMA, subjects)
                    conn.commit()
                    self.probe_count += len(ids)
                    return ids
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def recovery(self, fault: Fault, timeout: float = 180, during: list[str] | None = None) -> None:
        """Probe every partition after the fault healed; record when all probes (and those emitted
        ``during`` the fault) were applied."""
        ids = [*(during or []), *self.emit_probes()]
        placeholders = sql.SQL(", ").join(sql.Literal(i) for i in ids)
        statement = sql.SQL(
            "SELECT count(DISTINCT event_id), max(applied_at) FROM {}.applied WHERE event_id IN ({})"
        ).format(sql.Identifier(SCHEMA), placeholders)
        result: dict[str, Any] = {}

        def applied() -> bool:
            count, last = self.query(statement)[0]
            result["last"] = last
            return bool(count == len(ids))

        try:
            self.wait(applied, timeout, f"recovery after {fault.kind}", interval=0.2)
            fault.recovered = max(result["last"].timestamp(), fault.healed)
        except AssertionError as exc:
            self.figures.violations.append(str(exc))

    def record(self, fault: Fault) -> Fault:
        self.figures.faults.append(fault)
        row = fault.row()
        print(f"chaos: {row}", flush=True)
        return fault

    # --- faults ---

    def relay_kill(self, *, target: str | None = None) -> Fault:
        leader = target or self.leader()
        if leader is None:
            self.wait(lambda: self.leader() is not None, 60, "a relay leader")
            leader = self.leader()
        assert leader is not None
        proc = self.relays[leader]
        fault = Fault("relay SIGKILL", time.time(), details={"relay": leader})
        proc.kill()
        fault.healed = fault.started
        proc.start()  # back as a standby
        took_over = self.wait(lambda: self.leader() is not None, 60, "a new relay leader")
        fault.details["leader_failover_s"] = round(took_over - fault.started, 2)
        fault.details["new_leader"] = self.leader()
        self.recovery(fault)
        return self.record(fault)

    def terminate_leader_session(self) -> Fault:
        self.wait(lambda: self.leader() is not None, 60, "a relay leader")
        fault = Fault("pg_terminate_backend(leader)", time.time())
        rows = self.query(
            "SELECT a.usename, pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND a.application_name = 'bridge-relay'"
        )
        fault.healed = fault.started
        fault.details["relay"] = rows[0][0] if rows else None
        took_over = self.wait(lambda: self.leader() is not None, 60, "leadership again")
        fault.details["leader_again_s"] = round(took_over - fault.started, 2)
        fault.details["new_leader"] = self.leader()
        self.recovery(fault)
        return self.record(fault)

    def broker_kill(self) -> Fault:
        assert self.kafka is not None
        fault = Fault("broker kill -9 + restart", time.time())
        self.kafka.kill()
        time.sleep(3.0)
        self.kafka.restart()
        fault.healed = time.time()
        self.recovery(fault)
        return self.record(fault)

    def postgres_restart(self) -> Fault:
        assert self.pg is not None
        fault = Fault("PostgreSQL immediate restart", time.time())
        self.pg.restart(mode="immediate")
        fault.healed = time.time()
        self.recovery(fault)
        return self.record(fault)

    def consumer_kill(self, name: str) -> Fault:
        member = self.members[name]
        survivors = [m for n, m in self.members.items() if n != name]
        held = member.assignment()
        main = {p for p in held if p.startswith(f"{MAIN_TOPIC}/")}
        fault = Fault("consumer SIGKILL", time.time(), details={"member": name, "partitions": len(main)})
        member.proc.kill()
        fault.healed = fault.started

        def taken_at() -> dict[str, float]:
            first: dict[str, float] = {}
            for survivor in survivors:
                for t, verb, partitions in survivor.assignment_events():
                    if verb == "assigned" and t >= fault.started:
                        for p in partitions & held:
                            first[p] = min(first.get(p, t), t)
            return first

        try:
            self.wait(lambda: set(taken_at()) >= held, 60, f"the partitions of {name} to move", interval=0.2)
            fault.details["reassigned_s"] = round(max(taken_at().values()) - fault.started, 2)
        except AssertionError as exc:
            self.figures.violations.append(str(exc))
        # Records of its partitions applied by the others (the partition of a subject is known).
        numbers = {int(p.rsplit("/", 1)[1]) for p in main}

        def applied_by_others() -> dict[int, float]:
            rows = self.query(
                sql.SQL(
                    "SELECT subject, min(applied_at) FROM {}.applied "
                    "WHERE member <> %s AND applied_at >= to_timestamp(%s) GROUP BY subject"
                ).format(sql.Identifier(SCHEMA)),
                (name, fault.started),
            )
            first: dict[int, float] = {}
            for subject, at in rows:
                p = partition_for(subject.encode(), self.config.partitions)
                if p in numbers:
                    first[p] = min(first.get(p, at.timestamp()), at.timestamp())
            return first

        try:
            self.wait(lambda: set(applied_by_others()) >= numbers, 60, f"records of {name}'s partitions applied")
            fault.details["applied_by_others_s"] = round(max(applied_by_others().values()) - fault.started, 2)
        except AssertionError as exc:
            self.figures.violations.append(str(exc))
        self.recovery(fault)
        member.proc.start()  # it joins again
        self.wait_group_stable(quiet=2.0)
        return self.record(fault)

    def relay_broker_partition(self) -> Fault | None:
        if self.ns_relay is None or self.kafka is None:
            return None
        # The relay in the namespace must be the one publishing.
        if self.leader() != "relay_b":
            self.relay_kill(target=self.leader())
            self.wait(lambda: self.leader() == "relay_b", 30, "relay_b to lead", interval=0.2)
        fault = Fault("partition relay<->broker", time.time(), details={"relay": "relay_b"})
        self.ns_relay.drop(netns.SERVICE_IP, self.kafka.port)
        during = self.emit_probes()  # stuck in the relay until the partition heals
        time.sleep(max(0.0, fault.started + self.config.partition_seconds - time.time()))
        fault.details["dropped_packets"] = self.ns_relay.dropped_packets()
        self.ns_relay.heal()
        fault.healed = time.time()
        self.recovery(fault, during=during)
        return self.record(fault)

    def consumer_postgres_partition(self) -> Fault | None:
        if self.ns_consumer is None or self.pg is None:
            return None
        fault = Fault("partition consumer<->PostgreSQL", time.time(), details={"member": "consumer_3"})
        self.ns_consumer.drop(netns.SERVICE_IP, self.pg.port)
        during = self.emit_probes()  # those on consumer_3's partitions wait for the partition to heal
        time.sleep(max(0.0, fault.started + self.config.partition_seconds - time.time()))
        fault.details["dropped_packets"] = self.ns_consumer.dropped_packets()
        self.ns_consumer.heal()
        fault.healed = time.time()
        self.recovery(fault, during=during)
        return self.record(fault)

    # --- poison ---

    def inject_poison(self) -> Fault:
        fault = Fault("poison (every kind)", time.time())
        signer = Signer(SIGNING_KEYS)
        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random", "message.max.bytes": 4_000_000}
        )
        items: list[tuple[str, str, str, bytes, bytes, list[tuple[str, bytes]], bool | None, str | None]] = []

        def add(
            kind: str,
            reason: str,
            document: dict[str, Any] | bytes,
            *,
            topic: str = MAIN_TOPIC,
            headers: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]] | None = None,
            sign: str = "own",
            value_kept: bool | None = None,
        ) -> None:
            n = len(self.poison) + len(items)
            key = f"poison-{n}".encode()
            if isinstance(document, bytes):
                value, contract = (
                    document,
                    [("event_id", new_event_id().encode()), ("content-type", b"application/json")],
                )
                event_id = None
            else:
                document["subject"] = key.decode()
                value = json.dumps(document, separators=(",", ":")).encode()
                contract = [
                    *(
                        (n_, str(document[n_]).encode())
                        for n_ in ("event_id", "event_type", "schema_version", "producer", "tenant_id")
                    ),
                    ("content-type", b"application/json"),
                ]
                event_id = str(document["event_id"])
            if headers is not None:
                contract = headers(contract)
            if sign == "own":
                contract.append(signer.header(topic, key, value, dict(contract)))
            elif sign == "tampered":
                contract.append(signer.header(topic, key, value + b" ", dict(contract)))
            items.append((kind, reason, topic, key, value, contract, value_kept, event_id))

        def event(
            event_type: str = EVENT_TYPE, version: int = 1, payload: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            now = datetime.now().astimezone()
            document = Envelope(
                event_id=new_event_id(),
                event_type=event_type,
                schema_version=version,
                producer=CONTRACTS.registry.events[event_type].producer,
                tenant_id="chaos",
                subject="x",
                occurred_at=now,
                recorded_at=now,
                payload=payload if payload is not None else {"seq": 1},
            ).to_dict()
            return document

        def sized(document: dict[str, Any], size: int) -> dict[str, Any]:
            document["payload"]["blob"] = ""
            document["subject"] = f"poison-{len(self.poison) + len(items)}"
            base = len(json.dumps(document, separators=(",", ":")).encode())
            document["payload"]["blob"] = "x" * (size - base)
            return document

        def invalid(document: dict[str, Any]) -> dict[str, Any]:
            document["occurred_at"] = "not a timestamp"
            return document

        add("undecodable bytes", "decode", b"\xff\xfe not json")
        add("invalid envelope", "invalid", invalid(event()))
        add(
            "invalid payload",
            "invalid",
            event("credit.locked", payload={"nothing": "valid"}),
            topic=f"{PREFIX}credit.locked",
        )
        add(
            "another type's envelope on the topic",
            "integrity",
            event("credit.locked", payload=self._valid_payload("credit.locked")),
        )
        add(
            "header disagrees (signed)",
            "integrity",
            event(),
            headers=lambda h: [(k, b"sales" if k == "producer" else v) for k, v in h],
        )
        add(
            "event_id header missing (signed)",
            "integrity",
            event(),
            headers=lambda h: [(k, v) for k, v in h if k != "event_id"],
        )
        add("tampered after signing", "signature", event(), sign="tampered")
        add("unsigned", "signature", event(), sign="none")
        add("unknown version", "unhandled", event(version=2))
        add("handler keeps failing", "handler", event(payload={"seq": 1, "chaos": "fail"}))
        add("handler dead-letters", "decision", event(payload={"seq": 1, "chaos": "dead"}))
        add("1,010,000 bytes, invalid", "invalid", sized(invalid(event()), 1_010_000), value_kept=True)
        add("1,048,000 bytes, invalid", "invalid", sized(invalid(event()), 1_048_000), value_kept=False)
        add(
            "996,000 bytes, handler fails",
            "handler",
            sized(event(payload={"seq": 1, "chaos": "fail"}), 996_000),
            value_kept=True,
        )

        reports: dict[int, tuple[int, int]] = {}
        for index, (_, _, topic, key, value, headers, _, _) in enumerate(items):

            def delivered(error: Any, message: Any, index: int = index) -> None:
                if error is not None:
                    raise AssertionError(f"poison not produced: {error}")
                reports[index] = (message.partition(), message.offset())

            producer.produce(topic, key=key, value=value, headers=cast(Any, headers), on_delivery=delivered)
            producer.poll(0)
        assert producer.flush(60) == 0
        for index, (kind, reason, topic, _, _, _, kept, event_id) in enumerate(items):
            partition, offset = reports[index]
            self.poison.append(Poison(kind, topic, partition, offset, reason, kept, event_id))
        fault.healed = time.time()
        fault.details["records"] = len(items)
        self.recovery(fault)
        return self.record(fault)

    @staticmethod
    def _valid_payload(event_type: str) -> dict[str, Any]:
        from support.schemas import example_for

        version = CONTRACTS.registry.lookup(event_type, 1)
        assert version is not None
        schema_file = CONTRACTS.registry.schema_file(version)
        assert schema_file is not None
        payload: dict[str, Any] = example_for(json.loads(schema_file.read_text()))
        return payload

    # --- the schedule ---

    def run_faults(self) -> None:
        full = self.config.full
        steps: list[Callable[[], object]] = [
            self.inject_poison,
            lambda: self.consumer_kill("consumer_1"),
            self.broker_kill,
            self.postgres_restart,
            self.terminate_leader_session,
            self.relay_broker_partition,
            self.consumer_postgres_partition,
        ]
        if full:
            steps.append(lambda: self.consumer_kill("consumer_2"))
        deadline = time.monotonic() + self.config.seconds
        done = 0
        # Round after round until the time is up, every kind at least once; the relay SIGKILL loop
        # puts a relay kill before every other fault.
        while done < len(steps) or time.monotonic() < deadline:
            self.relay_kill()
            steps[done % len(steps)]()
            done += 1
            time.sleep(1.0)

    def quiet_window(self, seconds: float) -> None:
        """Normal load, no fault: the group must not rebalance."""
        start = time.time()
        time.sleep(seconds)
        self.quiet_windows.append((start, time.time()))

    # --- the checks ---

    def drain(self, timeout: float = 300) -> None:
        for emitter in self.emitters:
            assert emitter.process is not None
            if emitter.process.wait(timeout=timeout) != 0:
                self.figures.violations.append(f"{emitter.name} failed: {emitter.text()[-2000:]}")

        def caught_up() -> bool:
            (writes,) = self.query(sql.SQL("SELECT count(*) FROM {}.writes").format(sql.Identifier(SCHEMA)))[0]
            (applied,) = self.query(
                sql.SQL("SELECT count(DISTINCT event_id) FROM {}.applied").format(sql.Identifier(SCHEMA))
            )[0]
            return bool(applied >= writes)

        try:
            self.wait(caught_up, timeout, "every committed event to be applied", interval=0.5)
        except AssertionError as exc:
            self.figures.violations.append(str(exc))
        time.sleep(2.0)  # dead letters still in flight land

    def check(self) -> None:
        counts, violations = self.figures.counts, self.figures.violations
        writes = {
            event_id: (subject, seq)
            for event_id, subject, seq in self.query(
                sql.SQL("SELECT event_id, subject, seq FROM {}.writes").format(sql.Identifier(SCHEMA))
            )
        }
        rolled_back: set[str] = set()
        uncertain: set[str] = set()
        for emitter in self.emitters:
            path = self.base / "logs" / f"{emitter.name}.jsonl"
            for raw in path.read_text().splitlines():
                entry = json.loads(raw)
                rolled_back |= set(entry.get("rolled_back", ()))
                uncertain |= set(entry.get("uncertain", ()))
        counts["events_committed"] = len(writes)
        counts["events_rolled_back"] = len(rolled_back)
        counts["events_uncertain_commit"] = len(uncertain)
        counts["events_uncertain_committed"] = len(uncertain & set(writes))
        counts["probe_events"] = self.probe_count
        if rolled_back & set(writes):
            violations.append(f"{len(rolled_back & set(writes))} rolled-back event(s) in the writes table")
        gone = uncertain - set(writes)  # commits that did not happen: as if rolled back
        never = rolled_back | gone

        # The topic: every committed event at least once, first copies in order per subject.
        poison_at = {(p.topic, p.partition, p.offset) for p in self.poison}
        records = read_all(self.bootstrap, [MAIN_TOPIC], expect=len(writes), timeout=180, settle=3.0)
        counts["topic_records"] = len(records)
        seen: Counter[str] = Counter()
        phantoms = []
        rolled_back_on_topic = 0
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            event_id = record.headers.get("event_id", b"").decode()
            if event_id in writes:
                seen[event_id] += 1
                by_partition[record.partition].append(record)
            elif (record.topic, record.partition, record.offset) in poison_at:
                continue
            elif event_id in never:
                rolled_back_on_topic += 1
                violations.append(f"rolled-back event {event_id} on the topic at {record.partition}/{record.offset}")
            else:
                phantoms.append(f"{record.topic}/{record.partition}/{record.offset}")
        lost = set(writes) - set(seen)
        counts["lost"] = len(lost)
        counts["duplicates_on_topic"] = sum(seen.values()) - len(seen)
        if lost:
            violations.append(f"{len(lost)} committed event(s) never reached the topic, e.g. {sorted(lost)[:3]}")
        reordered = 0
        for partition_records in by_partition.values():
            firsts: dict[str, list[int]] = defaultdict(list)
            met: set[str] = set()
            for record in sorted(partition_records, key=lambda r: r.offset):
                event_id = record.headers["event_id"].decode()
                if event_id not in met:
                    met.add(event_id)
                    subject, seq = writes[event_id]
                    firsts[subject].append(seq)
            for subject, seqs in firsts.items():
                if seqs != sorted(seqs):
                    reordered += 1
                    violations.append(f"first copies of {subject} out of commit order on the topic: {seqs[:20]}")
        counts["reordered"] = reordered

        # The database: each event applied exactly once, per subject in commit order.
        rows = self.query(
            sql.SQL("SELECT event_id, subject, seq FROM {}.applied ORDER BY n").format(sql.Identifier(SCHEMA))
        )
        applied = Counter(r[0] for r in rows)
        counts["applied"] = len(applied)
        double = [e for e, c in applied.items() if c > 1]
        counts["double_applied"] = len(double)
        if double:
            violations.append(f"{len(double)} event(s) applied more than once, e.g. {double[:3]}")
        missing = set(writes) - set(applied)
        counts["not_applied"] = len(missing)
        if missing:
            violations.append(f"{len(missing)} committed event(s) never applied, e.g. {sorted(missing)[:3]}")
        strangers = set(applied) - set(writes)
        counts["rolled_back_seen"] = rolled_back_on_topic + len(strangers & never)
        counts["phantoms"] = len(phantoms) + len(strangers - never)
        if strangers:
            violations.append(f"{len(strangers)} applied event(s) that never committed, e.g. {sorted(strangers)[:3]}")
        if phantoms:
            violations.append(f"{len(phantoms)} record(s) on the topic that no one committed, e.g. {phantoms[:3]}")
        per_subject: dict[str, list[int]] = defaultdict(list)
        for _, subject, seq in rows:
            per_subject[subject].append(seq)
        committed_seqs: dict[str, list[int]] = defaultdict(list)
        for subject, seq in writes.values():
            committed_seqs[subject].append(seq)
        out_of_order = [s for s, seqs in per_subject.items() if seqs != sorted(committed_seqs.get(s, []))]
        counts["applied_out_of_order"] = len(out_of_order)
        for subject in out_of_order[:5]:
            violations.append(
                f"{subject} applied as {per_subject[subject][:20]} (committed: {committed_seqs[subject][:20]})"
            )

        latency = self.query(
            sql.SQL(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
                "(ORDER BY extract(epoch FROM applied_at - recorded_at)), "
                "max(extract(epoch FROM applied_at - recorded_at)) FROM {}.applied"
            ).format(sql.Identifier(SCHEMA))
        )[0]
        counts["commit_to_applied_p50_s"] = round(latency[0][0], 3) if latency[0] else None
        counts["commit_to_applied_p99_s"] = round(latency[0][1], 3) if latency[0] else None
        counts["commit_to_applied_max_s"] = round(float(latency[1]), 3) if latency[1] is not None else None
        self._check_dead_letters()
        self._check_rebalances()

    def _check_dead_letters(self) -> None:
        counts, violations = self.figures.counts, self.figures.violations
        dlqs = [f"{t}.dlq.{CONSUMER}" for t in self._subscribed_topics()]
        letters = read_all(self.bootstrap, dlqs, expect=len(self.poison), timeout=120, settle=3.0)
        found: dict[tuple[str, int, int], list[Record]] = defaultdict(list)
        for letter in letters:
            h = letter.headers
            try:
                where = (
                    h["dlq.original.topic"].decode(),
                    int(h["dlq.original.partition"]),
                    int(h["dlq.original.offset"]),
                )
            except (KeyError, ValueError):
                violations.append(f"a dead letter without its origin headers at {letter.topic}/{letter.offset}")
                continue
            found[where].append(letter)
        counts["poison_injected"] = len(self.poison)
        dead = 0
        for poison in self.poison:
            copies = found.pop((poison.topic, poison.partition, poison.offset), [])
            if not copies:
                violations.append(
                    f"poison '{poison.kind}' ({poison.topic}/{poison.partition}/{poison.offset}) not on its DLQ"
                )
                continue
            dead += 1
            letter = copies[0]
            if letter.topic != f"{poison.topic}.dlq.{CONSUMER}":
                violations.append(f"poison '{poison.kind}' on {letter.topic}, not its own DLQ topic")
            absent = [h for h in DLQ_CONTRACT_HEADERS if h not in letter.headers]
            if absent:
                violations.append(f"poison '{poison.kind}': dead letter without {absent}")
            reason = letter.headers.get("dlq.reason", b"").decode()
            if reason != poison.reason:
                violations.append(f"poison '{poison.kind}': reason {reason!r}, expected {poison.reason!r}")
            if letter.headers.get("dlq.consumer") != CONSUMER.encode():
                violations.append(f"poison '{poison.kind}': dlq.consumer {letter.headers.get('dlq.consumer')!r}")
            if poison.value_kept is not None:
                kept = "dlq.value" not in letter.headers
                if kept != poison.value_kept:
                    violations.append(f"poison '{poison.kind}': value kept={kept}, expected {poison.value_kept}")
                if not kept:
                    marker = json.loads(letter.value or b"{}")
                    if marker.get("original") != {
                        "topic": poison.topic,
                        "partition": poison.partition,
                        "offset": poison.offset,
                    }:
                        violations.append(f"poison '{poison.kind}': marker {marker.get('original')}")
        counts["poison_dead_lettered"] = dead
        counts["unexpected_dead_letters"] = sum(len(v) for v in found.values())
        for where in list(found)[:5]:
            violations.append(f"a record that is not poison was dead-lettered: {where}")
        poison_ids = {p.event_id for p in self.poison if p.event_id}
        applied_poison = self.query(
            sql.SQL("SELECT count(*) FROM {}.applied WHERE event_id = ANY(%s)").format(sql.Identifier(SCHEMA)),
            (list(poison_ids),),
        )[0][0]
        if applied_poison:
            violations.append(f"{applied_poison} poison record(s) applied")

    def _check_rebalances(self) -> None:
        counts = self.figures.counts
        moments = sorted(
            {round(t, 1) for m in self.members.values() for t, verb, _ in m.assignment_events() if verb == "assigned"}
        )
        rebalances = 0
        last = -1e9
        for t in moments:
            if t - last > 3.0:
                rebalances += 1
            last = t
        counts["rebalances"] = rebalances
        during_quiet = [
            (t, m.proc.name)
            for m in self.members.values()
            for t, _, _ in m.assignment_events()
            if any(a <= t <= b for a, b in self.quiet_windows)
        ]
        counts["rebalances_under_normal_load"] = len(during_quiet)
        counts["quiet_windows_s"] = [round(b - a, 1) for a, b in self.quiet_windows]
        if during_quiet:
            self.figures.violations.append(f"the group rebalanced under normal load: {during_quiet[:5]}")

    # --- all of it ---

    def run(self) -> Figures:
        started = time.monotonic()
        try:
            self.start_services()
            self.start_consumers()
            self.start_relays()
            self.start_emitters()
            self.quiet_window(15.0 if self.config.full else 6.0)
            self.run_faults()
            self.quiet_window(10.0 if self.config.full else 4.0)
            self.stop_file.touch()
            self.drain()
            self.stop_processes()
            self.check()
        finally:
            self.figures.counts["duration_s"] = round(time.monotonic() - started, 1)
            self.close()
        return self.figures

    def stop_processes(self) -> None:
        for proc in [*self.relays.values(), *(m.proc for m in self.members.values())]:
            code = proc.terminate(timeout=60)
            if code not in (0, None):
                self.figures.notes.append(f"{proc.name} exited with {code} on SIGTERM")

    def close(self) -> None:
        for proc in [*self.emitters, *self.relays.values(), *(m.proc for m in self.members.values())]:
            proc.kill()
        if self.kafka is not None:
            self.kafka.stop(remove=False)
        if self.pg is not None:
            self.pg.stop(remove=False)
        if self.network is not None:
            self.network.close()
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print(f"chaos: kept {self.base}", flush=True)


def report(figures: Figures) -> str:
    return figures.table() + "\nCHAOS_RESULT " + json.dumps(figures.as_json(), default=str)


def main() -> int:
    config = ChaosConfig.from_environment()
    figures = ChaosRun(config).run()
    print(report(figures), flush=True)
    bad = [f for f in figures.failovers() if (f.get("reassigned_s") or 1e9) > FAILOVER_BOUND]
    return 1 if figures.violations or bad else 0


if __name__ == "__main__":
    sys.exit(main())
