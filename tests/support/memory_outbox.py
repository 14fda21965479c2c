"""In-memory stand-ins for the two databases the engines talk to, so their logic runs in unit tests.

- :class:`MemoryOutbox` is the producing side's PostgreSQL, modelled closely enough for the relay's
  late-commit logic: a sequence hands out outbox ids, writing transactions take a transaction id
  (xid) before their first id (as ``emit`` forces), rows become visible only when their transaction
  commits, a rollback leaves a gap in the ids, and every read sees one snapshot (``xmin``: the
  oldest running xid; a watched xid has *ended* when it finished before the read). ``connect()``
  opens a session implementing :class:`~bridge.outbox.source.OutboxSource`, with the leadership lock
  (one holder) that an outage or another relay can take away.
- :class:`MemoryApplier` is the consuming side's database: an inbox and the handlers' effects,
  committed together or not at all, with outages on demand.

    outbox = MemoryOutbox()
    late = outbox.begin()
    late.emit("crr_1")                 # id 1, not visible: its transaction is still running
    outbox.emit("crr_2")               # id 2, committed at once
    with outbox.connect() as session:  # what Relay(connect=outbox.connect, ...) gets
        ...
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from bridge.clock import Clock
from bridge.consumer.app import ConsumerApp, Delivery
from bridge.consumer.applying import Applied, Applier, Failed
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import DatabaseUnavailableError
from bridge.ids import new_event_id
from bridge.outbox.source import (
    OutboxRow,
    OutboxSource,
    OutboxStats,
    ReadRequest,
    ReadResult,
    StartState,
)

__all__ = [
    "MemoryApplier",
    "MemoryOutbox",
    "MemoryTransaction",
    "OutboxSession",
    "SubjectLocked",
]

_CONTRACTS = Contracts.load()
#: A registered type with no payload schema: any object payload is valid.
DEFAULT_EVENT_TYPE = "lesson.scheduled"
_DATABASE_URL = "BRIDGE_DATABASE__URL"


class SubjectLocked(Exception):
    """Another open transaction emitted for this subject: ``emit``'s advisory lock would block."""


@dataclass
class _Stored:
    """A committed outbox row and what the relay wrote on it."""

    row: OutboxRow
    attempts: int = 0
    failed_at: datetime | None = None
    failure: str | None = None

    def as_read(self) -> OutboxRow:
        return replace(self.row, attempts=self.attempts)


class MemoryTransaction:
    """One writing transaction of the producing application."""

    def __init__(self, outbox: MemoryOutbox) -> None:
        self._outbox = outbox
        #: Assigned at the first emit, before any outbox id is drawn (as emit forces it).
        self.xid: int | None = None
        self.rows: list[OutboxRow] = []
        self.subjects: set[str] = set()
        self.state = "open"

    def emit(
        self,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_type: str = DEFAULT_EVENT_TYPE,
        version: int = 1,
    ) -> OutboxRow:
        """Write one event; raises :class:`SubjectLocked` when another open transaction holds its subject."""
        return self._outbox._emit(self, subject, dict(payload or {}), event_type, version)

    def commit(self) -> None:
        self._outbox._end(self, committed=True)

    def rollback(self) -> None:
        self._outbox._end(self, committed=False)


