"""Consumer-group adapters: handlers per event type, the inbox, retries and the DLQ.

Raise :class:`RetryLater`, :class:`SkipEvent` or :class:`DeadLetter` from a handler to decide an
event's fate explicitly.
"""

from bridge.consumer.app import BatchHandler, ConsumerApp, Delivery, ErrorPolicy, Handler
from bridge.consumer.inbox import Inbox
from bridge.consumer.runner import ConsumerRunner
from bridge.errors import DeadLetter, HandlerDecision, RetryLater, SkipEvent

__all__ = [
    "BatchHandler",
    "ConsumerApp",
    "ConsumerRunner",
    "DeadLetter",
    "Delivery",
    "ErrorPolicy",
    "Handler",
    "HandlerDecision",
    "Inbox",
    "RetryLater",
    "SkipEvent",
]
