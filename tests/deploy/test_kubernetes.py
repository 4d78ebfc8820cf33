"""deploy/k8s: renders with kustomize, passes the Kubernetes and CRD schemas, fits the worker.

Rendering uses kubectl's built-in kustomize; core kinds are validated strictly
(unknown fields fail) by kubernetes-validate's bundled schemas, and the KEDA and
prometheus-operator resources by the @kubernetes-models validators generated
from those projects' CRDs.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # kubernetes-validate ships no types
import pytest
import yaml

from tests.deploy.support import DEPLOY, NODE_MODULES, ROOT, node, npm_file, run, tool
from worker.config import SETTINGS
from worker.contract import topology

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
VALIDATE_CRDS = ROOT / "tests" / "deploy" / "tools" / "validate-crds.mjs"
#: Settings that come from the Secret, not the ConfigMap (the token only as a file).
FROM_SECRET = {"LOVENSE_AMQP_URL", "LOVENSE_UTOKEN_SECRET", "LOVENSE_DEVELOPER_TOKEN"}


@cache
def rendered(path: str) -> tuple[dict[str, Any], ...]:
    """Return the resources kustomize renders from deploy/k8s/<path>."""
    out = run([tool("kubectl"), "kustomize", K8S / path])
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(path: str, kind: str) -> dict[str, Any]:
    """Return the only resource of a kind in a rendering."""
    (found,) = [d for d in rendered(path) if d["kind"] == kind]
    return found


def container(path: str) -> dict[str, Any]:
    """Return the worker container of the StatefulSet."""
    (worker,) = one(path, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return worker  # type: ignore[no-any-return]


def settings(path: str) -> dict[str, str]:
    """Return the settings ConfigMap's data."""
    maps = [d for d in rendered(path) if d["kind"] == "ConfigMap"
            and d["metadata"]["name"].startswith("lovense-worker-settings")]
    (found,) = maps
    return found["data"]  # type: ignore[no-any-return]


