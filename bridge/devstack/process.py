"""Helpers for the local services: free ports, waiting for readiness, failing fast with the log."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridge.errors import ServiceError

__all__ = ["free_port", "log_tail", "run_checked", "service_error", "spawn", "stop_process", "wait_for", "work_dir"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # typeshed says Any; for AF_INET it is (host, port)
        return port


def log_tail(log_file: Path, lines: int = 25) -> str:
    try:
        content = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(content[-lines:]) or "(log is empty)"


def service_error(what: str, command: Sequence[str], log_file: Path, reason: str) -> ServiceError:
    """An error that names the command, the log file and the end of the log."""
    return ServiceError(
        f"{what} {reason}\n  command: {shlex.join(str(c) for c in command)}\n  log: {log_file}\n"
        f"  last lines of the log:\n{_indent(log_tail(log_file))}"
    )


def run_checked(what: str, command: Sequence[str], log_file: Path, *, timeout: float = 120, **kwargs: Any) -> None:
    """Run a set-up command, appending its output to ``log_file``; raise a :class:`ServiceError` on failure."""
    with log_file.open("ab") as log:
        try:
            result = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False, **kwargs
            )
        except FileNotFoundError:
            raise service_error(what, command, log_file, f"could not run: {command[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise service_error(what, command, log_file, f"did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise service_error(what, command, log_file, f"failed with exit code {result.returncode}")


def wait_for(
    what: str,
    ready: Callable[[], bool],
    *,
    command: Sequence[str],
    log_file: Path,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60,
    interval: float = 0.25,
) -> None:
    """Poll ``ready()`` until it is true; fail fast if the process exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise service_error(what, command, log_file, f"exited with code {process.returncode} during start-up")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001, S110 - any failure of a readiness probe means "not yet"
            pass
        if time.monotonic() > deadline:
            raise service_error(what, command, log_file, f"was not ready after {timeout:.0f} s")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def work_dir(base_dir: Path | None, prefix: str) -> tuple[Path, bool]:
    """The given directory (created), or a new temporary one; and whether the caller owns it."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=prefix)) if base_dir is None else Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    return base, base_dir is None


def spawn(command: Sequence[str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start a server process in its own session (it outlives a Ctrl-C of ours), logging to a file."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
