"""Log lines: text for people, or one JSON object per line (``BRIDGE_LOG_FORMAT=json``) with the
structured fields a record carries (event id, topic, partition, offset, consumer, …).

librdkafka's own lines arrive here too (through :class:`~bridge.kafka.confluent.LibrdkafkaLog`), so
there is one stream, in one format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["STRUCTURED_FIELDS", "JsonFormatter", "setup_logging"]

#: ``extra=`` keys that JSON lines carry as fields of their own.
STRUCTURED_FIELDS = (
    "event_id", "event_type", "topic", "partition", "offset", "consumer", "schema", "kafka_facility",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, the structured fields present,
    and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log line (bridge's and librdkafka's) to stderr, as text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