def _crds(resources: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    npm_file("@kubernetes-models/keda/package.json")
    return subprocess.run([node(), VALIDATE_CRDS, NODE_MODULES], input=json.dumps(resources),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("path", "kinds"), [
    ("base", {"ServiceAccount", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget",
              "ServiceMonitor", "ScaledObject", "TriggerAuthentication"}),
    ("overlays/example", {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service",
                          "StatefulSet", "PodDisruptionBudget", "ServiceMonitor",
                          "ScaledObject", "TriggerAuthentication"}),
    ("rabbitmq", {"ConfigMap"}),
])
def test_kustomize_renders_each_kustomization(path: str, kinds: set[str]) -> None:
    """Each kustomization renders, with exactly the kinds it is meant to hold."""
    assert {d["kind"] for d in rendered(path)} == kinds


@pytest.mark.parametrize("path", ["base", "overlays/example", "rabbitmq"])
def test_core_resources_pass_strict_kubernetes_schemas(path: str) -> None:
    """Every built-in resource validates against Kubernetes 1.30's schema, unknown fields too."""
    for resource in rendered(path):
        if resource["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The Kubernetes schemas are really applied: a misspelt probe field fails them."""
    statefulset = copy.deepcopy(one("overlays/example", "StatefulSet"))
    worker = statefulset["spec"]["template"]["spec"]["containers"][0]
    worker["livenessprobe"] = worker.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_custom_resources_pass_their_crd_schemas() -> None:
    """The ScaledObject, TriggerAuthentication and ServiceMonitor pass their CRDs' schemas."""
    resources = [d for d in rendered("overlays/example") if d["kind"] in CUSTOM_KINDS]
    done = _crds(resources)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("OK ") == len(CUSTOM_KINDS)


def test_crd_validation_rejects_a_wrong_type() -> None:
    """The CRD validators are really applied: a textual maxReplicaCount fails them."""
    scaled = copy.deepcopy(one("overlays/example", "ScaledObject"))
    scaled["spec"]["maxReplicaCount"] = "four"
    done = _crds([scaled])
    assert done.returncode == 1
    assert "maxReplicaCount must be integer" in done.stdout


def test_configmap_sets_every_setting_with_its_default() -> None:
    """The settings ConfigMap lists every LOVENSE_* variable not taken from the Secret."""
    data = settings("base")
    assert set(data) | FROM_SECRET == {s.env for s in SETTINGS}
    assert not set(data) & FROM_SECRET
    # Deliberate differences from the defaults, each explained in settings.env.
    deviations = {
        "LOVENSE_DEVELOPER_TOKEN_FILE": "/var/run/secrets/lovense/developer-token",
        "LOVENSE_LOG_FORMAT": "json",
        "LOVENSE_REPLICAS": data["LOVENSE_SHARDS"],
    }
    assert data == {s.env: deviations.get(s.env, s.default) for s in SETTINGS
                    if s.env not in FROM_SECRET}


def test_worker_container_is_hardened_and_probed() -> None:
    """Non-root, read-only root, no privileges, /tmp in memory, probes on the metrics port."""
    pod = one("overlays/example", "StatefulSet")["spec"]["template"]["spec"]
    worker = container("overlays/example")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    tmp = {m["name"] for m in worker["volumeMounts"] if m["mountPath"] == "/tmp"}
    assert [v["emptyDir"]["medium"] for v in pod["volumes"] if v["name"] in tmp] == ["Memory"]
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"]
    assert port == int(settings("overlays/example")["LOVENSE_METRICS_PORT"])
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(worker["resources"]["requests"]) == set(worker["resources"]["limits"]) == {
        "cpu", "memory"}
    assert worker["args"] == ["run"]
    assert worker["image"] == "registry.example.com/lovense/lovense-worker:0.1.0"


def test_termination_grace_outlasts_the_shutdown_grace() -> None:
    """Kubernetes waits longer than LOVENSE_SHUTDOWN_GRACE_S before it kills the worker."""
    pod = one("overlays/example", "StatefulSet")["spec"]["template"]["spec"]
    grace = int(settings("overlays/example")["LOVENSE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 5


def test_secrets_reach_the_worker_as_a_file_and_secret_refs() -> None:
    """The developer token is a mounted file; the AMQP URL and utoken key are Secret refs."""
    pod = one("overlays/example", "StatefulSet")["spec"]["template"]["spec"]
    worker = container("overlays/example")
    token_file = settings("overlays/example")["LOVENSE_DEVELOPER_TOKEN_FILE"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    files = {f"{mounts[v['name']]}/{item['path']}": (v["secret"]["secretName"], item["key"])
             for v in pod["volumes"] if "secret" in v for item in v["secret"]["items"]}
    assert files[token_file] == ("lovense-worker", "developer-token")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in worker["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"LOVENSE_AMQP_URL": "amqp-url", "LOVENSE_UTOKEN_SECRET": "utoken-secret"}
    assert all(e["name"] != "LOVENSE_DEVELOPER_TOKEN" for e in worker["env"])


def test_every_referenced_secret_and_configmap_exists() -> None:
    """Each Secret key and ConfigMap the overlay's resources name is rendered alongside them."""
    resources = rendered("overlays/example")
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) for d in resources
               if d["kind"] == "Secret"}
    maps = {d["metadata"]["name"] for d in resources if d["kind"] == "ConfigMap"}
    pod = one("overlays/example", "StatefulSet")["spec"]["template"]["spec"]
    wanted = [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
              for e in container("overlays/example")["env"]
              if "secretKeyRef" in e.get("valueFrom", {})]
    wanted += [(v["secret"]["secretName"], i["key"]) for v in pod["volumes"] if "secret" in v
               for i in v["secret"]["items"]]
    wanted += [(r["name"], r["key"]) for r in
               one("overlays/example", "TriggerAuthentication")["spec"]["secretTargetRef"]]
    missing = [(name, key) for name, key in wanted if key not in secrets.get(name, set())]
    assert missing == []
    assert all(f["configMapRef"]["name"] in maps for f in container("overlays/example")["envFrom"])


def test_keda_scales_the_statefulset_on_the_shard_backlog_within_the_shards() -> None:
    """KEDA scales the StatefulSet on every shard queue, to at most LOVENSE_REPLICAS ≤ shards."""
    scaled = one("overlays/example", "ScaledObject")["spec"]
    data = settings("overlays/example")
    shards, replicas = int(data["LOVENSE_SHARDS"]), int(data["LOVENSE_REPLICAS"])
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                        "name": one("overlays/example", "StatefulSet")[
                                            "metadata"]["name"]}
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= replicas <= shards
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["authenticationRef"]["name"] == one(
        "overlays/example", "TriggerAuthentication")["metadata"]["name"]
    meta = trigger["metadata"]
    assert (meta["useRegex"], meta["operation"], meta["protocol"]) == ("true", "sum", "http")
    pattern = re.compile(meta["queueName"])
    assert all(pattern.fullmatch(topology.shard_queue(i)) for i in range(shards))
    others = [topology.STOP_QUEUE, topology.DEAD_QUEUE, topology.COMMANDS_EXCHANGE,
              topology.STOP_LOG]
    assert not any(pattern.search(name) for name in others)


def test_service_pdb_and_monitor_select_the_worker_pods() -> None:
    """The Service, PodDisruptionBudget and ServiceMonitor all find the worker's pods."""
    statefulset = one("overlays/example", "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    service = one("overlays/example", "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one("overlays/example", "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    monitor = one("overlays/example", "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    (port,) = service["spec"]["ports"]
    assert (endpoint["port"], endpoint["path"], port["targetPort"]) == ("metrics", "/metrics",
                                                                         "metrics")


def test_rabbitmq_definitions_configmap_carries_the_file() -> None:
    """The rabbitmq kustomization ships definitions.json unchanged in a ConfigMap."""
    data = one("rabbitmq", "ConfigMap")["data"]
    assert data == {"definitions.json": (K8S / "rabbitmq" / "definitions.json").read_text()}
