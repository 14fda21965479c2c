"""Prefixed UUIDv7 ids (``evt_0190…``), as the contracts use them.

UUIDv7 (RFC 9562) puts a millisecond Unix timestamp in the top 48 bits, so ids sort by creation time.
Within one millisecond, :class:`IdGenerator` uses the 12-bit ``rand_a`` field as a counter (RFC 9562
§6.2, method 1), so ids from one generator are strictly increasing even when many are made in the
same millisecond, and even if the wall clock steps backwards.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.errors import InvalidIdError

__all__ = ["ID_PATTERN", "IdGenerator", "PrefixedId", "new_event_id", "new_id", "parse_id"]

_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
#: Pattern of a prefixed UUIDv7 id, as the contracts write it (``{prefix}`` to be filled in).
ID_PATTERN = "^{prefix}_" + _UUID7 + "$"
_ANY_ID = re.compile(r"^([a-z][a-z0-9]{1,15})_(" + _UUID7 + r")$")

_COUNTER_MAX = 0xFFF


class IdGenerator:
    """Makes UUIDv7 values that strictly increase for the life of the generator. Thread-safe."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def uuid7(self) -> uuid.UUID:
        with self._lock:
            now = self._clock_ms()
            if now > self._last_ms:
                self._last_ms = now
                # Start low in the counter space so a busy millisecond rarely overflows it.
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                # Same millisecond, or the clock stepped back: keep counting from the last id.
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1  # borrow the next millisecond rather than repeat an id
                    self._counter = 0
            ms, counter = self._last_ms, self._counter
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        return uuid.UUID(int=value)

    def new_id(self, prefix: str) -> str:
        """A new ``{prefix}_{uuid7}`` id."""
        _check_prefix(prefix)
        return f"{prefix}_{self.uuid7()}"


# One generator per process: monotonicity only means something if every id comes from the same one.
_default = IdGenerator()


def new_id(prefix: str) -> str:
    """A new prefixed UUIDv7 id, strictly greater than every earlier one made in this process."""
    return _default.new_id(prefix)


def new_event_id() -> str:
    """A new ``evt_`` id."""
    return _default.new_id("evt")


@dataclass(frozen=True, slots=True)
class PrefixedId:
    """A parsed prefixed UUIDv7 id."""

    prefix: str
    uuid: uuid.UUID

    @property
    def timestamp(self) -> datetime:
        """The creation instant encoded in the id (millisecond precision)."""
        return datetime.fromtimestamp((self.uuid.int >> 80) / 1000, tz=UTC)

    def __str__(self) -> str:
        return f"{self.prefix}_{self.uuid}"


def parse_id(value: object, prefix: str | None = None) -> PrefixedId:
    """Parse ``{prefix}_{uuid7}``; raise :class:`InvalidIdError` saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidIdError(f"an id must be a string, got {type(value).__name__}")
    match = _ANY_ID.match(value)
    if match is None:
        raise InvalidIdError(
            f"{value!r} is not a prefixed UUIDv7 id (expected <prefix>_<lower-case UUIDv7>, "
            "for example evt_01901234-5678-7abc-8def-0123456789ab)"
        )
    found_prefix, text = match.groups()
    if prefix is not None and found_prefix != prefix:
        raise InvalidIdError(f"{value!r} has prefix {found_prefix!r}, expected {prefix!r}")
    return PrefixedId(found_prefix, uuid.UUID(text))


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.match(prefix):
        raise InvalidIdError(
            f"invalid id prefix {prefix!r}: use 2 to 16 lower-case letters or digits, starting with a letter"
        )
