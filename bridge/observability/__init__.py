"""Observability: metrics, the probe server (``/metrics``, ``/healthz``, ``/readyz``) and logs."""

from bridge.observability.health import ProbeServer
from bridge.observability.logs import JsonFormatter, setup_logging
from bridge.observability.metrics import ConsumerMetrics, RelayMetrics

__all__ = ["ConsumerMetrics", "JsonFormatter", "ProbeServer", "RelayMetrics", "setup_logging"]
