"""Consumer-group adapters: handlers per event type, the inbox, retries and the DLQ.

Raise :class:`RetryLater`, :class:`SkipEvent` or :class:`DeadLetter` from a handler to decide an
event's fate explicitly.
"""

from bridge.config import ErrorPolicy
from bridge.consumer.app import BatchHandler, ConsumerApp, Delivery, Handler
from bridge.consumer.applying import Applied, Applier, Failed, PostgresApplier
from bridge.consumer.inbox import Inbox
from bridge.consumer.reading import RecordReader
from bridge.consumer.runner import ConsumerRunner
from bridge.errors import DeadLetter, HandlerDecision, RetryLater, SkipEvent

__all__ = [
    "Applied",
    "Applier",
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
    "SkipEvent",
]
