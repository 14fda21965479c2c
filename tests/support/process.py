"""Running bridge's workers in tests: in a thread (:func:`running`), or as a ``python -m bridge …``
child process that a test can start, SIGKILL, SIGTERM and read (:class:`BridgeProcess`)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bridge.lifecycle import Service, ServiceThread

Worker = TypeVar("Worker", bound=Service)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """Run a relay, consumer runner or sink in a thread; stop it gracefully on exit. The test fails
    if the service does not stop, or if it crashed (its exception is raised here)."""
    thread = ServiceThread(worker).start()
    try:
        yield worker
    finally:
        thread.stop(timeout=60)


@dataclass
class BridgeProcess:
    """Subclasses say which command (:meth:`command`) and environment (:meth:`environ`)."""

    log_dir: Path
    name: str = "bridge"
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        raise NotImplementedError

    def cwd(self) -> Path | None:
        return None

    def start(self):
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", *self.command()],
            env=self.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd(),
        )
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def current_log(self) -> str:
        """The log of the latest start."""
        return (self.log_dir / f"{self.name}-{self.starts}.log").read_text(errors="replace") if self.starts else ""

    def log(self) -> str:
        return "\n".join(
            (self.log_dir / f"{self.name}-{i}.log").read_text(errors="replace") for i in range(1, self.starts + 1)
        )
