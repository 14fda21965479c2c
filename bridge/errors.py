"""The exception hierarchy of bridge: one root, one tree.

Every exception bridge raises on purpose derives from :class:`BridgeError`, so callers can catch one
root, and from a narrower class that says what kind of failure it is::

    BridgeError                         retriable = False unless said otherwise
    ├── ConfigurationError              settings or usage that cannot work (CLI exit 2)
    ├── ContractError                   the contracts themselves, or an emit that breaks their rules
    │   ├── RegistryError               the registry or a schema file is broken (lists every problem)
    │   ├── CompatibilityError          a contract change breaks the compatibility mode (lists them)
    │   └── RegistrationError           an (event_type, schema_version) that may not be emitted
    │       ├── UnknownEventTypeError
    │       ├── UnknownSchemaVersionError
    │       ├── SunsetVersionError
    │       ├── InactiveVersionError
    │       └── ProducerMismatchError
    ├── ValidationError                 data that breaks a schema (lists every violation)
    │   ├── DecodeError                 bytes that are not an envelope at all
    │   ├── SignatureError              a record whose signature is missing, unknown or wrong
    │   └── IntegrityError              a record that is not what its topic and headers say
    ├── InvalidIdError                  a malformed prefixed id
    ├── OutboxError                     emit used wrongly (e.g. outside a transaction)
    ├── RelayError                      the relay cannot go on
    │   └── LeadershipLostError         the leadership lock is gone (also an InfrastructureError)
    ├── InfrastructureError             PostgreSQL or Kafka failed us (retriable unless permanent)
    │   ├── DatabaseError
    │   │   ├── DatabaseUnavailableError    cannot connect, connection lost (retriable)
    │   │   ├── DatabaseConfigurationError  bad URL, unknown database, authentication (permanent)
    │   │   ├── SchemaNotMigratedError      bridge's tables are missing (permanent)
    │   │   └── DatabaseQueryError          a statement refused for what it is (permanent)
    │   ├── KafkaError                  a broker or client error; ``code`` names it
    │   │   ├── BrokerUnavailableError  no broker answers (retriable)
    │   │   ├── TopicNotFoundError      a topic the catalog should have made (permanent until applied)
    │   │   ├── RecordTooLargeError     about one record, never an outage (permanent)
    │   │   ├── InvalidRecordError      a record the broker refuses for what it is (permanent)
    │   │   └── KafkaFatalError         the client cannot go on (e.g. its producer id was fenced)
    │   └── DlqPublishError             a dead letter was not acknowledged (retriable: an outage)
    └── ServiceError                    a local service (dev stack, tests) could not be started

Handler decisions (:class:`RetryLater`, :class:`SkipEvent`, :class:`DeadLetter`) are not errors:
they derive from :class:`HandlerDecision`, outside this tree, so ``except BridgeError`` in a
handler can never swallow one.

Errors that are about data always say *where*: a file, a JSON pointer, an event id, a
topic/partition/offset. Every error pickles (it may cross a process boundary).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

__all__ = [
    "BridgeError",
    "BrokerUnavailableError",
    "CompatibilityError",
    "ConfigurationError",
    "ContractError",
    "DatabaseConfigurationError",
    "DatabaseError",
    "DatabaseQueryError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DecodeError",
    "DlqPublishError",
    "HandlerDecision",
    "InactiveVersionError",
    "InfrastructureError",
    "IntegrityError",
    "InvalidIdError",
    "InvalidRecordError",
    "KafkaError",
    "KafkaFatalError",
    "LeadershipLostError",
    "OutboxError",
    "Problem",
    "ProducerMismatchError",
    "RecordTooLargeError",
    "RegistrationError",
    "RegistryError",
    "RelayError",
    "RetryLater",
    "SchemaNotMigratedError",
    "ServiceError",
    "SignatureError",
    "SkipEvent",
    "SunsetVersionError",
    "TopicNotFoundError",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "ValidationError",
    "Violation",
    "json_pointer",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException:
    return cls(*args, **kwargs)


class _Picklable(Exception):
    """Remembers its constructor arguments, so subclasses with keyword-only parameters pickle."""

    _init_args: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls, *args)
        self._init_args = (args, kwargs)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        args, kwargs = self._init_args
        return (_rebuild, (type(self), args, kwargs))


class BridgeError(_Picklable):
    """Root of every error bridge raises on purpose.

    ``retriable`` says whether trying again later can succeed (an outage) or not (bad data,
    bad settings): the runner, the relay and the CLI decide with it, never with a list of types.
    """

    retriable: ClassVar[bool] = False


class ConfigurationError(BridgeError):
    """Settings are missing, contradictory or unsafe, or a command was used wrongly."""


def json_pointer(path: Iterable[str | int]) -> str:
    """The RFC 6901 JSON pointer of a path of keys and indexes (``[]`` gives ``""``, the root)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a document breaks its schema.

    ``pointer`` is the RFC 6901 JSON pointer of the offending value in the validated document (for a
    missing required property, the pointer of where it should be); ``schema_pointer`` locates the
    schema keyword that failed.
    """

    pointer: str
    message: str
    schema_pointer: str = ""

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the contracts: which file, where in it, and what."""

    file: str
    pointer: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}#{self.pointer}" if self.pointer else self.file
        return f"{where}: {self.message}"