class MemoryOutbox:
    """The outbox's database. Thread-safe: a relay thread and the test may use it at once."""

    def __init__(self, *, tenant: str = "tenant-1") -> None:
        self.tenant = tenant
        self._lock = threading.RLock()
        self._last_id = 0
        self._last_xid = 0
        self._rows: dict[int, _Stored] = {}
        self._running: dict[int, MemoryTransaction] = {}
        self._subject_locks: dict[str, MemoryTransaction] = {}
        self._holder: object | None = None
        self._sessions = itertools.count(1)
        #: False: no relay session opens and every call of an open one fails (the relay lost the
        #: database); the application's own transactions carry on.
        self.available = True
        #: Every committed row, in commit order (per subject, that is the order the relay must keep).
        self.committed: list[OutboxRow] = []
        #: Every rolled-back row: none of them may ever reach Kafka.
        self.rolled_back: list[OutboxRow] = []
        #: The last read a relay made (what it asked for: its gaps, its watch).
        self.last_request: ReadRequest | None = None

    # --- the producing application ---------------------------------------------------------------

    def begin(self) -> MemoryTransaction:
        return MemoryTransaction(self)

    def emit(self, subject: str, payload: Mapping[str, Any] | None = None, **kwargs: Any) -> OutboxRow:
        """Emit one event in a transaction of its own, committed at once."""
        transaction = self.begin()
        row = transaction.emit(subject, payload, **kwargs)
        transaction.commit()
        return row

    def _emit(
        self, transaction: MemoryTransaction, subject: str, payload: dict[str, Any], event_type: str, version: int
    ) -> OutboxRow:
        with self._lock:
            if transaction.state != "open":
                raise RuntimeError(f"emit in a transaction that is {transaction.state}")
            holder = self._subject_locks.get(subject)
            if holder is not None and holder is not transaction:
                raise SubjectLocked(f"subject {subject} is locked by transaction {holder.xid}")
            self._subject_locks[subject] = transaction
            transaction.subjects.add(subject)
            if transaction.xid is None:
                transaction.xid = self._new_xid()
                self._running[transaction.xid] = transaction
            self._last_id += 1
            now = datetime.now(UTC)
            envelope = Envelope(
                event_id=new_event_id(),
                event_type=event_type,
                schema_version=version,
                producer=_CONTRACTS.registry.events[event_type].producer,
                tenant_id=self.tenant,
                subject=subject,
                occurred_at=now,
                recorded_at=now,
                payload=payload,
            )
            row = OutboxRow(
                self._last_id,
                envelope.event_id,
                event_type,
                version,
                subject,
                self.tenant,
                envelope.producer,
                envelope.to_json(),
                {},
                now,
                0,
            )
            transaction.rows.append(row)
            return row

    def _end(self, transaction: MemoryTransaction, *, committed: bool) -> None:
        with self._lock:
            if transaction.state != "open":
                raise RuntimeError(f"the transaction is already {transaction.state}")
            transaction.state = "committed" if committed else "rolled back"
            if transaction.xid is not None:
                del self._running[transaction.xid]
            for subject in transaction.subjects:
                del self._subject_locks[subject]
            if committed:
                for row in transaction.rows:
                    self._rows[row.id] = _Stored(row)
                self.committed += transaction.rows
            else:
                self.rolled_back += transaction.rows

    def _new_xid(self) -> int:
        self._last_xid += 1
        return self._last_xid

    def locked(self, subject: str) -> bool:
        """Whether an open transaction holds the subject (an emit for it elsewhere would block)."""
        with self._lock:
            return subject in self._subject_locks

    # --- inspection and operators ----------------------------------------------------------------

    def rows(self) -> list[OutboxRow]:
        """The committed rows still in the table (published ones are deleted), in id order."""
        with self._lock:
            return [self._rows[i].as_read() for i in sorted(self._rows)]

    def quarantined(self) -> dict[int, str]:
        """Quarantined row id → the reason recorded."""
        with self._lock:
            return {i: s.failure or "" for i, s in sorted(self._rows.items()) if s.failed_at is not None}

    def retry(self, ids: Sequence[int] | None = None) -> int:
        """``bridge outbox retry``: put quarantined rows back in line."""
        with self._lock:
            chosen = [s for i, s in self._rows.items() if s.failed_at is not None and (ids is None or i in set(ids))]
            for stored in chosen:
                stored.failed_at, stored.failure, stored.attempts = None, None, 0
            return len(chosen)

    # --- leadership ------------------------------------------------------------------------------

    def take_leadership(self) -> object:
        """Another relay takes the lock (the leading session lost it); returns its token."""
        with self._lock:
            token = object()
            self._holder = token
            return token

    def release_leadership(self, token: object) -> None:
        """The lock's holder (a token from :meth:`take_leadership`) ends its session."""
        with self._lock:
            if self._holder is token:
                self._holder = None

    @property
    def has_leader(self) -> bool:
        with self._lock:
            return self._holder is not None

    # --- sessions --------------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[OutboxSource]:
        """A relay's session (an ``OutboxConnector``); its lock is released when it ends."""
        self._check()
        session = OutboxSession(self, next(self._sessions))
        try:
            yield session
        finally:
            with self._lock:
                if self._holder is session:
                    self._holder = None

    def _check(self) -> None:
        if not self.available:
            raise DatabaseUnavailableError("the in-memory outbox database is unavailable", setting=_DATABASE_URL)


