"""Signed events: HMAC-SHA256 over a record's topic, key, exact value bytes and identifying headers.

The relay adds a ``bridge-signature`` header when it has keys: ``v2;kid=signature,kid=signature``
(base64url, no padding), one signature per signing key, so a key can be rotated (sign with old and
new, move verifiers to the new one, then drop the old). A consumer that requires signatures
rejects unsigned records, records signed only with unknown keys and tampered records as security
failures (:class:`SignatureError`, dead-lettered without retries). Comparisons are constant-time.
Keys are :class:`~pydantic.SecretStr`: never printed or logged.

Formats: **v2** (the default) covers the topic, so a correctly signed record copied onto another
topic no longer verifies. **v1** (``kid=sig,…`` with no prefix) did not. Verifiers accept v1 while
``BRIDGE_SIGNING__ACCEPT_V1`` is true (the default, for the rotation window): upgrade the consumers
first, then the relays (which then sign v2), then set ``ACCEPT_V1=false`` everywhere.

The signed message is a domain tag followed by every part, each prefixed with its length, so no two
different records share a signed message (``crr_1`` + ``{"x":1}`` is not ``crr_`` + ``1{"x":1}``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from pydantic import SecretStr

from bridge.errors import ConfigurationError, SignatureError

__all__ = ["SIGNATURE_HEADER", "SIGNED_HEADERS", "SignedRecord", "Signer", "Verifier", "signed_message"]

SIGNATURE_HEADER = "bridge-signature"
#: Headers covered by the signature, besides the topic, the key and the value.
SIGNED_HEADERS = ("event_id", "event_type", "schema_version", "producer", "tenant_id")
_DOMAINS = {"v1": b"bridge-signature-v1", "v2": b"bridge-signature-v2"}
_V2 = "v2;"
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SignedRecord(Protocol):
    """What verification reads of a record (a :class:`bridge.kafka.Record` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def source(self) -> str: ...


def signed_message(version: str, topic: str, key: bytes, value: bytes, headers: Mapping[str, bytes]) -> bytes:
    """The bytes a signature of format ``version`` covers."""
    parts = [key, value, *(headers.get(name, b"") for name in SIGNED_HEADERS)]
    if version == "v2":
        parts.insert(0, topic.encode())
    return _DOMAINS[version] + b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _mac(secret: SecretStr, message: bytes) -> str:
    digest = hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _as_secrets(keys: Mapping[str, SecretStr | str]) -> dict[str, SecretStr]:
    # A key id is written into the header as ``kid=signature``, between commas: an id holding '=',
    # ',' or ';' would be parsed back as another id, and its signatures would never verify.
    bad = sorted(kid for kid in keys if not _KEY_ID.match(kid))
    if bad:
        raise ConfigurationError(
            f"signing key id(s) {', '.join(map(repr, bad))}: use 1-64 letters, digits, '.', '_' or '-' "
            "(BRIDGE_SIGNING__KEYS)"
        )
    return {kid: k if isinstance(k, SecretStr) else SecretStr(k) for kid, k in keys.items()}


class Signer:
    """Signs records with one or more keys (several during a rotation), in format v2."""

    def __init__(self, keys: Mapping[str, SecretStr | str]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = _as_secrets(keys)

    def __repr__(self) -> str:
        return f"Signer(key_ids={sorted(self._keys)})"

    def header(self, topic: str, key: bytes, value: bytes, headers: Mapping[str, bytes]) -> tuple[str, bytes]:
        message = signed_message("v2", topic, key, value, headers)
        signature = ",".join(f"{kid}={_mac(secret, message)}" for kid, secret in self._keys.items())
        return SIGNATURE_HEADER, (_V2 + signature).encode()


class Verifier:
    """Verifies ``bridge-signature``: at least one signature by a known key must match."""

    def __init__(
        self,
        keys: Mapping[str, SecretStr | str],
        *,
        accept_v1: bool = True,
        signed_topic: Callable[[SignedRecord], str] | None = None,
    ) -> None:
        self._keys = _as_secrets(keys)
        self.accept_v1 = accept_v1
        #: The topic a record was signed for (default: the one it is on). A replayed record is on
        #: the consumer's replay topic but was signed for its original topic.
        self.signed_topic = signed_topic

    def for_topics(self, signed_topic: Callable[[SignedRecord], str]) -> Verifier:
        """The same keys and rules, verifying each record against ``signed_topic(record)``."""
        return Verifier(self._keys, accept_v1=self.accept_v1, signed_topic=signed_topic)

    def __repr__(self) -> str:
        return f"Verifier(key_ids={sorted(self._keys)}, accept_v1={self.accept_v1})"

    def verify(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes],
        *,
        source: str | None = None,
    ) -> str:
        """Return the key id that verified; raise :class:`SignatureError` saying why not."""
        mapping = dict(headers)
        raw = mapping.get(SIGNATURE_HEADER)
        if raw is None:
            raise SignatureError("unsigned record: no bridge-signature header", source=source)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("malformed bridge-signature header", source=source) from None
        version = "v1"
        if text.startswith(_V2):
            version, text = "v2", text[len(_V2) :]
        elif not self.accept_v1:
            raise SignatureError(
                "signature format v1 (which does not cover the topic) is no longer accepted "
                "(BRIDGE_SIGNING__ACCEPT_V1=false): the relay must sign v2",
                source=source,
            )
        try:
            signatures = dict(item.split("=", 1) for item in text.split(",") if item)
        except ValueError:
            raise SignatureError("malformed bridge-signature header", source=source) from None
        known = [kid for kid in signatures if kid in self._keys]
        if not known:
            raise SignatureError(f"signed only with unknown key(s): {', '.join(sorted(signatures))}", source=source)
        message = signed_message(version, topic, key, value, mapping)
        for kid in known:
            if hmac.compare_digest(_mac(self._keys[kid], message).encode(), signatures[kid].encode()):
                return kid
        raise SignatureError("signature mismatch: the record was altered or signed with another secret", source=source)

    def check(self, record: SignedRecord) -> None:
        """The consumer's hook (:class:`~bridge.consumer.reading.RecordVerifier`)."""
        topic = self.signed_topic(record) if self.signed_topic is not None else record.topic
        self.verify(topic, record.key, record.value, record.headers, source=record.source)