class ContractError(BridgeError):
    """The contracts are broken, or an operation breaks their rules."""


class RegistryError(ContractError):
    """The registry or one of its schema files is broken. ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the contracts:\n{lines}")


class CompatibilityError(ContractError):
    """A change to the contracts breaks the compatibility mode. ``problems`` lists every one."""

    def __init__(self, problems: list[Problem], *, mode: str = "") -> None:
        self.problems = list(problems)
        self.mode = mode
        lines = "\n".join(f"  - {p}" for p in self.problems)
        label = f" ({mode})" if mode else ""
        super().__init__(f"{len(self.problems)} incompatible change(s){label}:\n{lines}")


class RegistrationError(ContractError):
    """An ``(event_type, schema_version)`` may not be emitted (or produced by this domain)."""

    def __init__(self, message: str, *, event_type: str, schema_version: int | None = None) -> None:
        self.event_type = event_type
        self.schema_version = schema_version
        super().__init__(message)


class UnknownEventTypeError(RegistrationError):
    """The event type is not in the registry."""


class UnknownSchemaVersionError(RegistrationError):
    """The event type is registered, but not at this schema version."""


class SunsetVersionError(RegistrationError):
    """The schema version is sunset: it may no longer be emitted."""


class InactiveVersionError(RegistrationError):
    """The schema version's ``active_from`` date is still in the future."""


class ProducerMismatchError(RegistrationError):
    """The emitting domain is not the registered producer of the event type."""


class ValidationError(BridgeError):
    """A document breaks its schema. ``violations`` lists every violation with its JSON pointer.

    ``event_id`` and ``source`` (a file, a topic/partition/offset, …) say which document, when known.
    """

    def __init__(
        self,
        what: str,
        violations: list[Violation],
        *,
        event_id: str | None = None,
        source: str | None = None,
    ) -> None:
        self.what = what
        self.violations = list(violations)
        self.event_id = event_id
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        context = ", ".join(
            part for part in (f"event {self.event_id}" if self.event_id else "", self.source or "") if part
        )
        head = f"{self.what} is invalid" + (f" ({context})" if context else "")
        body = "\n".join(f"  - {v}" for v in self.violations)
        return f"{head}: {len(self.violations)} violation(s)\n{body}"


class DecodeError(ValidationError):
    """Bytes could not be read as an envelope (invalid UTF-8, invalid JSON, NaN, not an object)."""

    def __init__(self, message: str, *, pointer: str = "", source: str | None = None) -> None:
        super().__init__("envelope", [Violation(pointer, message)], source=source)


