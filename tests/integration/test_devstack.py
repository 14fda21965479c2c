"""The zero-Docker dev stack and the demo, for real."""

from __future__ import annotations

import os
import signal
import tempfile
import time
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
    assert stack.down() == []  # nothing running: fine
    assert stack.status() is None
    state, started = stack.up("tansu")
    try:
        assert started == ["PostgreSQL", "tansu"]
        again, started_again = stack.up("tansu")  # a second up finds it running
        assert started_again == []
        assert again == state
        with psycopg.connect(state.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert broker_ready(state.bootstrap_servers)
        env = (tmp_path / ".env").read_text()
        assert f"BRIDGE_DATABASE__URL={state.database_url}" in env
        assert f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS={state.bootstrap_servers}" in env
    finally:
        assert stack.down() == ["PostgreSQL", "tansu"]
    assert stack.status() is None
    assert not (tmp_path / "stack").exists()
    assert not (tmp_path / ".env").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(state.database_url, connect_timeout=2)


def test_dev_up_after_the_broker_died_restarts_only_the_broker_and_keeps_the_data_and_ports():
    tmp_path = Path(tempfile.mkdtemp(prefix="bridge-devtest-"))
    tmp_path.chmod(0o755)
    stack = DevStack(tmp_path / "stack", env_file=tmp_path / ".env")
    state, _ = stack.up("tansu")
    try:
        with psycopg.connect(state.database_url) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
        os.kill(state.broker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while stack.status().broker_running and time.monotonic() < deadline:  # type: ignore[union-attr]  # status() is None only before up(), which ran above
            time.sleep(0.1)
        report = stack.status()
        assert report is not None
        assert report.postgres_running
        assert not report.broker_running
        assert not report.all_running
        revived, started = stack.up()
        assert started == ["tansu"]  # PostgreSQL was fine: left alone
        assert (revived.database_url, revived.bootstrap_servers) == (state.database_url, state.bootstrap_servers)
        assert revived.broker_pid != state.broker_pid
        assert revived.all_running
        with psycopg.connect(revived.database_url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]
        assert broker_ready(revived.bootstrap_servers)
    finally:
        stack.down()


def test_the_demo_runs_to_completion():
    console = Console(record=True, width=120)
    result = run_demo(120, console=console, timeout=150)
    assert result.complete
    assert result.emitted == result.published == 120
    assert all(
        (result.warehouse_rows if name == "platform-warehouse" else result.applied[name]) == expected
        for name, expected in result.expected.items()
    )
    assert sum(result.dead_lettered.values()) == result.expected_dlq > 0
    assert sum(result.duplicates.values()) > 0
    text = console.export_text()
    assert "summary" in text
    assert "DLQ reasons" in text
    assert "p99" in text
