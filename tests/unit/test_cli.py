from __future__ import annotations

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from bridge.cli import app
from bridge.resources import shipped_contracts

runner = CliRunner()


def test_contracts_check_on_the_shipped_contracts():
    result = runner.invoke(app, ["contracts", "check"])
    assert result.exit_code == 0, result.output
    assert "contracts OK: 29 event types, 31 schema versions, 24 payload schemas" in result.output


def test_contracts_check_lists_every_problem_and_fails(tmp_path):
    root = tmp_path / "contracts"
    shutil.copytree(shipped_contracts(), root)
    registry = json.loads((root / "event-types-registry.json").read_text())
    registry["events"]["lead.created"]["producer"] = "marketing"
    registry["events"]["lead.reached"]["schema_versions"][0]["status"] = "retired"
    (root / "event-types-registry.json").write_text(json.dumps(registry))
    result = runner.invoke(app, ["contracts", "check", "--path", str(root)])
    assert result.exit_code == 1
    assert "2 problem(s)" in result.output
    assert "#/events/lead.created/producer: unknown domain 'marketing'" in result.output
    assert "#/events/lead.reached/schema_versions/0/status: unknown status 'retired'" in result.output


def test_contracts_list_shows_producer_consumers_versions_and_topic(monkeypatch):
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", "stage.")
    result = runner.invoke(app, ["contracts", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["event_type"]: row for row in json.loads(result.output)}
    assert len(rows) == 29
    released = rows["credit.released"]
    assert released["producer"] == "revenue"
    assert released["consumers"] == ["delivery", "sales", "coaching", "platform-warehouse"]
    assert [v["version"] for v in released["versions"]] == [1, 2]
    assert released["versions"][0]["status"] == "deprecated"  # deprecated_at 2026-05-22 has passed
    assert released["topic"] == "stage.credit.released"


def test_contracts_list_table():
    result = runner.invoke(app, ["contracts", "list"])
    assert result.exit_code == 0
    assert "sguild.credit.released" in result.output
    assert "29 event types" in result.output


def test_console_script_exit_codes():
    bridge = [sys.executable, "-m", "bridge"]
    ok = subprocess.run([*bridge, "contracts", "check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    usage = subprocess.run([*bridge, "contracts", "nonsense"], capture_output=True, text=True)
    assert usage.returncode == 2
    bad = subprocess.run(
        [*bridge, "contracts", "list"], capture_output=True, text=True, env={"BRIDGE_TOPIC_PREFIX": "a b", "PATH": ""}
    )
    assert bad.returncode == 2
    assert "BRIDGE_TOPIC_PREFIX" in bad.stderr


def test_contracts_avro_writes_every_schema_and_check_reports_evolution(tmp_path):
    result = runner.invoke(app, ["contracts", "avro", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert "wrote 31 Avro schemas" in result.output
    written = json.loads((tmp_path / "credit.released-v2.avsc").read_text())
    assert written["name"] == "CreditReleased"
    assert written["namespace"] == "sguild.credit_released"
    check = runner.invoke(app, ["contracts", "check"])
    assert check.exit_code == 0  # incompatible pairs are reported, not fatal
    assert "2 incompatible pair(s)" in check.output
    assert "credit.released: a v2 reader cannot read v1 data" in check.output
