"""The relay's in-flight window: rows produced and not yet acknowledged, acknowledgements waiting to
be deleted, and failures waiting for recovery (pure logic; delivery callbacks land here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import KafkaError, KafkaFatalError
from bridge.outbox.source import OutboxRow

__all__ = ["InFlightWindow"]


@dataclass
class _Batch:
    produced_at: float
    remaining: int


@dataclass
class InFlightWindow:
    """Counts each row from produce to acknowledgement. Single-threaded: callbacks come from the
    producer's ``poll``/``flush`` on the relay's thread."""

    rows: dict[int, OutboxRow] = field(default_factory=dict)
    acked: list[OutboxRow] = field(default_factory=list)
    failed: list[tuple[OutboxRow, KafkaError]] = field(default_factory=list)
    #: Seconds from produce to the acknowledgement of a whole batch, waiting to be observed.
    latencies: list[float] = field(default_factory=list)
    _batches: dict[int, _Batch] = field(default_factory=dict)
    _batch_of: dict[int, int] = field(default_factory=dict)
    _next_batch: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fatal(self) -> bool:
        return any(isinstance(error, KafkaFatalError) for _, error in self.failed)

    def open_batch(self, now: float) -> int:
        self._next_batch += 1
        self._batches[self._next_batch] = _Batch(now, 0)
        return self._next_batch

    def sent(self, row: OutboxRow, batch: int) -> None:
        self.rows[row.id] = row
        self._batch_of[row.id] = batch
        self._batches[batch].remaining += 1

    def callback(self, row_id: int, clock: Callable[[], float]) -> Callable[[KafkaError | None], None]:
        def delivered(error: KafkaError | None) -> None:
            row = self.rows.pop(row_id, None)
            if row is None:
                return
            if error is None:
                self.acked.append(row)
            else:
                self.failed.append((row, error))
            batch_id = self._batch_of.pop(row_id, -1)
            batch = self._batches.get(batch_id)
            if batch is not None:
                batch.remaining -= 1
                if batch.remaining <= 0:
                    del self._batches[batch_id]
                    self.latencies.append(clock() - batch.produced_at)

        return delivered

    def take_acked(self, count: int | None = None) -> list[OutboxRow]:
        """The first ``count`` acknowledged rows (all by default), no longer counted."""
        if count is None or count >= len(self.acked):
            acked, self.acked = self.acked, []
            return acked
        acked, self.acked = self.acked[:count], self.acked[count:]
        return acked

    def take_failed(self) -> list[tuple[OutboxRow, KafkaError]]:
        failed, self.failed = self.failed, []
        return failed

    def take_latencies(self) -> list[float]:
        latencies, self.latencies = self.latencies, []
        return latencies

    def exclusion(self) -> list[int]:
        """Ids a read must not return: in flight, or acknowledged and not yet deleted."""
        return [*self.rows, *(row.id for row in self.acked)]

    def in_flight_ids(self) -> list[int]:
        """Ids produced and not yet acknowledged."""
        return list(self.rows)

    def forget(self) -> int:
        """Drop everything still counted as in flight (after a producer was purged); return how many."""
        count = len(self.rows)
        self.rows.clear()
        self._batches.clear()
        self._batch_of.clear()
        return count
