"""Metrics (prometheus-client) for bridge's long-running processes.

Naming scheme: ``bridge_<component>_<what>_<unit>``, e.g. ``bridge_relay_published_total``,
``bridge_relay_delivery_latency_seconds``. Each component owns a :class:`CollectorRegistry`
(no process-global state), served by :class:`~bridge.observability.health.ProbeServer`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ConsumerMetrics", "RelayMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class RelayMetrics:
    """The relay's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "bridge_relay_published", "Events acknowledged by Kafka, per event type.", ["event_type"], registry=r
        )
        self.batch_size = Histogram(
            "bridge_relay_batch_size", "Rows read from the outbox per read.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.backlog = Gauge("bridge_relay_backlog_events", "Unpublished, unquarantined outbox rows.", registry=r)
        self.oldest_age = Gauge(
            "bridge_relay_oldest_unpublished_age_seconds", "Age of the oldest unpublished event.", registry=r
        )
        self.quarantined_rows = Gauge("bridge_relay_quarantined_events", "Outbox rows set aside as poison.", registry=r)
        self.delivery_latency = Histogram(
            "bridge_relay_delivery_latency_seconds",
            "From produce() to Kafka's acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("bridge_relay_errors", "Errors, by kind.", ["kind"], registry=r)
        self.quarantined = Counter("bridge_relay_quarantined", "Rows quarantined, by reason.", ["reason"], registry=r)
        self.leader = Gauge("bridge_relay_leader", "1 while this relay holds the leadership lock.", registry=r)
        self.in_flight = Gauge("bridge_relay_in_flight_events", "Produced, not yet acknowledged.", registry=r)


class ConsumerMetrics:
    """A consumer's (or sink's) metrics, labelled by consumer name, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.applied = Counter(
            "bridge_consumer_applied",
            "Events applied (handler and inbox committed).",
            ["consumer", "event_type"],
            registry=r,
        )
        self.duplicates = Counter(
            "bridge_consumer_duplicates", "Redelivered events skipped thanks to the inbox.", ["consumer"], registry=r
        )
        self.skipped = Counter(
            "bridge_consumer_skipped",
            "Events acknowledged without effect, by reason.",
            ["consumer", "reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "bridge_consumer_dead_lettered",
            "Records sent to the DLQ, by error class.",
            ["consumer", "error_class"],
            registry=r,
        )
        self.retries = Counter(
            "bridge_consumer_retries", "Handler attempts that failed and will be retried.", ["consumer"], registry=r
        )
        self.errors = Counter(
            "bridge_consumer_errors", "Infrastructure errors, by kind.", ["consumer", "kind"], registry=r
        )
        self.batch_size = Histogram(
            "bridge_consumer_batch_size", "Records handled per poll.", ["consumer"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_latency = Histogram(
            "bridge_consumer_batch_seconds",
            "Time to apply one batch.",
            ["consumer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.paused = Gauge(
            "bridge_consumer_paused_partitions", "Partitions paused for a retry.", ["consumer"], registry=r
        )
