"""Exponential backoff with full jitter, for retrying infrastructure failures."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """``next()`` gives the next delay: up to ``initial * 2**n`` seconds, capped at ``maximum``."""

    initial: float = 0.1
    maximum: float = 10.0
    attempts: int = field(default=0, init=False)

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        # Full jitter: processes that failed together do not retry together.
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