class SignatureError(ValidationError):
    """A record's ``bridge-signature`` is missing, by an unknown key, or does not match: a security
    failure, dead-lettered without retries."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__("signature", [Violation("", message)], source=source)


class IntegrityError(ValidationError):
    """A record is not what its topic and headers say (another type's envelope on this topic,
    headers that disagree with the envelope): dead-lettered, never applied."""

    def __init__(self, violations: list[Violation], *, event_id: str | None = None, source: str | None = None) -> None:
        super().__init__("record", violations, event_id=event_id, source=source)


class InvalidIdError(BridgeError, ValueError):
    """A prefixed id is malformed (wrong prefix, not a UUID, not version 7)."""


class OutboxError(BridgeError):
    """The outbox was used wrongly, for example ``emit`` on an autocommit connection."""


class RelayError(BridgeError):
    """The relay cannot go on safely."""


# --- infrastructure -------------------------------------------------------------------------------


class InfrastructureError(BridgeError):
    """PostgreSQL or Kafka failed. Retriable (an outage) unless a subclass says it is permanent.

    ``setting`` names the setting to check (for example ``BRIDGE_DATABASE__URL``).
    """

    retriable = True

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class LeadershipLostError(RelayError, InfrastructureError):
    """The relay's session no longer holds the leadership lock (the connection was lost, or the relay
    runs behind a transaction-pooling proxy): it stops producing and stands by again."""

    retriable = True


class DatabaseError(InfrastructureError):
    """PostgreSQL failed."""


class DatabaseUnavailableError(DatabaseError):
    """PostgreSQL cannot be reached, or the connection was lost: try again later."""


class DatabaseConfigurationError(DatabaseError):
    """The database settings cannot work (malformed URL, unknown database, authentication failed,
    missing privileges): retrying will not help."""

    retriable = False


class SchemaNotMigratedError(DatabaseError):
    """bridge's tables are missing or behind: run ``bridge db migrate``."""

    retriable = False


class DatabaseQueryError(DatabaseError):
    """A statement failed for what it is (bad data, a bug): running it again will not help."""

    retriable = False


class KafkaError(InfrastructureError):
    """A Kafka broker or client error. ``code`` is librdkafka's name for it (e.g. ``_TRANSPORT``)."""

    def __init__(self, message: str, *, code: str = "", setting: str | None = None) -> None:
        self.code = code
        super().__init__(message, setting=setting)


class BrokerUnavailableError(KafkaError):
    """No broker answered in time: try again later."""


class TopicNotFoundError(KafkaError):
    """A topic does not exist: ``bridge topics apply`` makes the topics the catalog declares."""

    retriable = False


class RecordTooLargeError(KafkaError):
    """One record is larger than the broker or topic accepts: about that record, never an outage."""

    retriable = False


class InvalidRecordError(KafkaError):
    """The broker refuses one record for what it is (corrupt, bad timestamp): never an outage."""

    retriable = False


class KafkaFatalError(KafkaError):
    """The client cannot go on (for example an idempotent producer whose id was fenced); it must be
    recreated."""


class DlqPublishError(InfrastructureError):
    """A dead letter was not acknowledged: the source offset must not be committed. An outage
    (broker unreachable, DLQ topic missing): pause and retry."""


class ServiceError(BridgeError):
    """A local service could not be started or reached. The message names the command and its log."""


# --- handler decisions ----------------------------------------------------------------------------


class HandlerDecision(_Picklable):
    """Raised by a consumer handler to decide an event's fate explicitly (its transaction rolls back).

    Not a :class:`BridgeError`: a decision is not a failure, and ``except BridgeError`` must not
    swallow it.
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason or type(self).__name__)


class RetryLater(HandlerDecision):
    """Retry the event after ``delay`` seconds (or the policy's backoff); counts as an attempt."""

    def __init__(self, reason: str = "", delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(reason)


class SkipEvent(HandlerDecision):
    """Acknowledge the event without applying it (recorded in the inbox so it is not redone)."""


class DeadLetter(HandlerDecision):
    """Send the event to the consumer's DLQ topic with this reason, without retries."""
