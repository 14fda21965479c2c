"""Signed events: HMAC-SHA256 over a record's exact value bytes, its key and its identifying headers.

The relay adds a ``bridge-signature`` header when it has keys: ``kid=signature`` pairs separated by
commas (base64url, no padding), one per signing key, so a key can be rotated (sign with old and
new, move verifiers to the new one, then drop the old). A consumer that requires signatures
rejects unsigned records, records signed only with unknown keys and tampered records as security
failures (:class:`SignatureError`, dead-lettered without retries). Comparisons are constant-time.
Keys are :class:`~pydantic.SecretStr`: never printed or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence

from pydantic import SecretStr

from bridge.errors import SignatureError

__all__ = ["SIGNATURE_HEADER", "SIGNED_HEADERS", "Signer", "Verifier"]

SIGNATURE_HEADER = "bridge-signature"
#: Headers covered by the signature, besides the key and the value.
SIGNED_HEADERS = ("event_id", "event_type", "schema_version", "producer", "tenant_id")
_DOMAIN = b"bridge-signature-v1"


def _message(key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> bytes:
    # Every part length-prefixed, so no two different records share a signed message.
    parts = [key or b"", value or b""] + [headers.get(name, b"") for name in SIGNED_HEADERS]
    return _DOMAIN + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _mac(secret: SecretStr, message: bytes) -> str:
    digest = hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _as_secrets(keys: Mapping[str, SecretStr | str]) -> dict[str, SecretStr]:
    return {kid: k if isinstance(k, SecretStr) else SecretStr(k) for kid, k in keys.items()}


class Signer:
    """Signs records with one or more keys (several during a rotation)."""

    def __init__(self, keys: Mapping[str, SecretStr | str]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = _as_secrets(keys)

    def __repr__(self) -> str:
        return f"Signer(key_ids={sorted(self._keys)})"

    def header(self, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> tuple[str, bytes]:
        message = _message(key, value, headers)
        signature = ",".join(f"{kid}={_mac(secret, message)}" for kid, secret in self._keys.items())
        return SIGNATURE_HEADER, signature.encode()


class Verifier:
    """Verifies ``bridge-signature``: at least one signature by a known key must match."""

    def __init__(self, keys: Mapping[str, SecretStr | str]) -> None:
        self._keys = _as_secrets(keys)

    def __repr__(self) -> str:
        return f"Verifier(key_ids={sorted(self._keys)})"

    def verify(self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes],
               *, source: str | None = None) -> str:
        """Return the key id that verified; raise :class:`SignatureError` saying why not."""
        mapping = dict(headers)
        raw = mapping.get(SIGNATURE_HEADER)
        if raw is None:
            raise SignatureError("unsigned record: no bridge-signature header", source=source)
        try:
            pairs = [item.split("=", 1) for item in raw.decode("ascii").split(",") if item]
            signatures = {kid: sig for kid, sig in pairs}
        except (UnicodeDecodeError, ValueError):
            raise SignatureError("malformed bridge-signature header", source=source) from None
        known = [kid for kid in signatures if kid in self._keys]
        if not known:
            raise SignatureError(f"signed only with unknown key(s): {', '.join(sorted(signatures))}", source=source)
        message = _message(key, value, mapping)
        for kid in known:
            if hmac.compare_digest(_mac(self._keys[kid], message).encode(), signatures[kid].encode()):
                return kid
        raise SignatureError("signature mismatch: the record was altered or signed with another secret", source=source)

    def check_message(self, message) -> None:
        """For :class:`~bridge.consumer.ConsumerRunner`'s ``verifier`` hook."""
        self.verify(message.key(), message.value(), message.headers() or [],
                    source=f"{message.topic()}/{message.partition()}/{message.offset()}")
