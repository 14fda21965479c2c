"""Names on the wire (docs/design.md, "Wire contract"). Other tools rely on them: change nothing here lightly."""

from __future__ import annotations

import re

from bridge.errors import ConfigurationError

__all__ = ["dlq_topic_name", "group_id", "replay_topic_name", "topic_name"]

_LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def topic_name(prefix: str, event_type: str) -> str:
    """The topic of an event type, shared by all its schema versions: ``{prefix}{event_type}``."""
    return _checked(f"{prefix}{event_type}")


def dlq_topic_name(topic: str, consumer: str) -> str:
    """The dead-letter topic of one consumer for one source topic: ``{topic}.dlq.{consumer}``."""
    return _checked(f"{topic}.dlq.{consumer}")


def group_id(prefix: str, consumer: str) -> str:
    """The consumer group of a domain (or the warehouse loader): ``{prefix}{consumer}``."""
    return f"{prefix}{consumer}"


def _checked(name: str) -> str:
    if not _LEGAL.match(name) or name in {".", ".."}:
        raise ConfigurationError(f"{name!r} is not a legal Kafka topic name (1-249 of letters, digits, '.', '_', '-')")
    return name


def replay_topic_name(prefix: str, consumer: str) -> str:
    """The topic ``bridge dlq replay`` sends one consumer's dead letters back on, which only that
    consumer's group reads: ``{prefix}{consumer}.dlq-replay`` (the hyphen keeps it apart from any
    event type's topic)."""
    return _checked(f"{prefix}{consumer}.dlq-replay")
