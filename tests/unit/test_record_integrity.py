"""A consumer rejects records that are not what their topic and headers say (issue 15, finding 2),
read exactly as a consumer reads them (:func:`bridge.wiring.record_reader`): the envelope's type
must be the topic's, the contract headers must be there (unless the policy tolerates their absence)
and agree with the envelope, and a signature (v2) covers the topic, with v1 accepted only during
the rotation window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from pydantic import SecretStr
from support.schemas import example_for

from bridge.config import BridgeSettings, ConsumerSettings, SigningSettings
from bridge.consumer.reading import RecordReader
from bridge.contracts import Contracts
from bridge.envelope import Envelope
from bridge.errors import IntegrityError, SignatureError
from bridge.ids import new_event_id
from bridge.kafka.records import Record
from bridge.signing import SIGNATURE_HEADER, Signer, signed_message
from bridge.wiring import record_reader

CONTRACTS = Contracts.load()
PREFIX = "t."
LOCKED = f"{PREFIX}credit.locked"
CONSUMED = f"{PREFIX}credit.consumed"
KEYS = {"old": "first-secret", "new": "second-secret"}


def envelope(event_type: str = "credit.locked") -> Envelope:
    version = CONTRACTS.registry.lookup(event_type, 1)
    assert version is not None
    schema_file = CONTRACTS.registry.schema_file(version)
    assert schema_file is not None
    now = datetime.now(UTC)
    return Envelope(
        event_id=new_event_id(),
        event_type=event_type,
        schema_version=1,
        producer="revenue",
        tenant_id="acme",
        subject="crr_0192",
        occurred_at=now,
        recorded_at=now,
        payload=example_for(json.loads(schema_file.read_text())),
    )


def relay_headers(event: Envelope) -> list[tuple[str, bytes]]:
    """The headers the relay writes for ``event``."""
    return [
        ("event_id", event.event_id.encode()),
        ("event_type", event.event_type.encode()),
        ("schema_version", str(event.schema_version).encode()),
        ("producer", event.producer.encode()),
        ("tenant_id", event.tenant_id.encode()),
        ("content-type", b"application/json"),
    ]


def record(topic: str, event: Envelope, headers: list[tuple[str, bytes]] | None = None, **changes: Any) -> Record:
    fields: dict[str, Any] = {
        "topic": topic,
        "partition": 0,
        "offset": 7,
        "key": event.subject.encode(),
        "value": event.to_json(),
        "headers": tuple(relay_headers(event) if headers is None else headers),
    }
    fields.update(changes)
    return Record(**fields)


def signed(rec: Record, signer: Signer, *, for_topic: str | None = None) -> Record:
    """``rec`` with the signature the relay would add for ``for_topic`` (default: its own topic)."""
    header = signer.header(for_topic or rec.topic, rec.key, rec.value, dict(rec.headers))
    return Record(rec.topic, rec.partition, rec.offset, rec.key, rec.value, (*rec.headers, header))


def reader(
    *,
    missing_headers: Literal["dlq", "tolerate"] = "dlq",
    verify_with: dict[str, str] | None = None,
    accept_v1: bool = True,
) -> RecordReader:
    keys = {kid: SecretStr(secret) for kid, secret in (verify_with or {}).items()}
    signing = SigningSettings(keys=keys, required=verify_with is not None, accept_v1=accept_v1)
    settings = BridgeSettings(
        topic_prefix=PREFIX, consumer=ConsumerSettings(missing_headers=missing_headers), signing=signing
    )
    return record_reader(settings, CONTRACTS, consumer="delivery")


def test_a_valid_envelope_on_its_own_topic_is_read():
    event = envelope()
    delivery = reader().read(record(LOCKED, event))
    assert delivery.envelope.event_id == event.event_id


def test_a_valid_credit_locked_envelope_on_the_credit_consumed_topic_is_an_integrity_failure():
    with pytest.raises(IntegrityError, match=r"'credit.locked' envelope on the topic of 'credit.consumed'") as info:
        reader().read(record(CONSUMED, envelope()))
    assert "/event_type" in str(info.value)


def test_a_correct_signature_for_the_wrong_topic_does_not_make_the_record_acceptable():
    """Signed by a relay with the right key for the topic it sits on (so the signature verifies):
    the envelope is still not that topic's type."""
    rec = signed(record(CONSUMED, envelope()), Signer(KEYS))
    with pytest.raises(IntegrityError, match=r"credit\.consumed"):
        reader(verify_with=KEYS).read(rec)


