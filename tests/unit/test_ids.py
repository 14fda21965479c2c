from __future__ import annotations

import re
import threading
import time
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


# --- the bit layout of UUIDv7 (RFC 9562 §5.7), pinned field by field -------------------------------

MS = 1_750_000_000_123


def fields(value: uuid.UUID) -> tuple[int, int, int, int, int]:
    """(unix_ts_ms, version, counter (rand_a), variant, rand_b) of a UUIDv7."""
    n = value.int
    return n >> 80, (n >> 76) & 0xF, (n >> 64) & 0xFFF, (n >> 62) & 0b11, n & ((1 << 62) - 1)


def test_each_field_of_a_uuid7_sits_where_rfc_9562_puts_it():
    generator = IdGenerator(clock_ms=lambda: MS)
    values = [generator.uuid7() for _ in range(64)]
    parts = [fields(v) for v in values]
    assert {p[0] for p in parts} == {MS}  # 48-bit big-endian milliseconds first
    assert {p[1] for p in parts} == {7}
    assert {p[3] for p in parts} == {0b10}  # the RFC 4122/9562 variant
    assert {v.version for v in values} == {7}
    assert {v.variant for v in values} == {uuid.RFC_4122}
    counters = [p[2] for p in parts]
    assert counters == list(range(counters[0], counters[0] + 64))  # +1 per id within one millisecond
    assert len({p[4] for p in parts}) == 64  # 62 random bits, fresh for every id
    assert any(p[4] >> 61 for p in parts)  # ...the top one included (it stops just below the variant)


def test_a_new_millisecond_starts_the_counter_at_random_in_its_lower_half():
    """The lower half leaves at least 2,048 increments before the counter must borrow a millisecond."""
    starts = {fields(IdGenerator(clock_ms=lambda: MS).uuid7())[2] for _ in range(200)}
    assert all(start < 0x800 for start in starts)
    assert len(starts) > 100  # random, not a constant


def test_the_first_id_of_a_generator_carries_its_clock_millisecond_even_at_zero():
    first = [fields(IdGenerator(clock_ms=lambda: 0).uuid7()) for _ in range(20)]
    assert {f[0] for f in first} == {0}
    assert len({f[2] for f in first}) > 1  # a fresh random counter, not the increment of a previous id


def test_milliseconds_are_kept_to_48_bits():
    value = IdGenerator(clock_ms=lambda: (1 << 48) + 5).uuid7()
    assert fields(value)[:2] == (5, 7)


def test_the_default_clock_is_the_wall_clock_in_milliseconds():
    before = time.time()
    value = IdGenerator().uuid7()
    after = time.time()
    assert before - 0.002 <= fields(value)[0] / 1000 <= after + 0.002


def test_a_full_millisecond_uses_every_counter_value_then_borrows_the_next_one_from_zero():
    generator = IdGenerator(clock_ms=lambda: MS)
    parts = [fields(generator.uuid7()) for _ in range(4200)]  # more than the 12-bit counter holds
    stamps = [(ms, counter) for ms, _, counter, _, _ in parts]
    borrowed = stamps.index((MS + 1, 0))
    assert stamps[borrowed - 1] == (MS, 0xFFF)  # the last counter value is used, then the next ms
    assert stamps[borrowed + 1] == (MS + 1, 1)
    assert any(p[4] & 1 for p in parts)  # the lowest random bit is random too


def test_a_malformed_id_is_refused_with_an_example_of_a_good_one():
    with pytest.raises(InvalidIdError, match=r"for example evt_01901234-5678-7abc-8def-0123456789ab\)$"):
        parse_id("evt_nope")
