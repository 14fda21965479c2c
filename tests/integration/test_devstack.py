"""The zero-Docker dev stack and the demo, for real."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from bridge.demo import run_demo
from bridge.devstack.kafka import broker_ready
from bridge.devstack.stack import DevStack

pytestmark = pytest.mark.integration


def test_dev_up_down_lifecycle():
    # Not pytest's tmp_path: it sits in a 0700 directory the unprivileged PostgreSQL user cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="bridge-devtest-"))
    tmp_path.chmod(0o755)
    stack = DevStack(tmp_path / "stack", env_file=tmp_path / ".env")
    assert stack.down() is False  # nothing running: fine
    assert stack.status() is None
    state, started = stack.up("tansu")
    try:
        assert started
        again, started_again = stack.up("tansu")  # a second up finds it running
        assert not started_again and again == state
        with psycopg.connect(state.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert broker_ready(state.bootstrap_servers)
        env = (tmp_path / ".env").read_text()
        assert f"BRIDGE_DATABASE__URL={state.database_url}" in env
        assert f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS={state.bootstrap_servers}" in env
    finally:
        assert stack.down() is True
    assert stack.status() is None and not (tmp_path / "stack").exists() and not (tmp_path / ".env").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(state.database_url, connect_timeout=2)


def test_the_demo_runs_to_completion():
    console = Console(record=True, width=120)
    result = run_demo(120, console=console, timeout=150)
    assert result.complete
    assert result.emitted == result.published == 120
    assert all((result.warehouse_rows if name == "platform-warehouse" else result.applied[name]) == expected
               for name, expected in result.expected.items())
    assert sum(result.dead_lettered.values()) == result.expected_dlq > 0
    assert sum(result.duplicates.values()) > 0
    text = console.export_text()
    assert "summary" in text and "DLQ reasons" in text and "p99" in text
