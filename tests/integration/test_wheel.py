"""bridge as a stranger gets it: the built wheel, installed into a fresh virtual environment outside
the checkout, used from an empty directory — with the shipped contracts, and with a contracts set
made by ``bridge init`` for an organisation whose domains are not the seed's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A fresh venv with the wheel (and its devstack extra, for the demo); yields its bin dir."""
    base = Path(tempfile.mkdtemp(prefix="bridge-wheel-"))
    base.chmod(0o755)  # the demo's PostgreSQL runs as an unprivileged user when we are root
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], check=True, capture_output=True
    )
    (wheel,) = dist.glob("bridge-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"{wheel}[devstack]"], check=True, capture_output=True)
    yield venv / "bin"
    shutil.rmtree(base, ignore_errors=True)


def run(bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_") or k.startswith("BRIDGE_PG_")}
    environ.update(env or {})
    result = subprocess.run(
        [str(bin_dir / "bridge"), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"bridge {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def empty_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bridge-stranger-"))
    path.chmod(0o755)
    return path


def test_the_wheel_carries_its_contracts_and_catalog_and_no_stray_package(installed: Path) -> None:
    probe = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import importlib.util, bridge.resources as r; "
            "print(r.shipped_contracts()); print(r.shipped_catalog()); print(importlib.util.find_spec('examples'))",
        ],
        cwd=empty_dir(),
        capture_output=True,
        text=True,
        check=True,
    )
    contracts, catalog, examples = probe.stdout.splitlines()
    assert "site-packages/bridge/_shipped/contracts" in contracts
    assert catalog.endswith("site-packages/bridge/_shipped/topics/catalog.toml")
    assert examples == "None"  # the examples are not installed as a package


def test_a_stranger_runs_the_shipped_contracts_from_an_empty_directory(installed: Path, kafka_service) -> None:
    here = empty_dir()
    assert "contracts OK: 29 event types" in run(installed, "contracts", "check", cwd=here)
    plan = run(
        installed,
        "topics",
        "plan",
        "--fit-replication",  # the test broker is a single node
        cwd=here,
        env={"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_service.bootstrap_servers, "BRIDGE_TOPIC_PREFIX": "stranger."},
    )
    assert "create          stranger.credit.released" in plan
    demo = run(installed, "demo", "--events", "60", cwd=here)
    assert "summary" in demo
    assert "commit → applied" in demo


def test_a_stranger_with_contracts_of_their_own(installed: Path, kafka_service) -> None:
    here = empty_dir()
    run(installed, "init", "org", "--domain", "storefront", "--domain", "ledger", "--prefix", "acme.", cwd=here)
    env = {"BRIDGE_CONTRACTS_PATH": str(here / "org" / "contracts")}
    assert "contracts OK: 1 event types" in run(installed, "contracts", "check", cwd=here, env=env)
    plan = run(
        installed,
        "topics",
        "plan",
        cwd=here,
        env={
            **env,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_service.bootstrap_servers,
            "BRIDGE_TOPIC_FIT_REPLICATION": "true",
        },
    )
    assert "acme.order.placed" in plan
    assert "acme.order.placed.dlq.ledger" in plan
    assert "acme.ledger.dlq-replay" in plan
    demo = run(installed, "demo", "--events", "30", cwd=here, env=env)
    assert "storefront" in demo or "ledger" in demo
    assert "summary" in demo
