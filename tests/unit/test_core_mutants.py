"""Pure-core behaviours pinned down exactly, each killing mutants that the rest of the suite let
survive (``make mutation``; tests/mutation/SURVIVORS.md lists the ones that remain, and why).

Each test names what it protects; the issue's six named mutants are marked "named mutant".
"""

from __future__ import annotations

import json
import random

import pytest
from pydantic import SecretStr

from bridge.avro import compatibility_problems
from bridge.backoff import Backoff
from bridge.config import ErrorPolicy
from bridge.envelope import decode_envelope
from bridge.errors import BridgeError, ConfigurationError, InvalidIdError, SignatureError
from bridge.ids import IdGenerator, parse_id
from bridge.outbox.source import id_ranges
from bridge.outbox.store import multirange
from bridge.signing import SIGNATURE_HEADER, Signer, Verifier, signed_message
from bridge.topics import dlq_topic_name, replay_topic_name, topic_name

# --- topic names ----------------------------------------------------------------------------------


def test_a_topic_name_may_have_249_characters_and_not_250():
    """Named mutant: Kafka's limit is 249 (a 250-255 character name fails at the broker)."""
    assert topic_name("p.", "x" * 247) == "p." + "x" * 247
    with pytest.raises(ConfigurationError, match="1-249"):
        topic_name("p.", "x" * 248)
    assert dlq_topic_name("t" * 239, "sales") == "t" * 239 + ".dlq.sales"  # 249
    with pytest.raises(ConfigurationError):
        dlq_topic_name("t" * 240, "sales")
    assert replay_topic_name("p.", "s" * 236).endswith(".dlq-replay")
    with pytest.raises(ConfigurationError):
        replay_topic_name("p.", "s" * 237)


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_and_dot_dot_are_no_topic_names(name):
    with pytest.raises(ConfigurationError, match="not a legal Kafka topic name"):
        topic_name("", name)


# --- the envelope ---------------------------------------------------------------------------------

ENVELOPE = {
    "event_id": "evt_0190a1b2-c3d4-7e5f-8a6b-000000000001",
    "event_type": "coach.assigned",
    "schema_version": 1,
    "producer": "delivery",
    "tenant_id": "t",
    "subject": "coa_1",
    "occurred_at": "2026-01-01T00:00:00Z",
    "recorded_at": "2026-01-01T00:00:00Z",
    "correlation_id": None,
    "causation_id": None,
    "payload": {},
}


@pytest.mark.parametrize("version", [True, False, 0, -1, 1.0, "1", None])
def test_schema_version_must_be_a_positive_integer_and_not_a_boolean(version):
    """Named mutant: ``True`` is an ``int`` to Python; a boolean schema_version must be refused."""
    document = {**ENVELOPE, "schema_version": version}
    with pytest.raises(BridgeError) as info:
        decode_envelope(json.dumps(document).encode(), source="t/0/9")
    assert "/schema_version" in str(info.value)
    assert "t/0/9" in str(info.value)
    assert decode_envelope(json.dumps(ENVELOPE).encode()).schema_version == 1


# --- signing --------------------------------------------------------------------------------------

HEADERS = {"event_id": b"evt_1", "event_type": b"credit.released", "schema_version": b"2", "producer": b"revenue"}
TOPIC, KEY, VALUE = "sguild.credit.released", b"crr_1", b'{"x":1}'


def test_the_signed_message_is_exactly_the_documented_layout():
    """Other tools verify bridge's signatures: the layout is a contract, pinned byte for byte
    (domain tag, then each part as a 4-byte big-endian length and its bytes; the topic first; a
    missing header as an empty part)."""
    assert signed_message("v2", TOPIC, KEY, VALUE, HEADERS) == (
        b"bridge-signature-v2"
        b"\x00\x00\x00\x16sguild.credit.released"
        b"\x00\x00\x00\x05crr_1"
        b'\x00\x00\x00\x07{"x":1}'
        b"\x00\x00\x00\x05evt_1"
        b"\x00\x00\x00\x0fcredit.released"
        b"\x00\x00\x00\x012"
        b"\x00\x00\x00\x07revenue"
        b"\x00\x00\x00\x00"  # tenant_id is missing: an empty part, not a placeholder
    )
    assert signed_message("v1", TOPIC, KEY, VALUE, HEADERS).startswith(b"bridge-signature-v1\x00\x00\x00\x05crr_1")


