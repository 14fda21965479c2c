"""docker-compose.yml is valid per the Compose specification's JSON schema, and every bridge
service runs a real bridge command. (No Docker engine here, so nothing is started.)

tests/data/compose_spec.json is compose/config/compose_spec.json from the docker-compose 1.29.2
wheel on PyPI (the Compose specification's schema as that release shipped it).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from bridge.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())


def test_compose_file_is_valid_per_the_specification():
    errors = sorted(jsonschema.Draft201909Validator(SCHEMA).iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] == []


def test_services_have_healthchecks_or_are_one_shot():
    for name, service in COMPOSE["services"].items():
        assert "healthcheck" in service or service.get("restart") == "no", name
    assert {"kafka", "postgres", "relay", "sales", "warehouse"} <= set(COMPOSE["services"])


BRIDGE_SERVICES = [name for name, s in COMPOSE["services"].items() if s.get("command", [None])[0] == "bridge"]


@pytest.mark.parametrize("name", BRIDGE_SERVICES)
def test_each_service_command_is_a_real_bridge_command(name):
    command = COMPOSE["services"][name]["command"]
    words = [w for w in command[1:] if not w.startswith("-")]
    # The command path (e.g. "sink warehouse") must resolve: --help exits 0 only for real commands.
    path: list[str] = []
    for word in words:
        trial = CliRunner().invoke(app, [*path, word, "--help"])
        if trial.exit_code != 0:
            break
        path.append(word)
    assert path, f"{command} is not a bridge command"
    options = [w for w in command[1:] if w.startswith("--")]
    help_text = CliRunner().invoke(app, [*path, "--help"]).output
    for option in options:
        assert option in help_text, f"{name}: {option} is not an option of bridge {' '.join(path)}"
    if path == ["consume"]:
        module, _, attribute = command[2].partition(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_dockerfile_installs_the_built_wheel_not_an_editable_tree():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in (
        "COPY bridge",
        "COPY contracts",
        "COPY topics",
        "COPY examples",
        "build --wheel",
        "pip install /tmp/bridge-",
    ):
        assert needed in dockerfile
    assert "pip install -e" not in dockerfile
