"""Running a long-lived service from the command line: probes, signals, and a bounded stop.

SIGTERM or SIGINT asks the service to stop; it has ``shutdown_timeout`` seconds in total. If it has
not returned a few seconds after that (a stuck driver call), the process exits anyway with code 1
and says so, so a supervisor's grace period is never overrun by bridge.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

from prometheus_client import CollectorRegistry

from bridge.config import BridgeSettings
from bridge.errors import InfrastructureError
from bridge.kafka.ports import KafkaClients
from bridge.lifecycle import Health, Service
from bridge.observability import ProbeServer

__all__ = ["run_service"]

log = logging.getLogger("bridge")

_GRACE = 3.0  # seconds past the shutdown timeout before the process is ended regardless


class _Readiness:
    """The service's own health, and whether a broker answers (asked at most every few seconds)."""

    def __init__(self, service: Service, clients: KafkaClients | None) -> None:
        self.service = service
        self.clients = clients
        self._checked_at = 0.0
        self._broker: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Health:
        health = self.service.health()
        if self.clients is None or not health.ready:
            return health
        with self._lock:
            if time.monotonic() - self._checked_at > 5.0:
                self._checked_at = time.monotonic()
                try:
                    admin = self.clients.admin()
                    try:
                        admin.cluster(2.0)
                    finally:
                        admin.close()
                    self._broker = None
                except InfrastructureError as exc:
                    self._broker = str(exc)
            broker = self._broker
        if broker is not None:
            return Health(health.alive, False, f"broker unavailable: {broker}")
        return health


def run_service(
    service: Service,
    settings: BridgeSettings,
    *,
    registry: CollectorRegistry,
    clients: KafkaClients | None,
    shutdown_timeout: float,
    metrics_host: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve probes (when a port is set), run ``service`` until SIGTERM/SIGINT, stop it in time."""
    host = metrics_host or settings.metrics.host
    port = metrics_port if metrics_port is not None else settings.metrics.port
    probes = None
    if port is not None:
        probes = ProbeServer(registry, _Readiness(service, clients), host=host, port=port).start()
        log.info(
            "%s: metrics and probes on http://%s:%d/ (/metrics, /healthz, /readyz)", service.name, host, probes.port
        )

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping within %.0f s", signal.Signals(signum).name, shutdown_timeout)
        service.stop()
        watchdog = threading.Timer(shutdown_timeout + _GRACE, _force_exit, args=(service.name, shutdown_timeout))
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        service.run()
    finally:
        if probes is not None:
            probes.close()


def _force_exit(name: str, timeout: float) -> None:
    log.error(
        "%s did not stop within %.0f s (+%.0f s grace); exiting now: whatever was in flight stays in the "
        "outbox or is redelivered",
        name,
        timeout,
        _GRACE,
    )
    logging.shutdown()
    os._exit(1)
