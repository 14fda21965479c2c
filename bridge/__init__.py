"""bridge: a Kafka-backed streaming bridge between PostgreSQL domains.

A domain emits events into an outbox table in the same transaction as its write; a relay publishes
them to one Kafka topic per event type, keyed by subject; consumer adapters apply them once through
an inbox; poison goes to DLQ topics. The contracts (envelope, registry, payload schemas) drive
validation at both ends.

The core (:mod:`bridge.ids`, :mod:`bridge.envelope`, :mod:`bridge.contracts`) knows nothing of
Kafka or PostgreSQL.
"""

from bridge.config import BridgeSettings, load_settings
from bridge.contracts import Contracts, Registry
from bridge.envelope import Envelope, decode_envelope
from bridge.errors import BridgeError, ValidationError, Violation
from bridge.ids import new_event_id, new_id, parse_id

__version__ = "0.2.0"

__all__ = [
    "BridgeError",
    "BridgeSettings",
    "Contracts",
    "Envelope",
    "Registry",
    "ValidationError",
    "Violation",
    "__version__",
    "decode_envelope",
    "load_settings",
    "new_event_id",
    "new_id",
    "parse_id",
]
