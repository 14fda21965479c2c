"""Where the relay reads next, and the gaps it must look at again (pure logic).

See :mod:`bridge.outbox.source` for why this never skips a late commit. The state:

- ``position``: reads return rows above it (it moves back to 0 after a rewind);
- ``high``: the largest id any read has reached; gaps are only looked for above it, so re-reading
  after a rewind finds no false gaps among rows already published;
- ``gaps``: ids passed over while not visible, each with the transaction id that bounds its owner
  (``None`` until the relay learns one from :meth:`OutboxSource.delete` or ``mark``);
- ``watch``: the transactions that were running when this relay started.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.outbox.source import ReadRequest, ReadResult, StartState

__all__ = ["ReadCursor"]


class ReadCursor:
    def __init__(self, start: StartState) -> None:
        self.position = 0
        self.high = start.last_id
        self.watch = set(start.watch)
        self.watch_all_below = start.watch_all_below
        #: Gap id → the transaction id bounding its owner (None until known).
        self.gaps: dict[int, int | None] = {}

    @property
    def untagged(self) -> bool:
        """Gaps wait for a transaction id drawn after the read that found them."""
        return any(bound is None for bound in self.gaps.values())

    def request(self, limit: int, exclude: Sequence[int], delete: Sequence[int] = ()) -> ReadRequest:
        return ReadRequest(
            self.position, limit, list(self.gaps), sorted(self.watch), self.watch_all_below, exclude, delete
        )

    def tag(self, xid: int) -> None:
        """``xid`` was drawn after every read so far: it bounds the owners of the gaps found."""
        for gap, bound in self.gaps.items():
            if bound is None:
                self.gaps[gap] = xid

    def advance(self, request: ReadRequest, result: ReadResult) -> None:
        """Take in what a read returned."""
        rows = result.rows
        returned = {row.id for row in rows}
        for gap in returned & self.gaps.keys():
            del self.gaps[gap]
        # A read from the start covered every late row of the watched transactions that ended,
        # unless the limit cut it short below the position.
        covered = not result.range_full or (bool(rows) and rows[-1].id > request.position)
        if result.from_start and covered:
            self.watch -= result.ended
            if self.watch_all_below is not None and result.xmin > self.watch_all_below:
                self.watch_all_below = None
        if rows:
            top = rows[-1].id
            if top > self.high:
                excluded = {*request.exclude, *request.delete}
                for missing in range(max(self.high, request.position) + 1, top):
                    if missing not in returned and missing not in excluded:
                        self.gaps[missing] = None
                self.high = top
            if top > self.position:
                self.position = top
        # A gap whose every possible owner has ended was rolled back (or its id never used).
        self.gaps = {gap: bound for gap, bound in self.gaps.items() if bound is None or bound >= result.xmin}

    def rewind(self, before: int = 0) -> None:
        """Read again from just above ``before`` (rows still unpublished are found again)."""
        self.position = min(self.position, before)
