"""The exception hierarchy of bridge.

Every exception bridge raises on purpose derives from :class:`BridgeError`, so callers can catch one
root, and from a narrower class that says what kind of failure it is::

    BridgeError
    ├── ConfigurationError          settings that cannot work
    ├── ContractError               the contracts themselves, or an emit that breaks their rules
    │   ├── RegistryError           the registry or a schema file is broken (lists every problem)
    │   └── RegistrationError       an (event_type, schema_version) that may not be emitted
    │       ├── UnknownEventTypeError
    │       ├── UnknownSchemaVersionError
    │       ├── SunsetVersionError
    │       ├── InactiveVersionError
    │       └── ProducerMismatchError
    ├── ValidationError             data that breaks a schema (lists every violation)
    │   ├── DecodeError             bytes that are not an envelope at all
    │   └── SignatureError          a record whose signature is missing, unknown or wrong
    ├── InvalidIdError              a malformed prefixed id
    ├── OutboxError                 emit used wrongly (e.g. outside a transaction)
    ├── RelayError                  the relay cannot go on (e.g. it lost its leadership lock)
    ├── HandlerDecision             a consumer handler says what to do with the event
    │   ├── RetryLater              retry it after a delay (counts as a failed attempt)
    │   ├── SkipEvent               acknowledge it without effect
    │   └── DeadLetter              send it to the DLQ with a reason
    └── ServiceError                a service (PostgreSQL, Kafka) could not be started or reached

Errors that are about data always say *where*: a file, a JSON pointer, an event id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BridgeError",
    "ConfigurationError",
    "ContractError",
    "DeadLetter",
    "DecodeError",
    "HandlerDecision",
    "InactiveVersionError",
    "InvalidIdError",
    "OutboxError",
    "Problem",
    "ProducerMismatchError",
    "RegistrationError",
    "RegistryError",
    "RelayError",
    "RetryLater",
    "ServiceError",
    "SignatureError",
    "SkipEvent",
    "SunsetVersionError",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "ValidationError",
    "Violation",
    "json_pointer",
]


class BridgeError(Exception):
    """Root of every error bridge raises on purpose."""


class ConfigurationError(BridgeError):
    """Settings are missing, contradictory or unsafe."""


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
            part
            for part in (
                f"event {self.event_id}" if self.event_id else "",
                self.source or "",
            )
            if part
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


class InvalidIdError(BridgeError, ValueError):
    """A prefixed id is malformed (wrong prefix, not a UUID, not version 7)."""


class OutboxError(BridgeError):
    """The outbox was used wrongly, for example ``emit`` on an autocommit connection."""


class RelayError(BridgeError):
    """The relay cannot go on safely (for example it lost the session holding its leadership lock)."""


class HandlerDecision(BridgeError):
    """Raised by a consumer handler to decide an event's fate explicitly (the transaction rolls back)."""

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


class ServiceError(BridgeError):
    """A service could not be started or reached. The message names the command and its log."""
