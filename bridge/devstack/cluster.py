"""A multi-node Apache Kafka cluster (KRaft) from the cached release jars, for cluster tests and
``bridge dev up --broker kafka --nodes 3``.

Topology: by default every node is a combined broker and controller (three JVMs for three
brokers, the controller quorum spread over them); ``controllers=1`` runs one more, dedicated
controller instead (four JVMs). The default was chosen by measuring both on a 2-core machine (see
the README, "Running on a Kafka cluster"). Every node listens on its own free loopback ports and
keeps its own data directory, so a node can be SIGKILLed and started again later on the same ports
with the same data (a "bounce"), independently of the others.

The cluster's layout (node ids, roles, ports) is written to ``cluster.json`` in its directory, so
another process (``bridge dev up`` run again) can start a node that died.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bridge.devstack.kafka import KAFKA_VERSION, ensure_jars, java_binary, log4j_config
from bridge.devstack.process import free_port, port_open, run_checked, spawn, wait_for, work_dir
from bridge.errors import ServiceError
from bridge.kafka.records import ClusterInfo

__all__ = ["DEFAULT_HEAP", "DEFAULT_SESSION_TIMEOUT_MS", "KafkaCluster", "KafkaNode"]

#: JVM heap of each node (``-Xmx``; ``-Xms`` is a quarter of it). Measured: see the README.
DEFAULT_HEAP = "320m"
#: How long a broker may go without heartbeating the controller before it is fenced (and its
#: partitions get new leaders). Kafka's default is 9 s; a shorter one makes a bounce cost less.
DEFAULT_SESSION_TIMEOUT_MS = 6000
_LAYOUT = "cluster.json"


@dataclass
class KafkaNode:
    """One KRaft node: a broker, a controller, or both (``roles``)."""

    node_id: int
    roles: str  # "broker,controller" | "broker" | "controller"
    base_dir: Path
    port: int  # the PLAINTEXT listener (0 for a controller-only node)
    controller_port: int  # the CONTROLLER listener (0 for a broker-only node)
    command: list[str] = field(default_factory=list, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: The pid of a node started by another process (the dev stack's state), when ``process`` is None.
    foreign_pid: int = 0

    @property
    def is_broker(self) -> bool:
        return "broker" in self.roles

    @property
    def is_controller(self) -> bool:
        return "controller" in self.roles

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return self.foreign_pid or None

    @property
    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_alive(self.foreign_pid)

    def listening(self) -> bool:
        return port_open(self.port if self.is_broker else self.controller_port)

    def launch(self, timeout: float = 30) -> None:
        """Start the JVM (the storage must be formatted); returns once it is spawned.

        It first waits for the node's ports to be free: the threads of a SIGKILLed JVM can hold its
        sockets a moment after the process shows as ended, and a port answered by the old process
        would pass for the new one being up."""
        if self.alive:
            raise ServiceError(f"Kafka node {self.node_id} is already running (pid {self.pid})")
        ports = [port for port in (self.port, self.controller_port) if port]
        deadline = time.monotonic() + timeout
        while busy := [port for port in ports if port_open(port)]:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"Kafka node {self.node_id}: port(s) {', '.join(map(str, busy))} still in use after "
                    f"{timeout:.0f} s (is the previous process still running?)"
                )
            time.sleep(0.1)
        self.process = spawn(self.command, self.log_file)
        self.foreign_pid = 0

    def kill(self) -> None:
        """SIGKILL (a crash): no clean shutdown, no leadership handed over."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
        elif _pid_alive(self.foreign_pid):
            os.kill(self.foreign_pid, signal.SIGKILL)
            _wait_dead(self.foreign_pid, 10)

    def terminate(self) -> None:
        """SIGTERM (a clean shutdown); returns at once (see :meth:`wait_stopped`)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
        elif _pid_alive(self.foreign_pid):
            os.kill(self.foreign_pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> bool:
        """Whether the node's process ended within ``timeout`` seconds."""
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_dead(self.foreign_pid, timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self.terminate()
        if not self.wait_stopped(timeout):
            self.kill()
        self.forget()

    def forget(self) -> None:
        """Forget a process started elsewhere (it has ended)."""
        if self.process is None:
            self.foreign_pid = 0


@dataclass
class KafkaCluster:
    """A running KRaft cluster on loopback. :meth:`start`, :meth:`kill`/:meth:`restart` a node, :meth:`stop`."""

    base_dir: Path
    nodes: list[KafkaNode]
    owns_base_dir: bool = True
    heap: str = DEFAULT_HEAP

    # --- start and stop ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        *,
        brokers: int = 3,
        controllers: int = 0,
        heap: str = DEFAULT_HEAP,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        timeout: float = 180,
    ) -> KafkaCluster:
        """Format and start a new cluster of ``brokers`` brokers. ``controllers=0``: every broker is
        also a controller; otherwise that many dedicated controllers run beside the brokers.
        Returns once every broker is registered and answers; raises :class:`ServiceError` naming the
        command and log of a node that does not start."""
        if brokers < 1 or controllers < 0:
            raise ServiceError(
                f"a cluster needs at least one broker (asked for {brokers} broker(s) and {controllers} controller(s))"
            )
        libs = ensure_jars()
        java = java_binary()
        base, owns = work_dir(base_dir, "bridge-kafka-cluster-")
        nodes: list[KafkaNode] = []
        for index in range(1, brokers + 1):
            roles = "broker,controller" if controllers == 0 else "broker"
            nodes.append(
                KafkaNode(index, roles, base / f"node-{index}", free_port(), free_port() if controllers == 0 else 0)
            )
        nodes += [
            KafkaNode(index, "controller", base / f"node-{index}", 0, free_port())
            for index in range(brokers + 1, brokers + controllers + 1)
        ]
        cluster = cls(base, nodes, owns_base_dir=owns, heap=heap)
        cluster._configure(java, libs, session_timeout_ms)
        cluster._save_layout(session_timeout_ms)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        try:
            # One JVM per node formats its storage; in parallel, as they do not depend on each other.
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                for result in [pool.submit(cluster._format, node, java, libs, cluster_id) for node in nodes]:
                    result.result()
            for node in nodes:
                node.launch()
            cluster.wait_ready(timeout)
        except BaseException:
            cluster.stop(remove=owns)
            raise
        return cluster

    @classmethod
    def load(cls, base_dir: Path, pids: dict[int, int] | None = None) -> KafkaCluster:
        """The cluster whose layout is in ``base_dir`` (made by :meth:`start`, maybe by another
        process); ``pids`` are the node processes started elsewhere, by node id."""
        layout = json.loads((Path(base_dir) / _LAYOUT).read_text())
        nodes = [
            KafkaNode(n["node_id"], n["roles"], Path(n["base_dir"]), n["port"], n["controller_port"])
            for n in layout["nodes"]
        ]
        cluster = cls(Path(base_dir), nodes, owns_base_dir=False, heap=layout["heap"])
        cluster._configure(java_binary(), ensure_jars(), layout["session_timeout_ms"])
        for node in nodes:
            node.foreign_pid = (pids or {}).get(node.node_id, 0)
        return cluster

    def stop(self, *, remove: bool = True, timeout: float = 20) -> None:
        """Stop every node and delete the data when this object made its directory.

        With the data kept, every node gets SIGTERM at once (a clean shutdown), and SIGKILL after
        ``timeout`` seconds: one at a time, the last combined node would wait for a controller
        quorum that has already gone. When the data goes too, the nodes are simply SIGKILLed."""
        deleting = remove and self.owns_base_dir
        if deleting:
            for node in self.nodes:
                node.kill()
        else:
            for node in self.nodes:
                node.terminate()
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                if not node.wait_stopped(max(0.0, deadline - time.monotonic())):
                    node.kill()
            for node in self.nodes:
                node.forget()
        if deleting:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # --- bounces ----------------------------------------------------------------------------------

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no Kafka node {node_id} in this cluster")

    def kill(self, node_id: int) -> None:
        """SIGKILL one node; :meth:`restart` brings it back on the same ports with its data."""
        self.node(node_id).kill()

    def restart(self, node_id: int, *, timeout: float = 120, wait: bool = True) -> None:
        """Start a node that was killed or stopped, on its ports and with its data. With ``wait``,
        return once it is registered again (a broker) or listening (a controller)."""
        node = self.node(node_id)
        node.stop()
        node.launch()
        if wait:
            self._wait_node(node, timeout)

    # --- what it looks like -----------------------------------------------------------------------

    @property
    def brokers(self) -> list[KafkaNode]:
        return [n for n in self.nodes if n.is_broker]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap for n in self.brokers)

    def live_bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.brokers if n.alive)

    def metadata(self, timeout: float = 5.0) -> ClusterInfo:
        """The cluster's metadata (internal topics included), asked of the brokers that are running."""
        from bridge.kafka.confluent import cluster_metadata

        return cluster_metadata(self.live_bootstrap() or self.bootstrap_servers, timeout)

    def registered_brokers(self, timeout: float = 3.0) -> set[int]:
        """Ids of the brokers the cluster's metadata lists (registered and not fenced)."""
        return {b.id for b in self.metadata(timeout).brokers}

    def leaders(self, topics: Iterable[str], timeout: float = 5.0) -> dict[int, int]:
        """How many partitions of ``topics`` each broker leads (brokers leading none included)."""
        counts = {n.node_id: 0 for n in self.brokers}
        known = self.metadata(timeout).topics
        for name in topics:
            for partition in known[name].partitions.values() if name in known else ():
                if partition.leader >= 0:
                    counts[partition.leader] = counts.get(partition.leader, 0) + 1
        return counts

    def out_of_sync(self, topics: Iterable[str] | None = None, timeout: float = 5.0) -> int:
        """Partitions (of ``topics``, else of every topic, internal ones included) without a leader
        or with fewer replicas in sync than they have."""
        known = self.metadata(timeout).topics
        names = list(topics) if topics is not None else list(known)
        return sum(
            1
            for name in names
            for partition in (known[name].partitions.values() if name in known else ())
            if partition.leader < 0 or partition.under_replicated
        )

    def wait_ready(self, timeout: float = 180) -> None:
        """Until every broker is registered and answers (fails fast naming a node that died)."""
        broker_ids = {n.node_id for n in self.brokers}
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait_node(node, max(1.0, deadline - time.monotonic()), check_registered=False)
        first = self.brokers[0]
        wait_for(
            f"Apache Kafka {KAFKA_VERSION} cluster ({len(broker_ids)} brokers)",
            lambda: self.registered_brokers() >= broker_ids,
            command=first.command,
            log_file=first.log_file,
            process=first.process,
            timeout=max(1.0, deadline - time.monotonic()),
        )

    def wait_in_sync(self, topics: Iterable[str] | None = None, timeout: float = 120) -> None:
        """Until every partition (of ``topics``, else every topic) has a leader and all its replicas in sync."""
        names = list(topics) if topics is not None else None
        first = self.brokers[0]
        wait_for(
            "every partition in sync",
            lambda: self.out_of_sync(names) == 0,
            command=first.command,
            log_file=first.log_file,
            timeout=timeout,
        )

    def rss_mib(self) -> dict[int, float]:
        """Resident memory of each running node, in MiB (from /proc)."""
        sizes = {}
        for node in self.nodes:
            pid = node.pid
            if pid is None or not node.alive:
                continue
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[node.node_id] = int(line.split()[1]) / 1024
            except OSError:
                continue
        return sizes

    # --- internals --------------------------------------------------------------------------------

    def _wait_node(self, node: KafkaNode, timeout: float, *, check_registered: bool = True) -> None:
        def ready() -> bool:
            if not node.listening():
                return False
            return not (check_registered and node.is_broker) or node.node_id in self.registered_brokers()

        wait_for(
            f"Apache Kafka {KAFKA_VERSION} node {node.node_id} ({node.roles})",
            ready,
            command=node.command,
            log_file=node.log_file,
            process=node.process,
            timeout=timeout,
        )

    def _configure(self, java: str, libs: Path, session_timeout_ms: int) -> None:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes if n.is_controller)
        replication = min(3, len(self.brokers))
        for node in self.nodes:
            node.base_dir.mkdir(parents=True, exist_ok=True)
            (node.base_dir / "log4j2.yaml").write_text(log4j_config())
            settings = _node_settings(node, voters, replication, session_timeout_ms)
            lines = [f"{key}={value}" for key, value in settings.items()]
            (node.base_dir / "server.properties").write_text("\n".join(lines) + "\n")
            node.command = _java_command(java, libs, node.base_dir, self.heap)

    def _save_layout(self, session_timeout_ms: int) -> None:
        layout = {
            "heap": self.heap,
            "session_timeout_ms": session_timeout_ms,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "roles": n.roles,
                    "base_dir": str(n.base_dir),
                    "port": n.port,
                    "controller_port": n.controller_port,
                }
                for n in self.nodes
            ],
        }
        (self.base_dir / _LAYOUT).write_text(json.dumps(layout, indent=2))

    @staticmethod
    def _format(node: KafkaNode, java: str, libs: Path, cluster_id: str) -> None:
        command = [
            java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            f"{libs}/*",
            f"-Dlog4j2.configurationFile={node.base_dir / 'log4j2.yaml'}",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",  # as one argument: an id may start with "-"
            "-c",
            str(node.base_dir / "server.properties"),
        ]
        run_checked(f"Kafka storage format of node {node.node_id}", command, node.log_file, timeout=120)


