"""One active relay per outbox: relays race for a session advisory lock; the winner publishes, the
others stand by and try again every ``standby_interval`` until its session ends.

The lock is checked again with every read (:meth:`OutboxSource.read` reports ``leading``), so a
relay whose session was lost, or that sits behind a transaction-pooling proxy where session locks
do not work, stops producing at its next read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bridge.clock import Clock
from bridge.outbox.source import OutboxSource

__all__ = ["Leadership"]

log = logging.getLogger("bridge.relay")


class Leadership:
    def __init__(self, schema: str, standby_interval: float, clock: Clock) -> None:
        self.schema = schema
        self.standby_interval = standby_interval
        self.clock = clock
        self.leading = False

    def acquire(self, source: OutboxSource, stopping: threading.Event, alive: Callable[[], None]) -> bool:
        """Wait until this relay leads (True) or is stopped (False); ``alive`` is called every try,
        since a standby is a healthy relay (its liveness probe must not restart it)."""
        announced = False
        while not stopping.is_set():
            alive()
            if source.try_lead():
                self.leading = True
                log.info("relay: leading the outbox in schema %s", self.schema, extra={"schema": self.schema})
                return True
            if not announced:
                log.info(
                    "relay: another relay leads schema %s; standing by", self.schema, extra={"schema": self.schema}
                )
                announced = True
            self.clock.wait(self.standby_interval, stopping)
        return False

    def lost(self) -> None:
        self.leading = False
