"""Configuration: one pydantic-settings model, read from ``BRIDGE_*`` environment variables.

Nested settings use ``__``: ``BRIDGE_DATABASE__URL``, ``BRIDGE_KAFKA__BOOTSTRAP_SERVERS``,
``BRIDGE_KAFKA__OPTIONS='{"linger.ms": "5"}'`` (any librdkafka setting, passed through as is).
Secrets (database URL, SASL and key passwords, signing keys) are :class:`~pydantic.SecretStr`:
they print as ``**********`` and are revealed only when a client is configured.

Every tunable and its default is declared here, once. Library objects take these models (or the
values in them) directly, so a default cannot drift between the library, the CLI and the docs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import pydantic
import pydantic_settings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigurationError

if TYPE_CHECKING:
    from bridge.signing import Signer, Verifier

__all__ = [
    "BridgeSettings",
    "ConsumerSettings",
    "DatabaseSettings",
    "ErrorPolicy",
    "KafkaSettings",
    "MetricsSettings",
    "RelaySettings",
    "SchemaRegistrySettings",
    "SigningSettings",
    "load_settings",
    "setting_name",
]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_SECRET_OPTION = re.compile(r"(password|secret|\.pem$|sasl\.jaas\.config)", re.IGNORECASE)


def setting_name(*path: str) -> str:
    """The environment variable of a setting: ``setting_name("relay", "batch_size")`` →
    ``BRIDGE_RELAY__BATCH_SIZE``."""
    return "BRIDGE_" + "__".join(part.upper() for part in path)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """Where bridge's tables live (``BRIDGE_DATABASE__*``)."""

    url: SecretStr | None = Field(
        default=None, description="libpq connection URL, e.g. postgresql://user:pass@host:5432/db (a secret)."
    )
    schema_name: str = Field(default="bridge", description="PostgreSQL schema holding bridge's tables.")
    connect_timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds to wait for a connection.")

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

    def url_value(self) -> str:
        """The URL, revealed for connecting. Raises :class:`ConfigurationError` when unset."""
        if self.url is None:
            raise ConfigurationError(f"{setting_name('database', 'url')} is not set")
        return self.url.get_secret_value()


class KafkaSettings(_Section):
    """How to reach the Kafka cluster (``BRIDGE_KAFKA__*``). TLS and SASL pass through to librdkafka."""

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
        default_factory=dict,
        description="librdkafka settings that are secrets (e.g. sasl.oauthbearer.client.secret).",
    )
    request_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a metadata or admin request may take before it fails."
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

    def client_config(self) -> dict[str, Any]:
        """The librdkafka connection settings, secrets included. Never log the result."""
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
        return config


class RelaySettings(_Section):
    """Tuning of the relay (``BRIDGE_RELAY__*``)."""

    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Outbox rows read per round trip.")
    max_in_flight: int = Field(default=5000, ge=1, description="Rows produced and not yet acknowledged, at most.")
    idle_interval: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Longest wait between reads of an empty outbox (the poll backs off to it).",
    )
    busy_interval: float = Field(
        default=0.001,
        ge=0,
        le=60,
        description="Wait after an empty read while events were flowing; doubles up to idle_interval.",
    )
    standby_interval: float = Field(default=1.0, gt=0, description="Seconds between a standby's tries for leadership.")
    notify: bool = Field(default=False, description="LISTEN for emit's NOTIFY hint (emit must notify too).")
    max_attempts: int = Field(default=5, ge=1, description="Failed deliveries of a row before it is quarantined.")
    max_message_bytes: int = Field(default=1_000_000, ge=1000, description="Largest record the broker accepts.")
    shutdown_timeout: float = Field(
        default=30.0, ge=0, description="Seconds a stop may take in total (in-flight events land meanwhile)."
    )
    linger_ms: float = Field(
        default=1.0, ge=0, le=1000, description="librdkafka linger.ms: how long the producer waits to fill a batch."
    )
    stats_interval: float = Field(default=5.0, gt=0, description="Seconds between backlog gauge refreshes.")

    @model_validator(mode="after")
    def _busy_not_above_idle(self) -> Self:
        if self.busy_interval > self.idle_interval:
            raise ValueError(
                f"busy_interval ({self.busy_interval}) must not exceed idle_interval ({self.idle_interval}): "
                f"lower {setting_name('relay', 'busy_interval')} or raise {setting_name('relay', 'idle_interval')}"
            )
        return self