def _node_settings(node: KafkaNode, voters: str, replication: int, session_timeout_ms: int) -> dict[str, str]:
    listeners = []
    if node.is_broker:
        listeners.append(f"PLAINTEXT://127.0.0.1:{node.port}")
    if node.is_controller:
        listeners.append(f"CONTROLLER://127.0.0.1:{node.controller_port}")
    settings = {
        "process.roles": node.roles,
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": ",".join(listeners),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.base_dir / "data"),
        # Fewer threads than Kafka's defaults (sized for servers with many cores): 2 cores here.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "broker.session.timeout.ms": str(session_timeout_ms),
        "broker.heartbeat.interval.ms": str(max(500, session_timeout_ms // 6)),
    }
    if node.is_broker:
        min_isr = str(min(2, replication))
        settings |= {
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            # The relay must never rely on auto-creation (docs/design.md), so the cluster refuses it.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            # Consumer offsets and the other internal topics are replicated like the catalog's.
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "delete.topic.enable": "true",
            "unclean.leader.election.enable": "false",
        }
    return settings


def _java_command(java: str, libs: Path, base_dir: Path, heap: str) -> list[str]:
    initial = _quarter(heap)
    return [
        java,
        f"-Xms{initial}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={base_dir / 'log4j2.yaml'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(base_dir / "server.properties"),
    ]


def _quarter(heap: str) -> str:
    unit = heap[-1].lower()
    if unit in "kmg" and heap[:-1].isdigit():
        return f"{max(16, int(heap[:-1]) * {'k': 1, 'm': 1024, 'g': 1024 * 1024}[unit] // 4096)}m"
    return heap


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False