def test_a_signature_header_is_exactly_what_other_tools_compute():
    name, value = Signer({"k1": "s3cret"}).header(TOPIC, KEY, VALUE, HEADERS)
    assert name == SIGNATURE_HEADER
    assert value == b"v2;k1=fprg2qF-zSJYoblZvlC94tXr_uwxbI8BKG0K36jsbaQ"


def test_named_mutant_dropping_the_length_prefixes_lets_a_forgery_verify():
    """Named mutant: without the length prefixes, key ``crr_1`` + value ``{"x":1}`` and key
    ``crr_`` + value ``1{"x":1}`` are one signed message: a forged record would verify."""
    headers = {**HEADERS, SIGNATURE_HEADER: Signer({"k1": "s3cret"}).header(TOPIC, KEY, VALUE, HEADERS)[1]}
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"k1": "s3cret"}).verify(TOPIC, b"crr_", b'1{"x":1}', headers)


@pytest.mark.parametrize("kid", ["a=b", "a,b", "v2;a", "", "k" * 65])
def test_a_key_id_the_header_cannot_carry_is_refused(kid):
    """A key id is written as ``kid=signature`` between commas: ``a=b`` would be read back as key
    ``a`` and never verify (found by the surviving ``rsplit`` mutant of the header parser)."""
    with pytest.raises(ConfigurationError, match="signing key id"):
        Signer({kid: "s"})
    with pytest.raises(ConfigurationError, match="signing key id"):
        Verifier({kid: "s"})


def test_bad_key_ids_are_named_together_and_secrets_never_shown():
    with pytest.raises(
        ConfigurationError,
        match=r"^signing key id\(s\) 'a,b', 'a=b': use 1-64 letters, digits, '\.', '_' or '-' "
        r"\(BRIDGE_SIGNING__KEYS\)$",
    ):
        Signer({"a=b": "s", "a,b": "s", "ok": "s"})
    verifier = Verifier({"k2": "hunter2", "k1": "s3cret"}, accept_v1=False)
    assert repr(verifier) == "Verifier(key_ids=['k1', 'k2'], accept_v1=False)"
    assert repr(Signer({"k2": "hunter2", "k1": "s3cret"})) == "Signer(key_ids=['k1', 'k2'])"


def test_checking_a_record_names_where_it_was_read():
    from bridge.kafka.records import Record

    record = Record("sguild.credit.released", 4, 77, KEY, VALUE, tuple(HEADERS.items()))
    with pytest.raises(SignatureError, match=r"^signature is invalid \(sguild\.credit\.released/4/77\)"):
        Verifier({"k1": "s3cret"}).check(record)


