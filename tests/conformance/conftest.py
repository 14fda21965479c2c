"""Collection of the conformance suite (tests/conformance/test_ports.py): which backends this session
runs, and the Tansu broker when it runs that one.

- ``memory`` always runs (``make unit``: ``-m "not integration"``);
- ``kafka`` (marked ``integration``) runs on the session's ``kafka_service`` (``make test``);
- ``tansu`` (marked ``integration`` and ``tansu``) runs only with ``BRIDGE_TEST_BROKER=tansu`` (then
  ``kafka_service`` *is* Tansu and ``kafka`` is left out) or when ``-m`` names ``tansu``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bridge.devstack import TansuServer


def _tansu_selected(config: pytest.Config) -> bool:
    return os.environ.get("BRIDGE_TEST_BROKER") == "tansu" or "tansu" in (config.option.markexpr or "")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tansu: runs against a Tansu broker (conformance suite)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the backends this session does not run (see the module docstring)."""
    tansu_session = os.environ.get("BRIDGE_TEST_BROKER") == "tansu"
    unwanted = set()
    if not _tansu_selected(config):
        unwanted.add("tansu")
    if tansu_session:
        unwanted.add("kafka")  # kafka_service is Tansu in this session: the tansu backend covers it
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        (dropped if backend in unwanted else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def tansu_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Tansu broker for the session: the session's own when BRIDGE_TEST_BROKER=tansu, else one started here."""
    if os.environ.get("BRIDGE_TEST_BROKER") == "tansu":
        yield request.getfixturevalue("kafka_service").bootstrap_servers
        return
    server = TansuServer.start()
    try:
        yield server.bootstrap_servers
    finally:
        server.stop()
