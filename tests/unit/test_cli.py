from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.config import ConsumerSettings, RelaySettings, setting_name
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


# --- a bad setting stops `bridge relay` and `bridge consume` before they start -----------------------

_NOT_SETTINGS = ("BRIDGE_TEST_", "BRIDGE_PG_", "BRIDGE_DEV_", "BRIDGE_TANSU_", "BRIDGE_BENCH_", "BRIDGE_CHAOS_")
_COMMANDS = {"relay": ["relay"], "consumer": ["consume", "support.consumer:app_from_environment"]}


@pytest.fixture
def only_these_settings(monkeypatch):
    """No BRIDGE_* setting from the surroundings: each case sets exactly what it tests."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") and not name.startswith(_NOT_SETTINGS):
            monkeypatch.delenv(name)


def _bad_value_cases() -> list[Any]:
    """One bad value for every BRIDGE_RELAY__* and BRIDGE_CONSUMER__* setting (read from the models,
    so a new setting is covered the day it is added): below the range for numbers (every numeric
    setting has a lower bound), not a choice for the others."""
    cases = []
    for section, model in (("relay", RelaySettings), ("consumer", ConsumerSettings)):
        for field_name, field in model.model_fields.items():
            bad = "-1" if field.annotation in (int, float) else "bogus"
            variable = setting_name(section, field_name)
            cases.append(pytest.param(section, variable, bad, id=f"{variable}={bad}"))
            if bad == "-1":
                cases.append(pytest.param(section, variable, "lots", id=f"{variable}=lots"))
    return cases


@pytest.mark.parametrize(("section", "variable", "value"), _bad_value_cases())
def test_a_bad_relay_or_consumer_setting_exits_2_naming_the_variable(only_these_settings, section, variable, value):
    result = runner.invoke(app, _COMMANDS[section], env={variable: value})
    assert result.exit_code == 2, result.output
    assert f"  - {variable}: " in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("section", "environ", "named"),
    [
        (
            "relay",
            {"BRIDGE_RELAY__BUSY_INTERVAL": "0.5"},
            ["BRIDGE_RELAY__BUSY_INTERVAL", "BRIDGE_RELAY__IDLE_INTERVAL"],
        ),
        (
            "consumer",
            {"BRIDGE_CONSUMER__BACKOFF_INITIAL": "60"},
            ["BRIDGE_CONSUMER__BACKOFF_INITIAL", "BRIDGE_CONSUMER__BACKOFF_MAX"],
        ),
        ("consumer", {"BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS": "5000"}, ["BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS"]),
        ("consumer", {"BRIDGE_CONSUMER__BATCHSIZE": "10"}, ["BRIDGE_CONSUMER__BATCHSIZE"]),
    ],
    ids=["busy-above-idle", "backoff-initial-above-max", "heartbeat-above-a-third-of-session", "misspelt"],
)
def test_contradictory_or_unknown_settings_exit_2_naming_the_variables(only_these_settings, section, environ, named):
    result = runner.invoke(app, _COMMANDS[section], env=environ)
    assert result.exit_code == 2, result.output
    for variable in named:
        assert variable in result.stderr
    assert "Traceback" not in result.output


# --- bridge inbox prune ----------------------------------------------------------------------------


def test_inbox_prune_refuses_an_unknown_consumer_before_touching_the_database(only_these_settings):
    # Nothing listens on port 1: had the command connected, it would exit 3 (unavailable).
    environ = {"BRIDGE_DATABASE__URL": "postgresql://bridge@127.0.0.1:1/bridge"}
    result = runner.invoke(app, ["inbox", "prune", "--consumer", "nosuch", "--older-than", "30d"], env=environ)
    assert result.exit_code == 2, result.output
    assert "unknown consumer 'nosuch'" in result.stderr
    assert "coaching" in result.stderr  # the consumers the contracts know are listed
    assert "Traceback" not in result.output
    # The same command for a consumer the contracts know does reach the database: the refusal above
    # is the consumer check, not a side effect of the unreachable URL.
    known = runner.invoke(app, ["inbox", "prune", "--consumer", "coaching", "--older-than", "365d"], env=environ)
    assert known.exit_code == 3, known.output
    assert "BRIDGE_DATABASE__URL" in known.stderr
