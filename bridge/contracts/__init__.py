"""Event contracts: the registry of event types and validation against the envelope and payload schemas.

Knows nothing of Kafka or PostgreSQL.
"""

from bridge.contracts.registry import (
    STATUSES,
    CompatibilityMode,
    EventType,
    Manifest,
    Registry,
    SchemaVersion,
    check_contracts,
    resolve_contracts_path,
)
from bridge.contracts.validation import Contracts, Engine, SchemaValidator, compile_schema

__all__ = [
    "STATUSES",
    "CompatibilityMode",
    "Contracts",
    "Engine",
    "EventType",
    "Manifest",
    "Registry",
    "SchemaValidator",
    "SchemaVersion",
    "check_contracts",
    "compile_schema",
    "resolve_contracts_path",
]