class ErrorPolicy(_Section):
    """What a consumer does when things go wrong. The defaults are the safe ones.

    - undecodable bytes, invalid envelopes or payloads, bad signatures, records that are not what
      their topic says: DLQ at once, no retries;
    - a handler exception: ``max_attempts`` tries with exponential backoff (the partition paused,
      the poll loop alive), then DLQ;
    - database or broker unavailable: pause and retry for as long as it takes; never DLQ;
    - a subscribed event type or version no handler knows: ``unhandled`` = ``dlq`` (kept, with a
      reason ``bridge dlq replay --reason unhandled`` selects after an upgrade) or ``skip``
      (logged and counted). A type can also be skipped on purpose with ``ConsumerApp.skip``.
    """

    max_attempts: int = Field(default=3, ge=1, le=1000, description="Handler attempts before the DLQ.")
    backoff_initial: float = Field(default=0.5, gt=0, description="Seconds before the first retry; doubles.")
    backoff_max: float = Field(default=30.0, gt=0, description="Longest wait between retries.")
    unhandled: Literal["dlq", "skip"] = Field(
        default="dlq", description="Subscribed events no handler knows (a newer version, a type without handler)."
    )
    infrastructure_backoff_max: float = Field(
        default=10.0, gt=0, description="Longest wait between retries while the database or DLQ is down."
    )

    @model_validator(mode="after")
    def _initial_not_above_max(self) -> Self:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(
                f"backoff_initial ({self.backoff_initial}) must not exceed backoff_max ({self.backoff_max}): "
                f"lower {setting_name('consumer', 'backoff_initial')} "
                f"or raise {setting_name('consumer', 'backoff_max')}"
            )
        return self

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1, 2, …): doubling, capped."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** min(max(attempts, 1) - 1, 60)))


class ConsumerSettings(ErrorPolicy):
    """Tuning and error policy of consumers and sinks (``BRIDGE_CONSUMER__*``)."""

    batch_size: int = Field(default=500, ge=1, le=100_000, description="Records applied per transaction, at most.")
    poll_timeout: float = Field(
        default=0.2, gt=0, le=10, description="Seconds a poll waits for the first record (then takes what is buffered)."
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, le=300_000, description="A member silent this long leaves the group: failover time."
    )
    heartbeat_interval_ms: int = Field(
        default=1000, ge=100, le=60_000, description="Heartbeats to the group coordinator."
    )
    fetch_wait_max_ms: int = Field(
        default=100,
        ge=0,
        le=60_000,
        description="librdkafka fetch.wait.max.ms: how long the broker holds an empty fetch.",
    )
    fetch_min_bytes: int = Field(default=1, ge=1, description="librdkafka fetch.min.bytes: 1 returns records at once.")
    dlq_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for the DLQ to acknowledge a record.")
    shutdown_timeout: float = Field(
        default=30.0, ge=0, description="Seconds a stop may take in total (the last batch lands, offsets commit)."
    )
    missing_headers: Literal["dlq", "tolerate"] = Field(
        default="dlq", description="A record without the contract headers: dead-letter it, or check only the envelope."
    )

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> Self:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third of session_timeout_ms "
                f"({self.session_timeout_ms}): check {setting_name('consumer', 'heartbeat_interval_ms')}"
            )
        return self


class SigningSettings(_Section):
    """Event signing (``BRIDGE_SIGNING__*``). Keys are secrets: never printed or logged."""

    keys: dict[str, SecretStr] = Field(default_factory=dict, description='Key id to secret, e.g. {"k2026": "…"}.')
    sign_with: list[str] = Field(
        default_factory=list, description="Key ids the relay signs with (all during a rotation)."
    )
    required: bool = Field(default=False, description="Consumers dead-letter unsigned or badly signed records.")
    accept_v1: bool = Field(
        default=True,
        description="Also accept signatures of format v1 (which does not cover the topic) during the rotation window.",
    )

    def signer(self) -> Signer | None:
        from bridge.signing import Signer

        if not self.sign_with:
            return None
        missing = [kid for kid in self.sign_with if kid not in self.keys]
        if missing:
            raise ConfigurationError(
                f"{setting_name('signing', 'sign_with')} names unknown key id(s): {', '.join(missing)} "
                f"(known in {setting_name('signing', 'keys')}: {', '.join(sorted(self.keys)) or 'none'})"
            )
        return Signer({kid: self.keys[kid] for kid in self.sign_with})

    def verifier(self) -> Verifier | None:
        from bridge.signing import Verifier

        if not self.required:
            return None
        if not self.keys:
            raise ConfigurationError(
                f"{setting_name('signing', 'required')} is set but {setting_name('signing', 'keys')} is empty"
            )
        return Verifier(self.keys, accept_v1=self.accept_v1)


class MetricsSettings(_Section):
    """The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz`` (``BRIDGE_METRICS__*``)."""

    host: str = Field(default="127.0.0.1", description="Address to bind; 0.0.0.0 to be scraped from other hosts.")
    port: int | None = Field(default=None, ge=0, le=65535, description="Port; unset = no server.")