class OutboxSession(OutboxSource):
    """One relay session on a :class:`MemoryOutbox`: what :class:`~bridge.outbox.store.OutboxStore` does."""

    def __init__(self, outbox: MemoryOutbox, number: int) -> None:
        self.db = outbox
        self.number = number

    def try_lead(self) -> bool:
        db = self.db
        with db._lock:
            db._check()
            if db._holder is None:
                db._holder = self
            return db._holder is self

    def start(self) -> StartState:
        db = self.db
        with db._lock:
            db._check()
            return StartState(db._last_id, frozenset(db._running))

    def read(self, request: ReadRequest) -> ReadResult:
        db = self.db
        with db._lock:
            db._check()
            db.last_request = request
            # The delete and the read are one transaction (one snapshot), as on PostgreSQL.
            deleted_by = self._delete(request.delete) if request.delete else None
            leading = db._holder is self
            xmin = min(db._running, default=db._last_xid + 1)
            # A watched xid ended when it was assigned and no longer runs: it finished before this read.
            ended = frozenset(w for w in request.watch if w <= db._last_xid and w not in db._running)
            below = request.watch_all_below
            from_start = bool(ended) or (below is not None and xmin <= below)
            exclude = {*request.exclude, *request.delete}
            gaps = set(request.gaps)
            pending = {i: s for i, s in db._rows.items() if s.failed_at is None and i not in exclude}
            found = [pending[i].as_read() for i in sorted(gaps) if i in pending]
            lower = 0 if from_start else request.position
            in_range = [pending[i].as_read() for i in sorted(pending) if i > lower and i not in gaps][: request.limit]
            rows = sorted(found + in_range, key=lambda row: row.id)
            return ReadResult(leading, rows, len(in_range) >= request.limit, xmin, ended, from_start, deleted_by)

    def delete(self, ids: Sequence[int]) -> int:
        with self.db._lock:
            self.db._check()
            return self._delete(ids)

    def _delete(self, ids: Sequence[int]) -> int:
        for row_id in ids:
            self.db._rows.pop(row_id, None)
        return self.db._new_xid()

    def mark(self) -> int:
        db = self.db
        with db._lock:
            db._check()
            return db._new_xid()

    def record_attempt(self, ids: Sequence[int], failure: str) -> dict[int, int]:
        db = self.db
        with db._lock:
            db._check()
            counted = {}
            for row_id in ids:
                stored = db._rows.get(row_id)
                if stored is not None:
                    stored.attempts += 1
                    stored.failure = failure
                    counted[row_id] = stored.attempts
            return counted

    def quarantine(self, row_id: int, reason: str) -> bool:
        db = self.db
        with db._lock:
            db._check()
            stored = db._rows.get(row_id)
            if stored is None or stored.failed_at is not None:
                return False
            stored.failed_at, stored.failure = datetime.now(UTC), reason
            return True

    def held_subjects(self) -> set[str]:
        db = self.db
        with db._lock:
            db._check()
            return {s.row.subject for s in db._rows.values() if s.failed_at is not None}

    def stats(self) -> OutboxStats:
        db = self.db
        with db._lock:
            db._check()
            waiting = [s for s in db._rows.values() if s.failed_at is None]
            oldest = min((s.row.recorded_at for s in waiting if s.row.recorded_at is not None), default=None)
            return OutboxStats(len(waiting), oldest, len(db._rows) - len(waiting))


# --- the consumer's database ---------------------------------------------------------------------


class MemoryApplier(Applier):
    """The consumer's inbox and the handlers' effects, in memory, with PostgresApplier's semantics.

    Handlers run with ``conn=None``; what they want committed with the inbox row they hand to
    :meth:`record`. An apply either commits everything (the inbox rows, ``applied`` and the effects)
    or, when a handler raises, nothing. ``down`` (or :meth:`outage`) makes every call raise
    :class:`~bridge.errors.DatabaseUnavailableError`, as a lost connection does.
    """

    def __init__(self, app: ConsumerApp, *, clock: Clock | None = None) -> None:
        self.app = app
        self.clock = clock
        self.inbox: dict[str, Delivery] = {}
        #: First deliveries whose handlers committed, in the order they were applied.
        self.applied: list[Delivery] = []
        #: What handlers recorded, committed with their inbox rows.
        self.effects: list[object] = []
        self.down = False
        self._down_until: float | None = None
        self._staged: list[object] | None = None
        self.closes = 0

    def outage(self, seconds: float) -> None:
        """The database is unreachable for ``seconds`` of the fake clock."""
        assert self.clock is not None, "an outage by time needs the fake clock"
        self._down_until = self.clock.monotonic() + seconds

    def record(self, effect: object) -> None:
        """Called by a handler: ``effect`` commits with the current transaction, or not at all."""
        assert self._staged is not None, "record() outside a handler"
        self._staged.append(effect)

    def _check(self) -> None:
        outage = self._down_until is not None and self.clock is not None and self.clock.monotonic() < self._down_until
        if self.down or outage:
            raise DatabaseUnavailableError("the in-memory consumer database is unavailable", setting=_DATABASE_URL)

    def apply(self, deliveries: Sequence[Delivery]) -> Applied | Failed:
        self._check()
        fresh = self._first_deliveries(deliveries)
        self._staged = []
        try:
            self._run_handlers(fresh)
        except Exception as exc:  # any handler failure: roll back, report it (as PostgresApplier does)
            return Failed(exc)
        finally:
            staged, self._staged = self._staged, None
        for delivery in fresh:
            self.inbox[delivery.envelope.event_id] = delivery
        self.applied += fresh
        self.effects += staged
        return Applied(fresh, len(deliveries) - len(fresh))

    def remember(self, delivery: Delivery) -> None:
        self._check()
        self.inbox.setdefault(delivery.envelope.event_id, delivery)

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        self.closes += 1

    def _first_deliveries(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not self.app.dedupe:
            return list(deliveries)
        seen = set(self.inbox)
        fresh = []
        for delivery in deliveries:
            if delivery.envelope.event_id not in seen:
                seen.add(delivery.envelope.event_id)
                fresh.append(delivery)
        return fresh

    def _run_handlers(self, deliveries: list[Delivery]) -> None:
        # The handlers' signature promises a psycopg connection; the in-memory database has none.
        conn = cast(Any, None)
        if self.app.batch is not None:
            if deliveries:
                self.app.batch(deliveries, conn)
            return
        for delivery in deliveries:
            envelope = delivery.envelope
            handler = self.app.resolve(envelope.event_type, envelope.schema_version)
            if handler is None:
                raise AssertionError(f"the runner applied {envelope.event_type} v{envelope.schema_version}: no handler")
            handler(envelope, conn)
