"""Dead letters that would not fit the DLQ topic are sent in a form that fits (issue 15, finding 1):
the letter itself (:func:`bridge.dlq.fitted`) and the publisher on the in-memory broker — a refusal
that is about the record is never an outage, and an outage still is one."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from bridge.dlq import DeadLetterRecord, DlqPublisher
from bridge.dlq.letters import DLQ_HEADERS, fitted
from bridge.errors import DlqPublishError
from bridge.kafka.memory import MemoryBroker
from bridge.topics.naming import dlq_topic_name

TOPIC = "t.coach.assigned"
CONSUMER = "coaching"
DLQ = dlq_topic_name(TOPIC, CONSUMER)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONTRACT = [
    ("event_id", b"evt_01"),
    ("event_type", b"coach.assigned"),
    ("schema_version", b"1"),
    ("producer", b"delivery"),
    ("tenant_id", b"acme"),
    ("content-type", b"application/json"),
]


def letter(value: bytes, *, message: str = "invalid envelope", headers=None, stacktrace: str = "") -> DeadLetterRecord:
    return DeadLetterRecord(
        topic=TOPIC,
        partition=3,
        offset=1042,
        key=b"coa_1",
        value=value,
        headers=list(CONTRACT if headers is None else headers),
        error_class="bridge.errors.ValidationError",
        error_message=message,
        attempts=1,
        reason="invalid",
        stacktrace=stacktrace,
    )


def size(sent: DeadLetterRecord, headers: list[tuple[str, bytes]]) -> int:
    return len(sent.key) + len(sent.value) + sum(len(k) + len(v) for k, v in headers)


def test_a_letter_that_fits_is_sent_as_it_is():
    original = letter(b'{"x":' + b"1" * 1000 + b"}")
    sent, headers = fitted(original, CONSUMER, NOW, 1_048_588)
    assert sent.value == original.value
    assert not sent.value_replaced
    assert dict(headers)["dlq.original.offset"] == b"1042"
    assert "dlq.value" not in dict(headers)


def test_a_record_the_source_topic_took_is_kept_when_its_dead_letter_fits():
    """The issue's 1,010,000-byte poison: with its dead-letter headers it is still under the DLQ
    topic's 1,048,588 bytes, so it goes as it is (it failed only on the producer's 1,000,000)."""
    value = b"\xff" * 1_010_000
    sent, headers = fitted(letter(value, message="not JSON: " + "x" * 10_000), CONSUMER, NOW, 1_048_588)
    assert sent.value == value
    assert 1_000_000 < size(sent, headers) < 1_048_588


def test_a_letter_too_large_for_the_topic_carries_a_marker_that_says_where_the_original_is():
    """1,045,000 bytes fit the source topic (1,048,588) but not with ~8 KB of dead-letter headers."""
    value = b"\xff" * 1_045_000
    sent, headers = fitted(letter(value, message="not JSON: " + "x" * 10_000), CONSUMER, NOW, 1_048_588)
    assert sent.value_replaced
    marker = json.loads(sent.value)
    assert marker["original"] == {"topic": TOPIC, "partition": 3, "offset": 1042}
    assert marker["size"] == 1_045_000
    assert marker["sha256"] == hashlib.sha256(value).hexdigest()
    assert marker["reason"].startswith("not JSON: ")
    named = dict(headers)
    assert named["dlq.value"].startswith(b"replaced")
    assert named["dlq.reason"] == b"invalid"
    assert named["event_id"] == b"evt_01"  # the original headers travel with the marker
    assert size(sent, headers) < 1_048_588


def test_a_value_just_under_the_limit_is_kept_when_the_headers_still_fit():
    """996,000 bytes plus a long error message and a stack trace: ~1,030,000 bytes in all, which a
    1,000,000-byte producer refused; the topic (1,048,588) takes it, so the original value is kept."""
    value = b"v" * 996_000
    sent, headers = fitted(letter(value, message="m" * 20_000, stacktrace="s" * 50_000), CONSUMER, NOW, 1_048_588)
    assert sent.value == value
    assert 1_000_000 < size(sent, headers) < 1_048_588
    named = dict(headers)
    assert len(named["dlq.error.message"]) == 4000  # bounded
    assert len(named["dlq.error.stacktrace"]) == 16_000  # bounded


def test_huge_original_headers_are_cut_down_to_the_contract_headers():
    headers = [*CONTRACT, ("junk", b"j" * 2_000_000)]
    sent, sent_headers = fitted(letter(b"{}", headers=headers), CONSUMER, NOW, 1_048_588)
    assert size(sent, sent_headers) < 1_048_588
    names = [k for k, _ in sent_headers]
    assert "junk" not in names
    assert [k for k in names if k not in DLQ_HEADERS] == [k for k, _ in CONTRACT]


# --- the publisher ---------------------------------------------------------------------------------


def test_the_publisher_fits_letters_to_the_dlq_topics_own_limit():
    broker = MemoryBroker()
    broker.create_topic(DLQ, config={"max.message.bytes": "5000"})
    publisher = DlqPublisher(broker.clients(), CONSUMER, timeout=1.0)
    small, large = letter(b"{}"), letter(b"z" * 8000)
    sent = publisher.publish([small, large])
    assert [s.value_replaced for s in sent] == [False, True]
    on_topic = broker.records(DLQ)
    assert on_topic[0].value == b"{}"
    assert json.loads(on_topic[1].value)["size"] == 8000


def test_a_refusal_about_the_record_is_sent_again_as_a_marker_not_treated_as_an_outage():
    broker = MemoryBroker()
    broker.create_topic(DLQ, config={"max.message.bytes": "2000000"})
    publisher = DlqPublisher(broker.clients(), CONSUMER, timeout=1.0)
    publisher.publish([letter(b"{}")])  # the publisher has read (and keeps) the topic's limit
    broker.clients().admin().set_topic_configs({DLQ: {"max.message.bytes": "100000"}}, 1.0)
    [sent] = publisher.publish([letter(b"y" * 500_000)])  # fits what it read, refused by the topic
    assert sent.value_replaced
    [_, marker] = broker.records(DLQ)
    assert json.loads(marker.value)["size"] == 500_000
    assert dict(marker.headers)["dlq.value"].startswith(b"replaced")


def test_a_missing_dlq_topic_or_a_broker_outage_is_an_outage():
    broker = MemoryBroker()
    publisher = DlqPublisher(broker.clients(), CONSUMER, timeout=1.0)
    with pytest.raises(DlqPublishError, match="does not exist"):
        publisher.publish([letter(b"{}")])
    broker.create_topic(DLQ)
    broker.available = False
    with pytest.raises(DlqPublishError, match="cannot reach"):
        publisher.publish([letter(b"{}")])
    assert broker.records(DLQ) == []
