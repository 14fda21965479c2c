"""The transactional outbox: migrations, ``emit`` (sync and async), and the relay's table access."""

from bridge.outbox.emit import AsyncOutbox, EventSpec, Outbox
from bridge.outbox.migrations import MIGRATIONS, MigrationStatus, grant_statements, migrate, status
from bridge.outbox.store import OutboxRow, OutboxStats, OutboxStore, QuarantinedRow

__all__ = [
    "MIGRATIONS",
    "AsyncOutbox",
    "EventSpec",
    "MigrationStatus",
    "Outbox",
    "OutboxRow",
    "OutboxStats",
    "OutboxStore",
    "QuarantinedRow",
    "grant_statements",
    "migrate",
    "status",
]