def test_signing_errors_say_what_is_wrong_and_where():
    with pytest.raises(ValueError, match=r"^a Signer needs at least one key$"):
        Signer({})
    verifier = Verifier({"k1": SecretStr("s3cret")}, accept_v1=False)
    cases = [
        ({}, "unsigned record: no bridge-signature header$"),
        ({SIGNATURE_HEADER: b"\xff"}, "malformed bridge-signature header$"),
        ({SIGNATURE_HEADER: b"v2;k1"}, "malformed bridge-signature header$"),
        ({SIGNATURE_HEADER: b"v2;a=1,b=2"}, "signed only with unknown key\\(s\\): a, b$"),
        (
            {SIGNATURE_HEADER: b"v2;k1=AAAA"},
            "- /: signature mismatch: the record was altered or signed with another secret$",
        ),
        (
            {SIGNATURE_HEADER: b"k1=AAAA"},
            r"signature format v1 \(which does not cover the topic\) is no longer accepted "
            r"\(BRIDGE_SIGNING__ACCEPT_V1=false\): the relay must sign v2$",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(SignatureError, match=message) as info:
            verifier.verify(TOPIC, KEY, VALUE, {**HEADERS, **extra}, source="t/1/2")
        assert str(info.value).startswith("signature is invalid (t/1/2)")


# --- backoff and the consumer's retry delays ------------------------------------------------------


def test_backoff_doubles_from_initial_with_full_jitter_and_never_passes_the_cap(monkeypatch):
    """Named mutant: without the cap a retry could wait hours. Jitter draws between half the
    ceiling and the ceiling."""
    drawn: list[tuple[float, float]] = []

    def ceiling(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", ceiling)
    backoff = Backoff(initial=0.5, maximum=5.0)
    delays = [backoff.next() for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert all(low == high / 2 for low, high in drawn)
    assert backoff.attempts == 8
    backoff.reset()
    assert backoff.next() == 0.5
    assert Backoff(initial=1.0, maximum=1e12).next() == 1.0
    huge = Backoff(initial=1.0, maximum=1e300)
    huge.attempts = 10_000  # no overflow however long the outage
    assert huge.next() == 2.0**30


def test_the_error_policy_retry_delay_doubles_and_is_capped():
    policy = ErrorPolicy(backoff_initial=0.5, backoff_max=3.0)
    assert [policy.retry_delay(n) for n in (0, 1, 2, 3, 4, 5)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.retry_delay(10_000) == 3.0  # no overflow
    assert ErrorPolicy(backoff_initial=1.0, backoff_max=1e300).retry_delay(10_000) == 2.0**60  # the exponent's cap
    assert isinstance(policy.retry_delay(1), float)
    with pytest.raises(ValueError, match=r"backoff_initial \(4.0\) must not exceed backoff_max \(3.0\)"):
        ErrorPolicy(backoff_initial=4.0, backoff_max=3.0)
    assert ErrorPolicy(backoff_initial=3.0, backoff_max=3.0).retry_delay(1) == 3.0  # equal is allowed


# --- outbox id helpers ----------------------------------------------------------------------------


def test_id_ranges_and_the_multirange_literal():
    """Named mutant: an off-by-one in the multirange helper would let the relay read a row it has
    in flight (or hide one it has not)."""
    assert id_ranges([]) == []
    assert id_ranges([5]) == [(5, 5)]
    assert id_ranges([7, 3, 1, 2, 2, 9, 8]) == [(1, 3), (7, 9)]
    assert id_ranges([1, 3, 5]) == [(1, 1), (3, 3), (5, 5)]
    assert multirange([]) == "{}"
    assert multirange([1, 2, 3, 7]) == "{[1,4),[7,8)}"  # upper bounds exclusive
    assert multirange([10]) == "{[10,11)}"


# --- ids ------------------------------------------------------------------------------------------


def test_generated_ids_carry_the_clock_and_increase_within_a_millisecond():
    generator = IdGenerator(clock_ms=lambda: 1_700_000_000_123)
    ids = [generator.uuid7() for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert all(u.int >> 80 == 1_700_000_000_123 for u in ids)
    counters = [(u.int >> 64) & 0xFFF for u in ids]
    assert counters == list(range(counters[0], counters[0] + 5))  # +1 each, from a random start
    default = parse_id(IdGenerator().new_id("evt"), "evt")
    assert default.timestamp.year >= 2026  # the default clock is milliseconds since the epoch


def test_parse_id_errors_name_the_problem():
    with pytest.raises(InvalidIdError, match="an id must be a string, got int"):
        parse_id(5)
    with pytest.raises(InvalidIdError, match="for example evt_01901234-5678-7abc-8def-0123456789ab"):
        parse_id("nope")


# --- Avro evolution -------------------------------------------------------------------------------


def test_an_enum_default_lets_an_older_reader_read_a_newer_symbol():
    """Named mutant: a reader enum with a default reads symbols it lacks (they become the
    default); without one it cannot."""
    writer = {"type": "enum", "name": "E", "symbols": ["x", "y"]}
    with_default = {"type": "enum", "name": "E", "symbols": ["x"], "default": "x"}
    without = {"type": "enum", "name": "E", "symbols": ["x"]}
    assert compatibility_problems(with_default, writer) == []
    assert compatibility_problems(without, writer) == ["/: the reader's enum lacks symbol(s) y"]
