"""The transactional outbox: migrations, ``emit`` (sync and async), and the relay's table access."""

from bridge.outbox.emit import AsyncOutbox, EventSpec, Outbox
from bridge.outbox.migrations import MIGRATIONS, MigrationStatus, grant_statements, migrate, status
from bridge.outbox.source import OutboxRow, OutboxSource, OutboxStats, QuarantinedRow, ReadRequest, ReadResult
from bridge.outbox.store import OutboxStore, PostgresOutbox

__all__ = [
    "MIGRATIONS",
    "AsyncOutbox",
    "EventSpec",
    "MigrationStatus",
    "Outbox",
    "OutboxRow",
    "OutboxSource",
    "OutboxStats",
    "OutboxStore",
    "PostgresOutbox",
    "QuarantinedRow",
    "ReadRequest",
    "ReadResult",
    "grant_statements",
    "migrate",
    "status",
]
