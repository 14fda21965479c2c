"""Consumer-group adapters: handlers per event type, the inbox, retries and the DLQ.

Raise :class:`RetryLater`, :class:`SkipEvent` or :class:`DeadLetter` from a handler to decide an
event's fate explicitly. Async handlers: :mod:`bridge.consumer.aio`; ORM handlers:
:mod:`bridge.consumer.orm`.
"""

from bridge.config import ErrorPolicy
from bridge.consumer.app import AsyncHandler, BatchHandler, ConsumerApp, Delivery, Handler, RowMapper, Rows
from bridge.consumer.applying import Applied, Applier, Failed, PostgresApplier
from bridge.consumer.inbox import Inbox
from bridge.consumer.reading import RecordReader
from bridge.consumer.runner import ConsumerRunner
from bridge.errors import DeadLetter, HandlerDecision, RetryLater, SkipEvent

__all__ = [
    "Applied",
    "Applier",
    "AsyncHandler",
    "BatchHandler",
    "ConsumerApp",
    "ConsumerRunner",
    "DeadLetter",
    "Delivery",
    "ErrorPolicy",
    "Failed",
    "Handler",
    "HandlerDecision",
    "Inbox",
    "PostgresApplier",
    "RecordReader",
    "RetryLater",
    "RowMapper",
    "Rows",
    "SkipEvent",
]
