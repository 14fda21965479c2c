"""What every command shares: the consoles, the settings, and how errors become exit codes.

Exit codes (README, "Exit codes"): 0 success; 1 the operation failed or found problems; 2 bad usage
or configuration (settings, a database or topic that is not set up: retrying will not help);
3 a service could not be reached (the database or the broker: retrying later may); 130 interrupted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn

import typer
from rich.console import Console

from bridge.config import BridgeSettings, load_settings
from bridge.errors import BridgeError, ConfigurationError, InfrastructureError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliOptions",
    "err",
    "exit_code_of",
    "fail",
    "out",
    "settings",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

# Piped output (CI logs, grep) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


@dataclass
class CliOptions:
    """Options of the ``bridge`` command itself (before the subcommand)."""

    debug: bool = False


def settings() -> BridgeSettings:
    """The settings from ``BRIDGE_*`` (a bad one is a ConfigurationError naming it)."""
    return load_settings()


def exit_code_of(error: BaseException) -> int:
    if isinstance(error, ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, InfrastructureError):
        return EXIT_UNAVAILABLE if error.retriable else EXIT_USAGE
    if isinstance(error, BridgeError):
        return EXIT_FAILED
    return EXIT_FAILED


def label_of(error: BaseException) -> str:
    if isinstance(error, ConfigurationError):
        return "configuration error"
    if isinstance(error, InfrastructureError):
        return "unavailable" if error.retriable else "setup error"
    return "error"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)
