from __future__ import annotations

import pytest
from pydantic import SecretStr

from bridge.config import load_settings
from bridge.errors import ConfigurationError, SignatureError
from bridge.signing import SIGNATURE_HEADER, Signer, Verifier

HEADERS = {"event_id": b"evt_1", "event_type": b"credit.released", "schema_version": b"2", "producer": b"revenue",
           "tenant_id": b"acme", "content-type": b"application/json"}
KEY, VALUE = b"crr_1", b'{"event_id":"evt_1"}'


def signed(signer: Signer, key=KEY, value=VALUE, headers=HEADERS) -> dict[str, bytes]:
    name, signature = signer.header(key, value, headers)
    return {**headers, name: signature}


def test_a_valid_signature_verifies():
    headers = signed(Signer({"k1": "s3cret"}))
    assert Verifier({"k1": "s3cret"}).verify(KEY, VALUE, headers) == "k1"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda k, v, h: (k, v + b" ", h),
        lambda k, v, h: (b"crr_2", v, h),
        lambda k, v, h: (k, v, {**h, "tenant_id": b"evil"}),
        lambda k, v, h: (k, v, {**h, "schema_version": b"1"}),
    ],
)
def test_tampered_records_fail(tamper):
    key, value, headers = tamper(KEY, VALUE, signed(Signer({"k1": "s3cret"})))
    with pytest.raises(SignatureError, match="signature mismatch"):
        Verifier({"k1": "s3cret"}).verify(key, value, headers, source="t/0/5")


def test_unknown_key_and_unsigned_records_fail():
    with pytest.raises(SignatureError, match="unknown key"):
        Verifier({"k2": "other"}).verify(KEY, VALUE, signed(Signer({"k1": "s3cret"})))
    with pytest.raises(SignatureError, match="unsigned record") as info:
        Verifier({"k1": "s3cret"}).verify(KEY, VALUE, HEADERS, source="t/0/5")
    assert "t/0/5" in str(info.value)
    with pytest.raises(SignatureError, match="malformed"):
        Verifier({"k1": "s3cret"}).verify(KEY, VALUE, {**HEADERS, SIGNATURE_HEADER: b"\xff"})


def test_rotation_with_two_keys():
    both = signed(Signer({"old": "s1", "new": "s2"}))
    assert both[SIGNATURE_HEADER].decode().startswith("old=") and ",new=" in both[SIGNATURE_HEADER].decode()
    assert Verifier({"old": "s1"}).verify(KEY, VALUE, both) == "old"  # verifiers not yet moved
    assert Verifier({"new": "s2"}).verify(KEY, VALUE, both) == "new"  # verifiers already moved
    only_new = signed(Signer({"new": "s2"}))
    with pytest.raises(SignatureError, match="unknown key"):
        Verifier({"old": "s1"}).verify(KEY, VALUE, only_new)


def test_keys_are_secrets(monkeypatch):
    monkeypatch.setenv("BRIDGE_SIGNING__KEYS", '{"k1": "hunter2"}')
    monkeypatch.setenv("BRIDGE_SIGNING__SIGN_WITH", '["k1"]')
    monkeypatch.setenv("BRIDGE_SIGNING__REQUIRED", "true")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in repr(settings.signing.signer())
    assert isinstance(settings.signing.keys["k1"], SecretStr)
    assert settings.signing.verifier().verify(KEY, VALUE, signed(settings.signing.signer())) == "k1"
    monkeypatch.setenv("BRIDGE_SIGNING__SIGN_WITH", '["k9"]')
    with pytest.raises(ConfigurationError, match="unknown key id"):
        load_settings().signing.signer()
