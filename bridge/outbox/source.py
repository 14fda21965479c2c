"""What the relay needs from an outbox, as a protocol, and the values it reads.

:class:`~bridge.outbox.store.OutboxStore` implements it on PostgreSQL; the unit tests run the relay
on an in-memory one (``tests/support/memory_outbox.py``). Pure: no driver is imported here.

How the relay reads fast without skipping a late commit (:mod:`bridge.relay.cursor` keeps the
state): it reads forward from a cursor, the largest id it has read. An outbox id is drawn inside
its transaction, so a transaction that commits late can leave a *gap*: an id below the cursor
whose row was not visible when the cursor passed it. Every gap is remembered and looked up again
by id with every read, so a late row is read in the very snapshot that first shows its
transaction committed — before any later row of its subject, which can only commit after it. A
gap is forgotten once every transaction that was running when it was found has ended (its
transaction rolled back, or its id was never used).

When a relay starts it knows no gaps: the ids drawn before its first read may belong to
transactions still running. Those transactions (:attr:`StartState.watch`) are watched instead: when
one of them ends, that read also looks again from the start of the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "OutboxRow",
    "OutboxSource",
    "OutboxStats",
    "QuarantinedRow",
    "ReadRequest",
    "ReadResult",
    "StartState",
    "id_ranges",
]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One unpublished event as the relay reads it."""

    id: int
    event_id: str
    event_type: str
    schema_version: int
    subject: str
    tenant_id: str
    producer: str
    value: bytes
    headers: dict[str, Any]
    #: Not read by the relay (it does not need them); filled by the operators' listings.
    recorded_at: datetime | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class StartState:
    """Where a new leader starts: ids up to ``last_id`` were drawn before its first read; the
    transactions that may still hold some of them are ``watch`` (transaction ids), or, when there
    are too many to list, every transaction up to ``watch_all_below``."""

    last_id: int
    watch: frozenset[int]
    watch_all_below: int | None = None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: rows above ``position``; the ``gaps`` (ids) that have become visible; and, if a
    transaction of ``watch`` has ended (or one below ``watch_all_below`` still runs), every row
    from the start of the table. Ids in ``exclude`` (in flight) are never returned."""

    position: int
    limit: int
    gaps: Sequence[int] = ()
    watch: Sequence[int] = ()
    watch_all_below: int | None = None
    exclude: Sequence[int] = ()
    #: Published rows to delete first, in the same round trip (their ids are excluded as well).
    delete: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What a read returned: the rows in id order (no id twice; every visible gap, plus at most
    ``limit`` rows of the range, ``range_full`` when it hit the limit), whether this session still
    leads, the oldest transaction running in the read's snapshot (``xmin``), which watched
    transactions had ended (``ended``), and whether it read from the start of the table."""

    leading: bool
    rows: list[OutboxRow]
    range_full: bool = False
    xmin: int = 0
    ended: frozenset[int] = frozenset()
    from_start: bool = False
    #: The id of the transaction that deleted ``request.delete`` (drawn after every earlier read).
    deleted_by: int | None = None


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    id: int
    event_id: str
    event_type: str
    subject: str
    attempts: int
    failed_at: datetime
    failure: str
    size: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    oldest_recorded_at: datetime | None
    quarantined: int


class OutboxSource(Protocol):
    """The relay's side of one outbox. Calls come from one thread at a time."""

    def try_lead(self) -> bool:
        """Try to take the leadership lock of this outbox (held until the session ends)."""
        ...

    def start(self) -> StartState:
        """Where a new leader starts reading (see the module docstring)."""
        ...

    def read(self, request: ReadRequest) -> ReadResult:
        """Delete ``request.delete``, then read the next rows (see :class:`ReadRequest`) with the
        leadership check, in one round trip."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Remove published rows (ids Kafka acknowledged). Returns the id of the transaction that
        deleted them: it began after every read before this call."""
        ...

    def mark(self) -> int:
        """A transaction id drawn now (after every read so far): bounds the transactions a gap
        found by those reads may belong to."""
        ...

    def record_attempt(self, ids: Sequence[int], failure: str) -> dict[int, int]:
        """Count a failed delivery; return the attempts so far per id."""
        ...

    def quarantine(self, row_id: int, reason: str) -> bool:
        """Set a poison row aside; later rows of its subject wait for it."""
        ...

    def held_subjects(self) -> set[str]:
        """Subjects with a quarantined row: their later rows must wait."""
        ...

    def stats(self) -> OutboxStats: ...


def id_ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """``[1, 2, 3, 7]`` → ``[(1, 3), (7, 7)]``: runs of consecutive ids, inclusive, in order."""
    if not ids:
        return []
    ordered = sorted(ids)
    runs = []
    start = previous = ordered[0]
    for value in ordered[1:]:
        if value == previous:
            continue
        if value != previous + 1:
            runs.append((start, previous))
            start = value
        previous = value
    runs.append((start, previous))
    return runs
