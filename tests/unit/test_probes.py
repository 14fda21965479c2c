"""The probe server of the long-running commands, through ``bridge relay``: where it binds (loopback
unless told otherwise, by ``--metrics-host`` or ``BRIDGE_METRICS__HOST``) and what it answers.

The command runs in-process for real (settings, ``run_service``, the probe server); only the relay
it builds is replaced by a stub that, while "running", asks the probe server over HTTP. No database
or broker is needed. 127.0.0.2 is loopback too on Linux, but a different address: a server bound to
127.0.0.1 does not answer on it, one bound to 0.0.0.0 does.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from typer.testing import CliRunner

import bridge.cli.run
from bridge.cli import app
from bridge.lifecycle import Health

_OWN = ("BRIDGE_TEST_", "BRIDGE_PG_", "BRIDGE_DEV_", "BRIDGE_TANSU_", "BRIDGE_BENCH_", "BRIDGE_CHAOS_")
_SERVING = re.compile(r"metrics and probes on http://(?P<host>[^:/]+):(?P<port>\d+)/")


def ask(host: str, port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of GET http://host:port/path, or None when nothing listens there."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:
        if not isinstance(error.reason, ConnectionRefusedError):
            raise
        return None


class ProbingStub:
    """Stands in for the relay: while it runs, it reads where the command said it serves probes
    and asks every address and path the test wants."""

    name = "relay"
    unconfirmed_at_stop = 0

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self._started = threading.Event()
        self.serving: dict[str, str] = {}
        self.answers: dict[tuple[str, str], tuple[int, bytes] | None] = {}

    @property
    def started(self) -> threading.Event:
        return self._started

    def run(self) -> None:
        self._started.set()
        (match,) = [m for r in self.caplog.records if (m := _SERVING.search(r.getMessage()))]
        self.serving = match.groupdict()
        port = int(match["port"])
        for host in ("127.0.0.1", "127.0.0.2"):
            for path in ("/healthz", "/readyz", "/metrics", "/nosuch", "/"):
                self.answers[(host, path)] = ask(host, port, path)

    def stop(self) -> None:
        pass

    def health(self) -> Health:
        # Not ready: the probe server then does not ask a broker (there is none here).
        return Health(alive=True, ready=False, detail="a stub")


@pytest.fixture
def relay_command(monkeypatch, caplog):
    """``bridge relay <args>`` with ``environ`` as its only BRIDGE_* settings; the stub it ran."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") and not name.startswith(_OWN):
            monkeypatch.delenv(name)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Logging stays with pytest (the command would point the root logger at its own stderr).
    monkeypatch.setattr(bridge.cli.run, "setup_logging", lambda *_args, **_kwargs: None)

    def run(args: list[str], environ: dict[str, str]) -> ProbingStub:
        stub = ProbingStub(caplog)
        monkeypatch.setattr(bridge.cli.run, "build_relay", lambda *_args, **_kwargs: stub)
        with caplog.at_level("INFO", logger="bridge"):
            result = CliRunner().invoke(app, ["relay", "--metrics-port", "0", *args], env=environ)
        assert result.exit_code == 0, (result.output, result.exception)
        assert stub.answers, "the stub never ran"
        return stub

    yield run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def served(stub: ProbingStub, host: str) -> dict[str, Any]:
    return {path: (answer and answer[0]) for (h, path), answer in stub.answers.items() if h == host}


def test_the_probe_server_binds_loopback_by_default(relay_command):
    stub = relay_command([], {})
    assert stub.serving["host"] == "127.0.0.1"
    assert served(stub, "127.0.0.1") == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/nosuch": 404, "/": 404}
    # Bound to 127.0.0.1 only, not to every address: another address of the host gets no answer.
    assert served(stub, "127.0.0.2") == dict.fromkeys(("/healthz", "/readyz", "/metrics", "/nosuch", "/"))


@pytest.mark.parametrize(
    ("args", "environ"),
    [(["--metrics-host", "127.0.0.2"], {}), ([], {"BRIDGE_METRICS__HOST": "127.0.0.2"})],
    ids=["option", "setting"],
)
def test_metrics_host_moves_the_probe_server(relay_command, args, environ):
    stub = relay_command(args, environ)
    assert stub.serving["host"] == "127.0.0.2"
    assert served(stub, "127.0.0.2") == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/nosuch": 404, "/": 404}
    assert served(stub, "127.0.0.1") == dict.fromkeys(("/healthz", "/readyz", "/metrics", "/nosuch", "/"))


def test_the_option_wins_over_the_setting_and_all_interfaces_answer_on_every_address(relay_command):
    stub = relay_command(["--metrics-host", "0.0.0.0"], {"BRIDGE_METRICS__HOST": "127.0.0.2"})  # noqa: S104  # the point
    assert stub.serving["host"] == "0.0.0.0"  # noqa: S104
    for host in ("127.0.0.1", "127.0.0.2"):
        assert served(stub, host) == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/nosuch": 404, "/": 404}


def test_the_probe_answers_say_what_they_are(relay_command):
    stub = relay_command([], {})
    healthz = stub.answers[("127.0.0.1", "/healthz")]
    metrics = stub.answers[("127.0.0.1", "/metrics")]
    unknown = stub.answers[("127.0.0.1", "/nosuch")]
    assert healthz is not None
    assert metrics is not None
    assert unknown is not None
    assert b'"alive": true' in healthz[1]
    assert b"bridge_relay_backlog_events" in metrics[1]  # the relay's own registry, not an empty page
    assert unknown[1] == b"not found: /metrics, /healthz, /readyz\n"
