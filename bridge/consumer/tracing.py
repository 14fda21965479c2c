"""The handler's span, child of the trace context the event carried (OpenTelemetry, optional)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from bridge.consumer.app import Delivery

__all__ = ["Tracing"]


class Tracing:
    def __init__(self, trace_module: Any, propagate_module: Any) -> None:
        self._tracer = trace_module.get_tracer("bridge.consumer")
        self._propagate = propagate_module
        self._kind = trace_module.SpanKind.CONSUMER

    @classmethod
    def create(cls) -> Tracing | None:
        """The tracer when ``opentelemetry-api`` is installed, else ``None``."""
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            return None
        return cls(trace, propagate)

    def span(self, delivery: Delivery, consumer: str) -> AbstractContextManager[Any]:
        context = self._propagate.extract(dict(delivery.trace))
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            f"{delivery.envelope.event_type} process",
            context=context,
            kind=self._kind,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": delivery.topic,
                "messaging.consumer.group.name": consumer,
                "messaging.message.id": delivery.envelope.event_id,
            },
        )
        return span
