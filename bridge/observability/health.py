"""The probe server: ``/metrics`` (Prometheus), ``/healthz`` (the service's loop is alive) and
``/readyz`` (its database and broker answer; for the relay, it leads or stands by). Anything else
is 404. It binds ``BRIDGE_METRICS__HOST`` (default 127.0.0.1: set 0.0.0.0 to be scraped from
elsewhere, as the Kubernetes manifests do)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.lifecycle import Health

__all__ = ["ProbeServer"]


class ProbeServer:
    """Serves one service's metrics and probes from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Health], *, host: str, port: int) -> None:
        self.registry = registry
        self.health = health
        handler = _handler(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bridge-probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: ProbeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
            elif path in ("/healthz", "/readyz"):
                health = server.health()
                ok = health.alive if path == "/healthz" else health.ready
                body = json.dumps({"alive": health.alive, "ready": health.ready, "detail": health.detail}).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: /metrics, /healthz, /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the service's own lines

    return Handler
