"""deploy/kubernetes: every manifest is valid per the Kubernetes API's schemas, and agrees with bridge.

No cluster and no network: the core kinds are validated with kubernetes-validate (PyPI), which
bundles the JSON schemas of each Kubernetes release, in strict mode (a misspelt or unknown field is
refused). The PodMonitor (a Prometheus Operator CRD, in no Kubernetes schema) is checked
structurally. Then the manifests are checked against bridge itself: every container runs a real
``bridge`` command with real options, every BRIDGE_* key is a real setting that loads, the probes
are on the probe server's paths and port, and the grace period outlasts the shutdown timeout.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.memory_outbox import MemoryOutbox
from typer.testing import CliRunner

from bridge.cli import app
from bridge.clock import FakeClock
from bridge.config import BridgeSettings, load_settings
from bridge.kafka.memory import MemoryBroker, MemoryClients
from bridge.lifecycle import Health
from bridge.relay import RecordEncoder, Relay

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"

#: The oldest Kubernetes release the manifests must be valid for (its schemas ship with
#: kubernetes-validate; the APIs used are all GA, so later releases accept them too).
KUBERNETES_VERSION = "1.30"
#: bridge.cli._service ends a process that has not stopped 3 s after its shutdown timeout; the
#: kubelet's SIGKILL must come later still.
WATCHDOG_GRACE = 3.0
#: ``bridge consume`` and ``bridge sink`` stop within BRIDGE_CONSUMER__SHUTDOWN_TIMEOUT.

#: Where a pod's probe server must listen to be reached by the kubelet and Prometheus.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104

CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}
TOOL_KINDS = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
NAMESPACED_KINDS = {"ConfigMap", "Secret", "Deployment", "Job", "PodDisruptionBudget", "PodMonitor"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


DOCUMENTS = _documents()


def _label(file: str, document: dict[str, Any]) -> str:
    return f"{file}:{document.get('kind')}/{document.get('metadata', {}).get('name', '')}"


def _kinds(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCUMENTS if d.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    (found,) = _kinds(kind)
    return found


KUBERNETES_DOCUMENTS = [
    pytest.param(d, id=_label(f, d))
    for f, d in DOCUMENTS
    if (d.get("apiVersion"), d.get("kind")) not in CRD_KINDS | TOOL_KINDS
]
WORKLOADS = [d for _, d in DOCUMENTS if d.get("kind") in LONG_RUNNING_KINDS | {"Job", "CronJob"}]
LONG_RUNNING = [pytest.param(d, id=d["metadata"]["name"]) for d in WORKLOADS if d["kind"] in LONG_RUNNING_KINDS]


def _pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod_template(workload)["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


ALL_CONTAINERS = [
    pytest.param(w, c, id=f"{w['metadata']['name']}/{c['name']}") for w in WORKLOADS for c in _containers(w)
]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


# --- the files ----------------------------------------------------------------------------------


def test_the_manifests_are_all_there():
    kinds = sorted(d["kind"] for _, d in DOCUMENTS)
    for needed in ("Namespace", "ConfigMap", "Secret", "Job", "PodMonitor", "Kustomization"):
        assert needed in kinds
    assert {"bridge-relay", "bridge-warehouse-sink"} <= {d["metadata"]["name"] for d in _kinds("Deployment")}
    assert any(d["metadata"]["labels"].get("app.kubernetes.io/component") == "consumer" for d in _kinds("Deployment"))


def test_kubernetes_validate_ships_the_pinned_version():
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]' installs it)"
    )
    shipped = {re.sub(r"^(\d+\.\d+).*", r"\1", v) for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION in shipped, (
        f"kubernetes-validate {kubernetes_validate.__version__} no longer ships the schemas of Kubernetes "
        f"{KUBERNETES_VERSION} (it has {', '.join(sorted(shipped))}): raise KUBERNETES_VERSION"
    )


@pytest.mark.parametrize("document", KUBERNETES_DOCUMENTS)
def test_manifest_is_valid_per_the_kubernetes_schema(document: dict[str, Any]):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]' installs it)"
    )
    problem = validated = None
    try:
        validated = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path) or "(document)"
        problem = f"not valid for Kubernetes {exc.version}: {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        problem = exc.message
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    assert validated == KUBERNETES_VERSION


def test_the_podmonitor_scrapes_the_metrics_port_of_every_long_running_pod():
    monitor = _one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    # Field names of the Operator's PodMonitorSpec and PodMetricsEndpoint (a typo would be ignored
    # silently by nothing here, and refused by the CRD's schema only at apply time).
    assert set(spec) <= {"jobLabel", "podTargetLabels", "selector", "namespaceSelector", "podMetricsEndpoints"}
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
    assert endpoint["port"] == "metrics"
    assert endpoint.get("path", "/metrics") == "/metrics"
    namespaces = spec.get("namespaceSelector", {}).get("matchNames", [monitor["metadata"]["namespace"]])
    for workload in WORKLOADS:
        pod = _pod_template(workload)
        selected = (
            _matches(spec["selector"], pod["metadata"]["labels"]) and workload["metadata"]["namespace"] in namespaces
        )
        serves = any(p.get("name") == "metrics" for c in pod["spec"]["containers"] for p in c.get("ports", []))
        assert selected == (workload["kind"] in LONG_RUNNING_KINDS), workload["metadata"]["name"]
        assert serves or not selected, workload["metadata"]["name"]
    for label in [spec.get("jobLabel"), *spec.get("podTargetLabels", [])]:
        assert label is None or any(label in _pod_template(w)["metadata"]["labels"] for w in WORKLOADS)


def test_the_kustomization_lists_every_manifest_but_the_example_secret_and_the_podmonitor():
    kustomization = _one("Kustomization")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (DEPLOY / name).is_file(), name
    others = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    # The placeholders must never overwrite a real Secret; a PodMonitor fails where the CRD is missing.
    assert set(listed) == others - {"secret.example.yaml", "podmonitor.yaml"}
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "nothing to render: plain manifests only"


def test_every_namespaced_object_is_in_the_namespace():
    namespace = _one("Namespace")["metadata"]["name"]
    for file, document in DOCUMENTS:
        if document["kind"] in NAMESPACED_KINDS:
            assert document["metadata"].get("namespace") == namespace, _label(file, document)


# --- the commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(("workload", "container"), ALL_CONTAINERS)
def test_each_container_runs_a_real_bridge_command(workload: dict[str, Any], container: dict[str, Any]):
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[:1] == ["bridge"], f"{command} does not run bridge"
    runner = CliRunner()
    # The command path (e.g. "sink warehouse"): each word must be a subcommand whose help shows it.
    path: list[str] = []
    for word in command[1:]:
        if word.startswith("-"):
            break
        trial = runner.invoke(app, [*path, word, "--help"])
        if trial.exit_code != 0 or not re.search(rf"Usage: \S+ {re.escape(' '.join([*path, word]))}\b", trial.output):
            break
        path.append(word)
    assert path, f"{command} is not a bridge command"
    help_text = runner.invoke(app, [*path, "--help"]).output
    for option in (w for w in command[1:] if w.startswith("--")):
        assert option in help_text, f"{option} is not an option of bridge {' '.join(path)}"
    # The whole command line parses (unknown options exit 2 before --help is honoured).
    parsed = runner.invoke(app, [*command[1:], "--help"])
    assert parsed.exit_code == 0, parsed.output
    if path == ["consume"]:
        target = command[1 + len(path)]
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


@pytest.mark.parametrize("workload", LONG_RUNNING)
def test_long_running_pods_serve_probes_and_metrics(workload: dict[str, Any]):
    pod = _pod_template(workload)
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    port = _option(command, "--metrics-port")
    assert port is not None, f"{command}: no --metrics-port"
    assert port.isdigit(), f"{command}: --metrics-port {port}"
    (metrics,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == int(port)
    # The probe server binds 127.0.0.1 unless told otherwise: the kubelet could not reach it.
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert ALL_INTERFACES in (_option(command, "--metrics-host"), env.get("BRIDGE_METRICS__HOST"))
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("metrics", int(port)), probe
        # /readyz asks the broker with a 2 s timeout: the kubelet's default 1 s would cut it short.
        assert container[probe].get("timeoutSeconds", 1) >= 3, probe
    annotations = pod["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


@pytest.fixture
def deployed_settings(monkeypatch: pytest.MonkeyPatch) -> BridgeSettings:
    """bridge's settings as the pods get them: the ConfigMap and the Secret, nothing else."""
    for name in [n for n in os.environ if n.upper().startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in _settings_env().items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _settings_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for config_map in _kinds("ConfigMap"):
        env.update(config_map.get("data", {}))
    for secret in _kinds("Secret"):
        env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        env.update(secret.get("stringData", {}))
    for workload in WORKLOADS:
        for container in _containers(workload):
            env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return {k: v for k, v in env.items() if k.startswith("BRIDGE_")}


@pytest.mark.parametrize("workload", LONG_RUNNING)
def test_the_grace_period_outlasts_the_shutdown_timeout(workload: dict[str, Any], deployed_settings: BridgeSettings):
    command = _containers(workload)[-1]["command"]
    timeout = (
        deployed_settings.relay.shutdown_timeout
        if command[1] == "relay"
        else deployed_settings.consumer.shutdown_timeout
    )
    grace = _pod_template(workload)["spec"].get("terminationGracePeriodSeconds", 30)
    assert grace > timeout + WATCHDOG_GRACE, (
        f"terminationGracePeriodSeconds {grace} <= {timeout} s + {WATCHDOG_GRACE} s"
    )


def test_the_relay_runs_a_leader_and_a_standby_and_never_none_for_long():
    (relay,) = [w for w in WORKLOADS if _containers(w)[-1]["command"][1:2] == ["relay"]]
    assert relay["spec"]["replicas"] == 2
    strategy = relay["spec"]["strategy"]
    # Both race for the advisory lock, so a rolling update is safe; one that never stops a relay
    # before its successor stands by keeps a standby ready to take over throughout.
    assert strategy["type"] == "RollingUpdate"
    assert str(strategy["rollingUpdate"]["maxUnavailable"]) in ("0", "0%")
    budgets = [
        b
        for b in _kinds("PodDisruptionBudget")
        if _matches(b["spec"]["selector"], _pod_template(relay)["metadata"]["labels"])
    ]
    assert [b["spec"].get("minAvailable") for b in budgets] == [1]


@pytest.mark.parametrize(("workload", "container"), ALL_CONTAINERS)
def test_each_container_is_locked_down_and_sized(workload: dict[str, Any], container: dict[str, Any]):
    pod = _pod_template(workload)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # A numeric UID: with the image's named USER the kubelet cannot verify runAsNonRoot.
    assert isinstance(pod["securityContext"].get("runAsUser"), int)
    assert pod["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    assert container["image"] == "bridge:0.2.0"


@pytest.mark.parametrize(("workload", "container"), ALL_CONTAINERS)
def test_env_from_names_defined_config_maps_and_secrets(workload: dict[str, Any], container: dict[str, Any]):
    config_maps = {d["metadata"]["name"] for d in _kinds("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in _kinds("Secret")}
    sources = container.get("envFrom", [])
    assert sources, "no configuration"
    for source in sources:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] in config_maps
        else:
            assert source["secretRef"]["name"] in secrets


def test_every_bridge_setting_in_the_manifests_is_real(deployed_settings: BridgeSettings):
    keys = [k for d in _kinds("ConfigMap") for k in d.get("data", {})]
    keys += [k for d in _kinds("Secret") for k in [*d.get("data", {}), *d.get("stringData", {})]]
    assert len(keys) == len(set(keys)), "a key set twice: envFrom's last source would silently win"
    assert all(k.startswith("BRIDGE_") for k in keys), keys
    # Nested sections refuse unknown keys, but the top level ignores them: walk every path.
    for key in _settings_env():
        node: Any = deployed_settings
        for part in key.removeprefix("BRIDGE_").lower().split("__"):
            assert part in type(node).model_fields, f"{key}: {part!r} is not a setting"
            node = getattr(node, part)
        assert node is not None, key
    assert deployed_settings.log_format == "json"
    assert deployed_settings.database.url is not None
    assert deployed_settings.signing.signer() is not None


# --- what the liveness probe relies on --------------------------------------------------------------


class _StandbyClock(FakeClock):
    """Fake time; after ``after`` seconds it records the relay's health and stops the relay."""

    def __init__(self, after: float) -> None:
        super().__init__()
        self.until = self.monotonic() + after
        self.relay: Relay | None = None
        self.seen: list[Health] = []

    def wait(self, seconds: float, stop: Any = None) -> bool:
        self.advance(seconds)
        if self.relay is not None and self.monotonic() > self.until and not self.seen:
            self.seen.append(self.relay.health())
            self.relay.stop()
        return super().wait(0, stop)


def test_a_standby_relay_stays_alive_and_ready_for_its_probes():
    outbox = MemoryOutbox()
    outbox.take_leadership()  # the other replica leads
    clock = _StandbyClock(after=300.0)
    relay = Relay(
        outbox.connect, MemoryClients(MemoryBroker(clock=clock)), RecordEncoder("t."), schema="bridge", clock=clock
    )
    clock.relay = relay
    relay.run()
    (health,) = clock.seen
    assert health.alive, health.detail
    assert health.ready, health.detail
