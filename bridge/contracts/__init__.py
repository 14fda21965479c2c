"""Event contracts: the registry of event types and validation against the envelope and payload schemas.

Knows nothing of Kafka or PostgreSQL.
"""

from bridge.contracts.registry import (
    CONSUMER_NAMES,
    DOMAINS,
    STATUSES,
    WAREHOUSE,
    EventType,
    Registry,
    SchemaVersion,
    check_contracts,
    default_contracts_path,
)
from bridge.contracts.validation import Contracts, Engine, SchemaValidator, compile_schema

__all__ = [
    "CONSUMER_NAMES",
    "DOMAINS",
    "STATUSES",
    "WAREHOUSE",
    "Contracts",
    "Engine",
    "EventType",
    "Registry",
    "SchemaValidator",
    "SchemaVersion",
    "check_contracts",
    "compile_schema",
    "default_contracts_path",
]
