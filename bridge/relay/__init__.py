"""The relay: publishes a PostgreSQL outbox to Kafka, one topic per event type, keyed by subject.

relay = Relay.from_settings(settings, clients)     # or Relay(connect, clients, encoder, …)
relay.run()                                        # until relay.stop()
"""

from bridge.relay.cursor import ReadCursor
from bridge.relay.encoding import JSON_CONTENT_TYPE, EncodedRecord, RecordEncoder
from bridge.relay.relay import OutboxConnector, Relay
from bridge.relay.window import InFlightWindow

__all__ = [
    "JSON_CONTENT_TYPE",
    "EncodedRecord",
    "InFlightWindow",
    "OutboxConnector",
    "ReadCursor",
    "RecordEncoder",
    "Relay",
]
