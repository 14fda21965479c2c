"""Configuration: one pydantic-settings model, read from ``BRIDGE_*`` environment variables.

Nested settings use ``__``: ``BRIDGE_DATABASE__URL``, ``BRIDGE_KAFKA__BOOTSTRAP_SERVERS``,
``BRIDGE_KAFKA__OPTIONS='{"linger.ms": "5"}'`` (any librdkafka setting, passed through as is).
Secrets (database URL, SASL and key passwords) are :class:`~pydantic.SecretStr`: they print as
``**********`` and are revealed only when a client is configured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigurationError

__all__ = [
    "BridgeSettings",
    "ConsumerSettings",
    "DatabaseSettings",
    "KafkaSettings",
    "RelaySettings",
    "SigningSettings",
    "load_settings",
]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_SECRET_OPTION = re.compile(r"(password|secret|\.pem$|sasl\.jaas\.config)", re.IGNORECASE)


class DatabaseSettings(BaseModel):
    """Where bridge's tables live."""

    url: SecretStr | None = Field(
        default=None, description="libpq connection URL, e.g. postgresql://user:pass@host:5432/db (a secret)."
    )
    schema_name: str = Field(default="bridge", description="PostgreSQL schema holding bridge's tables.")

    @field_validator("schema_name")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        # Quoted with psycopg.sql everywhere anyway; this refuses names that only quoting makes safe.
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not a plain schema name: use 1-63 lower-case letters, digits or _, "
                "not starting with a digit"
            )
        return value


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster. TLS and SASL settings pass through to librdkafka."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, …")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    options: dict[str, str] = Field(
        default_factory=dict, description="Any other librdkafka setting, passed through unchanged."
    )
    secret_options: dict[str, SecretStr] = Field(
        default_factory=dict, description="librdkafka settings that are secrets (e.g. sasl.oauthbearer.client.secret)."
    )

    @field_validator("options")
    @classmethod
    def _no_secrets_in_plain_options(cls, value: dict[str, str]) -> dict[str, str]:
        leaked = sorted(key for key in value if _SECRET_OPTION.search(key))
        if leaked:
            raise ValueError(
                f"{', '.join(leaked)} look like secrets: set them in secret_options "
                "(BRIDGE_KAFKA__SECRET_OPTIONS) or the dedicated *_password settings so they are never logged"
            )
        return {str(k): str(v) for k, v in value.items()}

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration for a client, secrets included. Never log the result."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        named = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        config.update({k: v for k, v in named.items() if v is not None})
        config.update(self.options)
        config.update({k: v.get_secret_value() for k, v in self.secret_options.items()})
        config.update(overrides)
        return config


class RelaySettings(BaseModel):
    """Tuning of the relay (``BRIDGE_RELAY__*``)."""

    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Outbox rows read per round trip.")
    max_in_flight: int = Field(default=5000, ge=1, description="Rows produced and not yet acknowledged, at most.")
    idle_interval: float = Field(default=0.1, gt=0, description="Seconds between reads of an empty outbox.")
    standby_interval: float = Field(default=1.0, gt=0, description="Seconds between a standby's tries for leadership.")
    notify: bool = Field(default=False, description="LISTEN for emit's NOTIFY hint (emit must notify too).")
    max_attempts: int = Field(default=5, ge=1, description="Failed deliveries of a row before it is quarantined.")
    max_message_bytes: int = Field(default=1_000_000, ge=1000, description="Largest record the broker accepts.")
    shutdown_timeout: float = Field(default=30.0, ge=0, description="Seconds to let in-flight events land on exit.")


class ConsumerSettings(BaseModel):
    """Tuning and error policy of consumers and sinks (``BRIDGE_CONSUMER__*``)."""

    batch_size: int = Field(default=500, ge=1, le=100_000, description="Records applied per transaction, at most.")
    max_attempts: int = Field(default=3, ge=1, description="Handler attempts before the DLQ.")
    backoff_initial: float = Field(default=0.5, gt=0, description="Seconds before the first retry; doubles.")
    backoff_max: float = Field(default=30.0, gt=0, description="Longest wait between retries.")
    unknown: Literal["skip", "dlq"] = Field(default="skip", description="Unknown event types or versions.")


class SigningSettings(BaseModel):
    """Event signing (``BRIDGE_SIGNING__*``). Keys are secrets: never printed or logged."""

    keys: dict[str, SecretStr] = Field(default_factory=dict, description='Key id to secret, e.g. {"k2026": "…"}.')
    sign_with: list[str] = Field(default_factory=list, description="Key ids the relay signs with (all during a rotation).")
    required: bool = Field(default=False, description="Consumers dead-letter unsigned or badly signed records.")

    def signer(self):
        from bridge.signing import Signer

        if not self.sign_with:
            return None
        missing = [kid for kid in self.sign_with if kid not in self.keys]
        if missing:
            raise ConfigurationError(f"BRIDGE_SIGNING__SIGN_WITH names unknown key id(s): {', '.join(missing)}")
        return Signer({kid: self.keys[kid] for kid in self.sign_with})

    def verifier(self):
        from bridge.signing import Verifier

        if not self.required:
            return None
        if not self.keys:
            raise ConfigurationError("BRIDGE_SIGNING__REQUIRED is set but BRIDGE_SIGNING__KEYS is empty")
        return Verifier(self.keys)


class BridgeSettings(BaseSettings):
    """Every setting of bridge. Read from the environment (prefix ``BRIDGE_``) or given directly."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    topic_prefix: str = Field(default="sguild.", description="Prepended to every topic and consumer group name.")
    producer: str | None = Field(default=None, description="The domain this process emits as (for emit and relay).")
    contracts_path: Path | None = Field(default=None, description="Contracts directory; default: the shipped one.")
    notify_channel: str = Field(default="bridge_outbox", description="NOTIFY channel shared by emit and relay.")
    value_format: Literal["json", "avro"] = Field(
        default="json", description="Record values the relay writes: JSON (default) or Avro single-object encoding."
    )

    def database_url(self) -> str:
        """The database URL, revealed for connecting. Raises when unset."""
        if self.database.url is None:
            raise ConfigurationError("BRIDGE_DATABASE__URL is not set")
        return self.database.url.get_secret_value()

    @field_validator("topic_prefix")
    @classmethod
    def _legal_topic_prefix(cls, value: str) -> str:
        if not _TOPIC_CHARS.match(value) or len(value) > 200:
            raise ValueError(f"{value!r} may only contain letters, digits, '.', '_' and '-' (Kafka topic rules)")
        return value


def load_settings(**overrides: Any) -> BridgeSettings:
    """Read settings from the environment; raise :class:`ConfigurationError` naming each bad one."""
    try:
        return BridgeSettings(**overrides)
    except pydantic.ValidationError as exc:
        lines = []
        for error in exc.errors():
            setting = "BRIDGE_" + "__".join(str(part) for part in error["loc"]).upper()
            lines.append(f"  - {setting}: {error['msg']}")
        raise ConfigurationError("invalid settings:\n" + "\n".join(lines)) from None
