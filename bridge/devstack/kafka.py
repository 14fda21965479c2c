"""Apache Kafka (KRaft, one process as broker and controller) from the release jars on Maven Central.

The jars are fetched once with the machine's Maven (``mvn dependency:copy-dependencies`` on a
generated POM) into ``~/.cache/bridge/kafka-<version>/libs`` and reused by later runs. The version
is pinned here, in :data:`KAFKA_VERSION`, and nowhere else.

``ensure_jars()`` fetches them (``make test`` calls it up front; ``python -m bridge.devstack.kafka fetch`` too).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.devstack.process import free_port, port_open, run_checked, spawn, stop_process, wait_for, work_dir
from bridge.errors import ServiceError

__all__ = ["KAFKA_VERSION", "KafkaServer", "broker_ready", "ensure_jars", "jars_dir", "java_binary", "log4j_config"]

#: The Apache Kafka release the tests and the dev stack run. The one place it is pinned.
KAFKA_VERSION = "4.1.1"
_SCALA = "2.13"
_LOG4J = "2.24.3"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>bridge.devstack</groupId><artifactId>kafka-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J_CONFIG = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: org.apache.kafka.clients
        level: WARN
      - name: kafka.log
        level: WARN
      - name: org.apache.kafka.storage
        level: WARN
"""


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bridge" / f"kafka-{version}" / "libs"


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Return the directory of the Kafka jars, downloading them with Maven on first use."""
    target = jars_dir(version)
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "Maven (mvn) is needed to fetch the Apache Kafka jars from Maven Central: install it "
            "(Debian: apt-get install maven), or set BRIDGE_TEST_KAFKA_BOOTSTRAP to use an existing broker"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=target.parent))
    try:
        (work / "pom.xml").write_text(_POM.format(scala=_SCALA, kafka=version, log4j=_LOG4J))
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={work / 'libs'}",
            "-DincludeScope=runtime",
        ]
        run_checked(f"Maven download of Apache Kafka {version}", command, work / "mvn.log", timeout=600)
        (work / "libs" / ".complete").write_text(version)
        # Rename into place last, so a run killed half-way never leaves a half-filled cache.
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work / "libs", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def log4j_config() -> str:
    """The brokers' log4j2 configuration: INFO to stdout (the node's log file), client noise at WARN."""
    return _LOG4J_CONFIG


def broker_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a broker answers a metadata request at ``bootstrap``."""
    from bridge.kafka.confluent import brokers_answer

    return brokers_answer(bootstrap, timeout)


@dataclass
class KafkaServer:
    """A running single-node KRaft Kafka on free loopback ports. Use :meth:`start`, then :meth:`stop`."""

    base_dir: Path
    port: int
    controller_port: int
    libs: Path
    owns_base_dir: bool = True
    #: The address the client listener binds and advertises (the controller's stays on loopback).
    host: str = "127.0.0.1"
    #: More broker settings (server.properties), over the defaults.
    extra_settings: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _command: list[str] = field(default_factory=list, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "kafka.log"

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        *,
        timeout: float = 90,
        port: int | None = None,
        controller_port: int | None = None,
        host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
    ) -> KafkaServer:
        """Format the storage and start the broker; raise :class:`ServiceError` naming the log on failure.

        Given a ``base_dir`` that already holds a formatted broker, it starts that broker again, with
        its data (on ``port`` and ``controller_port`` when given). ``host``: the address clients
        connect to (another local address than loopback, say, for clients in a network namespace);
        ``settings``: more broker settings."""
        libs = ensure_jars()
        java = java_binary()
        base, owns = work_dir(base_dir, "bridge-kafka-")
        server = cls(
            base,
            port or free_port(),
            controller_port or free_port(),
            libs,
            owns_base_dir=owns,
            host=host,
            extra_settings=dict(settings or {}),
        )
        server._command = server._java_command(java)
        if (base / "data" / "meta.properties").exists():
            server._write_config()
            server._launch(timeout)
            return server
        server._write_config()
        # As --cluster-id=…: a random id may start with "-", which argparse would take for an option.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        format_command = [
            java,
            "-cp",
            f"{libs}/*",
            f"-Dlog4j2.configurationFile={base / 'log4j2.yaml'}",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(base / "server.properties"),
        ]
        run_checked("Kafka storage format", format_command, server.log_file, timeout=120)
        server._launch(timeout)
        return server

    def _java_command(self, java: str) -> list[str]:
        return [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.base_dir / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(self.base_dir / "server.properties"),
        ]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _write_config(self) -> None:
        (self.base_dir / "log4j2.yaml").write_text(log4j_config())
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.base_dir / "data"),
            # The relay must never rely on auto-creation (docs/design.md), so the test broker refuses it.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "delete.topic.enable": "true",
            **self.extra_settings,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        (self.base_dir / "server.properties").write_text("\n".join(lines) + "\n")

    def _launch(self, timeout: float) -> None:
        self._process = spawn(self._command, self.log_file)
        wait_for(
            f"Apache Kafka {KAFKA_VERSION}",
            lambda: port_open(self.port, self.host) and broker_ready(self.bootstrap_servers),
            command=self._command,
            log_file=self.log_file,
            process=self._process,
            timeout=timeout,
        )

    def stop(self, *, remove: bool = True) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s) and delete its data when this object made it."""
        stop_process(self._process, timeout=30)
        self._process = None
        if remove and self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the broker (a crash); :meth:`restart` brings it back with its data."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def restart(self, timeout: float = 90) -> None:
        """Stop and start again on the same ports and data (for broker-outage tests)."""
        self.stop(remove=False)
        self._launch(timeout)


def java_binary() -> str:
    """The JDK's ``java``: ``$JAVA_HOME/bin/java``, else the one on the PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError(
            "Java 17+ is needed to run Apache Kafka from its jars: install a JDK (Debian: apt-get install "
            "default-jre-headless) or set BRIDGE_TEST_KAFKA_BOOTSTRAP / BRIDGE_TEST_BROKER=tansu"
        )
    return java


def _main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        print(ensure_jars())
        return 0
    if argv[:1] == ["version"]:
        print(KAFKA_VERSION)
        return 0
    print("usage: python -m bridge.devstack.kafka fetch|version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
