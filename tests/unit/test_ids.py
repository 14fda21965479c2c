from __future__ import annotations

import re
import threading
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import BridgeError, InvalidIdError
from bridge.ids import IdGenerator, new_event_id, new_id, parse_id

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_event_id_is_prefixed_lowercase_uuid7():
    event_id = new_event_id()
    prefix, _, rest = event_id.partition("_")
    assert prefix == "evt"
    assert UUID7.match(rest)
    assert uuid.UUID(rest).version == 7


def test_ids_are_strictly_increasing_within_one_millisecond():
    generator = IdGenerator(clock_ms=lambda: 1_750_000_000_000)
    ids = [generator.new_id("evt") for _ in range(5000)]  # more than the 12-bit counter holds
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_keep_increasing_when_the_clock_steps_back():
    times = iter([2_000, 2_000, 1_000, 1_000, 3_000])
    generator = IdGenerator(clock_ms=lambda: next(times))
    ids = [generator.uuid7() for _ in range(5)]
    assert ids == sorted(ids, key=lambda u: u.int)
    assert len(set(ids)) == 5


def test_timestamp_is_the_generation_millisecond():
    generator = IdGenerator(clock_ms=lambda: 1_750_000_000_123)
    parsed = parse_id(generator.new_id("crr"), prefix="crr")
    assert parsed.timestamp.timestamp() == pytest.approx(1_750_000_000.123)


def test_ids_from_many_threads_are_unique():
    results: list[str] = []
    lock = threading.Lock()

    def work():
        mine = [new_id("evt") for _ in range(2000)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 8000


@given(st.from_regex(r"[a-z][a-z0-9]{1,15}", fullmatch=True))
def test_parse_round_trips(prefix):
    made = new_id(prefix)
    parsed = parse_id(made, prefix=prefix)
    assert str(parsed) == made
    assert parsed.prefix == prefix


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("evt_0190a1b2-c3d4-4e5f-8a6b-1c2d3e4f5a6b", "not a prefixed UUIDv7"),  # version 4
        ("evt_0190A1B2-C3D4-7E5F-8A6B-1C2D3E4F5A6B", "not a prefixed UUIDv7"),  # upper case
        ("evt-0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b", "not a prefixed UUIDv7"),
        ("0190a1b2-c3d4-7e5f-8a6b-1c2d3e4f5a6b", "not a prefixed UUIDv7"),
        ("evt_0190a1b2-c3d4-7e5f-0a6b-1c2d3e4f5a6b", "not a prefixed UUIDv7"),  # wrong variant
        (42, "must be a string"),
    ],
)
def test_parse_rejects_malformed_ids(value, message):
    with pytest.raises(InvalidIdError, match=message) as info:
        parse_id(value)
    assert isinstance(info.value, BridgeError)
    assert isinstance(info.value, ValueError)


def test_parse_rejects_the_wrong_prefix():
    with pytest.raises(InvalidIdError, match="has prefix 'per', expected 'evt'"):
        parse_id(new_id("per"), prefix="evt")


@pytest.mark.parametrize("prefix", ["", "E", "evt_", "1ab", "x" * 17])
def test_new_id_rejects_bad_prefixes(prefix):
    with pytest.raises(InvalidIdError, match="invalid id prefix"):
        new_id(prefix)
