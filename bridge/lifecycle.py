"""One lifecycle for every long-running part of bridge (relay, consumer runner, sinks).

A :class:`Service` runs in ``run()`` until ``stop()`` (idempotent, from any thread or a signal
handler) and sets ``started`` once it is up. ``health()`` answers the probes: *alive* means the
loop is turning, *ready* means its dependencies answer (for the relay: it leads or stands by).
The CLI, the demo and the tests all drive services through this shape.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from bridge.clock import Clock, SystemClock

__all__ = ["Health", "Service", "ServiceState", "ServiceThread"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    """What the probes report: ``alive`` (``/healthz``) and ``ready`` (``/readyz``), with why."""

    alive: bool
    ready: bool
    detail: str = ""


class Service(Protocol):
    name: str

    @property
    def started(self) -> threading.Event:
        """Set once the service is up (it may still wait for leadership or partitions)."""
        ...

    def run(self) -> None:
        """Work until stopped; raise on a permanent failure (bad settings, missing schema)."""
        ...

    def stop(self) -> None:
        """Ask ``run()`` to finish its work and return. Idempotent; never blocks."""
        ...

    def health(self) -> Health: ...


class ServiceState:
    """The bookkeeping every service shares: the stop request, the started signal, the heartbeat
    of its loop and its readiness. Services hold one (composition, not a base class)."""

    def __init__(self, name: str, clock: Clock | None = None, *, stall_after: float = 60.0) -> None:
        self.name = name
        self.clock = clock or SystemClock()
        self.stopping = threading.Event()
        self.started = threading.Event()
        self._stall_after = stall_after
        self._beat = self.clock.monotonic()
        self._ready = False
        self._detail = "starting"
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.stopping.set()

    def beat(self) -> None:
        """The loop turned: the service is alive."""
        self._beat = self.clock.monotonic()

    def set_ready(self, ready: bool, detail: str) -> None:
        with self._lock:
            changed = (ready, detail) != (self._ready, self._detail)
            self._ready, self._detail = ready, detail
        if changed:
            log.debug("%s: %s", self.name, detail)

    def health(self) -> Health:
        with self._lock:
            ready, detail = self._ready, self._detail
        stalled = self.clock.monotonic() - self._beat > self._stall_after
        if stalled:
            return Health(False, False, f"the loop has not turned for more than {self._stall_after:.0f} s")
        return Health(True, ready and not self.stopping.is_set(), "stopping" if self.stopping.is_set() else detail)


class ServiceThread:
    """Runs a service in a thread; ``stop()`` stops and joins it and re-raises what it crashed with."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"bridge-{service.name}", daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc
            log.exception("%s crashed", self.service.name)

    def start(self, *, wait_started: float | None = None) -> ServiceThread:
        self._thread.start()
        if wait_started is not None and not self.service.started.wait(wait_started):
            self.stop()
            raise TimeoutError(f"{self.service.name} did not start within {wait_started} s")
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.service.name} did not stop within {timeout} s")
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float | None = 60.0) -> None:
        self.service.stop()
        self.join(timeout)
