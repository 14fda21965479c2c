from __future__ import annotations

import pytest
from pydantic import SecretStr

from bridge.config import load_settings
from bridge.errors import ConfigurationError, SignatureError
from bridge.signing import SIGNATURE_HEADER, Signer, Verifier, signed_message

HEADERS = {
    "event_id": b"evt_1",
    "event_type": b"credit.released",
    "schema_version": b"2",
    "producer": b"revenue",
    "tenant_id": b"acme",
    "content-type": b"application/json",
}
KEY, VALUE = b"crr_1", b'{"event_id":"evt_1"}'
TOPIC = "sguild.credit.released"


def signed(signer: Signer, key=KEY, value=VALUE, headers=HEADERS, topic=TOPIC) -> dict[str, bytes]:
    name, signature = signer.header(topic, key, value, headers)
    return {**headers, name: signature}


def test_a_valid_signature_verifies():
    headers = signed(Signer({"k1": "s3cret"}))
    assert headers[SIGNATURE_HEADER].startswith(b"v2;")
    assert Verifier({"k1": "s3cret"}).verify(TOPIC, KEY, VALUE, headers) == "k1"


def test_the_signature_covers_the_topic():
    headers = signed(Signer({"k1": "s3cret"}))
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"k1": "s3cret"}).verify("sguild.credit.locked", KEY, VALUE, headers)


def test_format_v1_verifies_during_the_rotation_window_only():
    v1 = {**HEADERS, SIGNATURE_HEADER: b"k1=" + _v1_mac(b"s3cret")}
    assert Verifier({"k1": "s3cret"}).verify(TOPIC, KEY, VALUE, v1) == "k1"
    with pytest.raises(SignatureError, match="no longer accepted"):
        Verifier({"k1": "s3cret"}, accept_v1=False).verify(TOPIC, KEY, VALUE, v1)


def _v1_mac(secret: bytes) -> bytes:
    import base64
    import hashlib
    import hmac

    message = signed_message("v1", TOPIC, KEY, VALUE, HEADERS)
    return base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).rstrip(b"=")


def test_parts_are_length_prefixed_so_moving_bytes_between_them_does_not_verify():
    # Without length prefixes "crr_1" + '{"x":1}' and "crr_" + '1{"x":1}' would sign the same bytes.
    headers = signed(Signer({"k1": "s3cret"}), key=b"crr_1", value=b'{"x":1}')
    assert signed_message("v2", TOPIC, b"crr_1", b'{"x":1}', HEADERS) != signed_message(
        "v2", TOPIC, b"crr_", b'1{"x":1}', HEADERS
    )
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"k1": "s3cret"}).verify(TOPIC, b"crr_", b'1{"x":1}', headers)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda k, v, h: (k, v + b" ", h),
        lambda k, v, h: (b"crr_2", v, h),
        lambda k, v, h: (k, v, {**h, "tenant_id": b"evil"}),
        lambda k, v, h: (k, v, {**h, "schema_version": b"1"}),
        lambda k, v, h: (k, v, {**h, "event_id": b"evt_2"}),
        lambda k, v, h: (k, v, {**h, "event_type": b"credit.locked"}),
        lambda k, v, h: (k, v, {**h, "producer": b"sales"}),
        lambda k, v, h: (k, v, {n: x for n, x in h.items() if n != "tenant_id"}),  # a signed header dropped
    ],
    ids=["value", "key", "tenant_id", "schema_version", "event_id", "event_type", "producer", "dropped"],
)
def test_tampered_records_fail(tamper):
    key, value, headers = tamper(KEY, VALUE, signed(Signer({"k1": "s3cret"})))
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"k1": "s3cret"}).verify(TOPIC, key, value, headers, source="t/0/5")


def test_unknown_key_and_unsigned_records_fail():
    with pytest.raises(SignatureError, match="unknown key"):
        Verifier({"k2": "other"}).verify(TOPIC, KEY, VALUE, signed(Signer({"k1": "s3cret"})))
    with pytest.raises(SignatureError, match="unsigned record") as info:
        Verifier({"k1": "s3cret"}).verify(TOPIC, KEY, VALUE, HEADERS, source="t/0/5")
    assert "t/0/5" in str(info.value)
    with pytest.raises(SignatureError, match="malformed"):
        Verifier({"k1": "s3cret"}).verify(TOPIC, KEY, VALUE, {**HEADERS, SIGNATURE_HEADER: b"\xff"})


def test_rotation_with_two_keys():
    both = signed(Signer({"old": "s1", "new": "s2"}))
    assert both[SIGNATURE_HEADER].decode().startswith("v2;old=")
    assert ",new=" in both[SIGNATURE_HEADER].decode()
    assert Verifier({"old": "s1"}).verify(TOPIC, KEY, VALUE, both) == "old"  # verifiers not yet moved
    assert Verifier({"new": "s2"}).verify(TOPIC, KEY, VALUE, both) == "new"  # verifiers already moved
    assert Verifier({"old": "s1", "new": "s2"}).verify(TOPIC, KEY, VALUE, both) in ("old", "new")  # holding both
    only_new = signed(Signer({"new": "s2"}))
    assert Verifier({"old": "s1", "new": "s2"}).verify(TOPIC, KEY, VALUE, only_new) == "new"
    only_old = signed(Signer({"old": "s1"}))
    assert Verifier({"old": "s1", "new": "s2"}).verify(TOPIC, KEY, VALUE, only_old) == "old"  # holding both
    # Holding both keys, a record signed with the new key id but the old secret is no good.
    forged = {**HEADERS, SIGNATURE_HEADER: signed(Signer({"old": "s1"}))[SIGNATURE_HEADER].replace(b"old=", b"new=")}
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"old": "s1", "new": "s2"}).verify(TOPIC, KEY, VALUE, forged)
    with pytest.raises(SignatureError, match="unknown key"):
        Verifier({"old": "s1"}).verify(TOPIC, KEY, VALUE, only_new)


def test_keys_are_secrets(monkeypatch):
    monkeypatch.setenv("BRIDGE_SIGNING__KEYS", '{"k1": "hunter2"}')
    monkeypatch.setenv("BRIDGE_SIGNING__SIGN_WITH", '["k1"]')
    monkeypatch.setenv("BRIDGE_SIGNING__REQUIRED", "true")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(settings.signing.signer())
    assert isinstance(settings.signing.keys["k1"], SecretStr)
    verifier = settings.signing.verifier()
    signer = settings.signing.signer()
    assert verifier is not None
    assert signer is not None
    assert verifier.verify(TOPIC, KEY, VALUE, signed(signer)) == "k1"
    monkeypatch.setenv("BRIDGE_SIGNING__SIGN_WITH", '["k9"]')
    with pytest.raises(ConfigurationError, match="unknown key id"):
        load_settings().signing.signer()