class SchemaRegistrySettings(_Section):
    """A Confluent-compatible Schema Registry (``BRIDGE_SCHEMA_REGISTRY__*``). With a URL, the relay
    registers the envelope+payload schema of each (type, version) and writes the Confluent wire
    format; consumers and sinks read it by schema id (:mod:`bridge.schema_registry`)."""

    url: str | None = Field(
        default=None, description="Base URL, e.g. http://registry:8081 (Apicurio: …/apis/ccompat/v7); unset = off."
    )
    subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        default="topic",
        description="Subject names: {topic}-value (Confluent's default), {record}, or {topic}-{record}.",
    )
    format: Literal["avro", "json"] = Field(
        default="avro", description="Schema type registered and written: Avro binary, or JSON with a JSON Schema."
    )
    basic_auth: SecretStr | None = Field(default=None, description="user:password for HTTP basic auth (a secret).")
    compatibility: (
        Literal["backward", "forward", "full", "backward-transitive", "forward-transitive", "full-transitive", "none"]
        | None
    ) = Field(default=None, description="Compatibility set on each subject; default: the contracts' mode.")
    set_compatibility: bool = Field(
        default=True, description="Set each subject's compatibility before registering (off: leave it to admins)."
    )
    auto_register: bool = Field(
        default=True, description="Register schemas the relay needs; off: only look up schemas registered by CI."
    )
    timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds an HTTP request to the registry may take.")
    options: dict[str, str] = Field(
        default_factory=dict, description="Other SchemaRegistryClient settings (e.g. ssl.ca.location), passed through."
    )


class BridgeSettings(BaseSettings):
    """Every setting of bridge. Read from the environment (prefix ``BRIDGE_``) or given directly."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="ignore", validate_default=True, frozen=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    contracts_path: Path | None = Field(
        default=None, description="Contracts directory (yours, made with bridge init); default: the shipped one."
    )
    topic_catalog: Path | None = Field(
        default=None, description="Topic catalog; default: the one the contracts name (topics/catalog.toml)."
    )
    topic_prefix: str | None = Field(
        default=None, description="Prepended to every topic and group name; default: the contracts' own (sguild.)."
    )
    topic_fit_replication: bool = Field(
        default=False,
        description=(
            "Lower the catalog's replication factor and min.insync.replicas to the brokers a cluster has (a "
            "single-node development cluster); off: topics plan/apply refuse a catalog asking for more replicas."
        ),
    )
    producer: str | None = Field(default=None, description="The domain this process emits as (emit and relay).")
    notify_channel: str = Field(default="bridge_outbox", description="NOTIFY channel shared by emit and relay.")
    value_format: Literal["json", "avro"] = Field(
        default="json", description="Record values the relay writes: JSON (default) or Avro single-object encoding."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text or one JSON object each."
    )

    def database_url(self) -> str:
        """The database URL, revealed for connecting. Raises when unset."""
        return self.database.url_value()

    @field_validator("topic_prefix")
    @classmethod
    def _legal_topic_prefix(cls, value: str | None) -> str | None:
        if value is not None and (not _TOPIC_CHARS.match(value) or len(value) > 200):
            raise ValueError(f"{value!r} may only contain letters, digits, '.', '_' and '-' (Kafka topic rules)")
        return value


#: BRIDGE_* variables that are not settings: the tests', the benchmarks' and the dev tools' own.
_NOT_SETTINGS = ("BRIDGE_TEST_", "BRIDGE_PG_", "BRIDGE_DEV_", "BRIDGE_TANSU_", "BRIDGE_BENCH_", "BRIDGE_CHAOS_")


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``BRIDGE_*`` names that are no setting (nested sections refuse unknown keys themselves)."""
    fields = {name.upper() for name in BridgeSettings.model_fields}
    problems = []
    for name in sorted(environ):
        if not name.startswith("BRIDGE_") or name.startswith(_NOT_SETTINGS):
            continue
        head = name.removeprefix("BRIDGE_").split("__", 1)[0]
        if head not in fields:
            close = difflib.get_close_matches(head, sorted(fields), n=1)
            hint = f" (did you mean {setting_name(close[0])}?)" if close else ""
            problems.append(f"  - {name}: not a setting{hint}")
    return problems


def load_settings(**overrides: Any) -> BridgeSettings:
    """Read settings from the environment; raise :class:`ConfigurationError` naming each bad one
    (an unknown ``BRIDGE_*`` name too: a misspelt setting must not be silently ignored)."""
    unknown = _unknown_variables(os.environ)
    if unknown:
        raise ConfigurationError("invalid settings:\n" + "\n".join(unknown))
    try:
        return BridgeSettings(**overrides)
    except pydantic.ValidationError as exc:
        lines = []
        for error in exc.errors():
            location = [str(part) for part in error["loc"]]
            setting = setting_name(*location) if location else "BRIDGE_*"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"  - {setting}: {message}")
        raise ConfigurationError("invalid settings:\n" + "\n".join(lines)) from None
    except pydantic_settings.SettingsError as exc:
        # A list or dict setting whose value is not JSON: pydantic-settings names only the section.
        match = re.search(r'field "(\w+)"', str(exc))
        section = setting_name(match.group(1)) if match else "BRIDGE_*"
        given = sorted(name for name in os.environ if name.upper().startswith(section))
        raise ConfigurationError(
            f"invalid settings:\n  - {', '.join(given) or section}: not valid JSON (list and dict settings "
            """are JSON, for example BRIDGE_KAFKA__OPTIONS='{"linger.ms": "5"}')"""
        ) from None