def test_a_signed_record_copied_onto_another_topic_no_longer_verifies():
    """Format v2 covers the topic: the signature made for credit.locked fails on credit.consumed."""
    original = signed(record(LOCKED, envelope()), Signer(KEYS))
    reader(verify_with=KEYS).read(original)  # verifies where it was signed
    copy = Record(CONSUMED, 0, 7, original.key, original.value, original.headers)
    with pytest.raises(SignatureError, match="signature mismatch"):
        reader(verify_with=KEYS).read(copy)


@pytest.mark.parametrize("missing", ["event_id", "event_type", "producer"])
def test_a_record_without_a_contract_header_is_rejected_by_default_and_read_when_tolerated(missing):
    event = envelope()
    rec = record(LOCKED, event, [(k, v) for k, v in relay_headers(event) if k != missing])
    with pytest.raises(IntegrityError, match=f"contract header\\(s\\) missing: {missing}"):
        reader().read(rec)
    assert reader(missing_headers="tolerate").read(rec).envelope.event_id == event.event_id


def test_a_record_without_any_header_is_read_on_its_envelope_alone_when_tolerated():
    event = envelope()
    assert reader(missing_headers="tolerate").read(record(LOCKED, event, [])).envelope == event
    with pytest.raises(IntegrityError, match="event_id, event_type, schema_version, producer, tenant_id"):
        reader().read(record(LOCKED, event, []))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("event_id", new_event_id().encode()),
        ("event_type", b"credit.consumed"),
        ("producer", b"sales"),
        ("tenant_id", b"someone-else"),
        ("schema_version", b"2"),
    ],
)
@pytest.mark.parametrize("policy", ["dlq", "tolerate"])
def test_a_contract_header_that_disagrees_with_the_envelope_is_rejected_whatever_the_policy(name, value, policy):
    event = envelope()
    headers = [(k, value if k == name else v) for k, v in relay_headers(event)]
    with pytest.raises(IntegrityError, match=f"header {name}=.* disagrees with the envelope"):
        reader(missing_headers=policy).read(record(LOCKED, event, headers))


def test_a_key_that_is_not_the_subject_is_rejected():
    with pytest.raises(IntegrityError, match="is not the envelope's subject"):
        reader().read(record(LOCKED, envelope(), key=b"crr_other"))


def test_tampered_headers_of_a_signed_record_fail_the_signature_first():
    rec = signed(record(LOCKED, envelope()), Signer(KEYS))
    tampered = Record(
        rec.topic, 0, 7, rec.key, rec.value, tuple((k, b"sales" if k == "producer" else v) for k, v in rec.headers)
    )
    with pytest.raises(SignatureError, match="signature mismatch"):
        reader(verify_with=KEYS).read(tampered)


# --- key rotation and the v1 → v2 window ---------------------------------------------------------


def v1_signed(rec: Record, kid: str) -> Record:
    """What a relay from before format v2 wrote: ``kid=sig`` over key, value and headers, no topic."""
    message = signed_message("v1", rec.topic, rec.key, rec.value, dict(rec.headers))
    mac = hmac.new(KEYS[kid].encode(), message, hashlib.sha256).digest()
    header = (SIGNATURE_HEADER, f"{kid}=".encode() + base64.urlsafe_b64encode(mac).rstrip(b"="))
    return Record(rec.topic, rec.partition, rec.offset, rec.key, rec.value, (*rec.headers, header))


def test_a_verifier_holding_both_keys_mid_rotation_reads_records_signed_with_either_or_both():
    both = reader(verify_with=KEYS)
    for signer in (Signer({"old": KEYS["old"]}), Signer({"new": KEYS["new"]}), Signer(KEYS)):
        event = envelope()
        assert both.read(signed(record(LOCKED, event), signer)).envelope.event_id == event.event_id
    only_new = reader(verify_with={"new": KEYS["new"]})
    with pytest.raises(SignatureError, match="unknown key"):
        only_new.read(signed(record(LOCKED, envelope()), Signer({"old": KEYS["old"]})))


def test_format_v1_is_read_during_the_window_and_refused_after_it():
    rec = v1_signed(record(LOCKED, envelope()), "old")
    assert reader(verify_with=KEYS).read(rec).envelope.event_type == "credit.locked"
    with pytest.raises(SignatureError, match="no longer accepted"):
        reader(verify_with=KEYS, accept_v1=False).read(rec)


def test_during_the_window_a_v1_record_on_the_wrong_topic_is_still_caught_by_the_type_check():
    """v1 does not cover the topic, so a copied v1 record verifies: the integrity check catches it."""
    copied = v1_signed(record(CONSUMED, envelope()), "old")
    with pytest.raises(IntegrityError, match=r"credit\.consumed"):
        reader(verify_with=KEYS).read(copied)
