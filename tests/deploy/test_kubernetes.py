"""deploy/k8s: renders with kustomize, passes the Kubernetes and CRD schemas, fits the worker
and the callback endpoint.

Rendering uses kubectl's built-in kustomize; core kinds are validated strictly
(unknown fields fail) by kubernetes-validate's bundled schemas, and the KEDA and
prometheus-operator resources by the @kubernetes-models validators generated
from those projects' CRDs.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # kubernetes-validate ships no types
import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    NODE_MODULES,
    ROOT,
    cli_accepts,
    node,
    npm_file,
    run,
    tool,
)
from worker import tracing
from worker.config import SETTINGS
from worker.contract import topology
from worker.endpoint import settings_from_env

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
#: Checked against the cluster operator's CRD schema in test_rabbitmq_cluster.py.
OPERATOR_KINDS = {"RabbitmqCluster"}
VALIDATE_CRDS = ROOT / "tests" / "deploy" / "tools" / "validate-crds.mjs"
#: Settings that come from the Secret, not the ConfigMap (the token only as a file).
FROM_SECRET = {"LOVENSE_AMQP_URL", "LOVENSE_UTOKEN_SECRET", "LOVENSE_DEVELOPER_TOKEN"}
#: The names of the worker's and the callback endpoint's objects.
WORKER, CALLBACKS = "lovense-worker", "lovense-callbacks"


@cache
def rendered(path: str) -> tuple[dict[str, Any], ...]:
    """Return the resources kustomize renders from deploy/k8s/<path>."""
    out = run([tool("kubectl"), "kustomize", K8S / path])
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(path: str, kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the only resource of a kind (and name, when given) in a rendering."""
    (found,) = [d for d in rendered(path) if d["kind"] == kind
                and name in (None, d["metadata"]["name"])]
    return found


def container(path: str) -> dict[str, Any]:
    """Return the worker container of its Deployment."""
    (worker,) = one(path, "Deployment", WORKER)["spec"]["template"]["spec"]["containers"]
    return worker  # type: ignore[no-any-return]


def callbacks_container(path: str) -> dict[str, Any]:
    """Return the callback endpoint's container of its Deployment."""
    (endpoint,) = one(path, "Deployment", CALLBACKS)["spec"]["template"]["spec"]["containers"]
    return endpoint  # type: ignore[no-any-return]


def env_values(container_spec: dict[str, Any]) -> dict[str, str]:
    """Return a container's literal `env` values (not those from Secrets)."""
    return {e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Return whether a matchLabels selector picks an object with these labels."""
    return selector.items() <= labels.items()


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


_BASE = {("ServiceAccount", WORKER), ("ConfigMap", "lovense-worker-settings"),
         ("Service", WORKER), ("Deployment", WORKER), ("PodDisruptionBudget", WORKER),
         ("ServiceMonitor", WORKER), ("ScaledObject", WORKER),
         ("TriggerAuthentication", "lovense-worker-rabbitmq"),
         ("ServiceAccount", CALLBACKS), ("Deployment", CALLBACKS), ("Service", CALLBACKS),
         ("PodDisruptionBudget", CALLBACKS), ("ServiceMonitor", CALLBACKS)}


@pytest.mark.parametrize(("path", "objects"), [
    ("base", _BASE),
    ("overlays/example", _BASE | {("Namespace", "lovense"), ("Secret", WORKER),
                                  ("Ingress", CALLBACKS)}),
    ("rabbitmq", {("ConfigMap", "lovense-rabbitmq-definitions"),
                  ("RabbitmqCluster", "lovense-rabbitmq")}),
])
def test_kustomize_renders_each_kustomization(path: str, objects: set[tuple[str, str]]) -> None:
    """Each kustomization renders, with exactly the objects it is meant to hold."""
    names = [(d["kind"], re.sub(r"^(lovense-worker-settings)-[a-z0-9]+$", r"\1",
                                d["metadata"]["name"])) for d in rendered(path)]
    assert len(names) == len(set(names))
    assert set(names) == objects


@pytest.mark.parametrize("path", ["base", "overlays/example", "rabbitmq"])
def test_core_resources_pass_strict_kubernetes_schemas(path: str) -> None:
    """Every built-in resource validates against Kubernetes 1.30's schema, unknown fields too."""
    for resource in rendered(path):
        if resource["kind"] not in CUSTOM_KINDS | OPERATOR_KINDS:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The Kubernetes schemas are really applied: a misspelt probe field fails them."""
    deployment = copy.deepcopy(one("overlays/example", "Deployment", WORKER))
    worker = deployment["spec"]["template"]["spec"]["containers"][0]
    worker["livenessprobe"] = worker.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_custom_resources_pass_their_crd_schemas() -> None:
    """The ScaledObject, TriggerAuthentication and both ServiceMonitors pass their CRDs'
    schemas."""
    resources = [d for d in rendered("overlays/example") if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in resources} == CUSTOM_KINDS
    done = _crds(resources)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("OK ") == len(resources) == len(CUSTOM_KINDS) + 1


def test_crd_validation_rejects_a_wrong_type() -> None:
    """The CRD validators are really applied: a textual maxReplicaCount fails them."""
    scaled = copy.deepcopy(one("overlays/example", "ScaledObject"))
    scaled["spec"]["maxReplicaCount"] = "four"
    done = _crds([scaled])
    assert done.returncode == 1
    assert "maxReplicaCount must be integer" in done.stdout


def test_configmap_sets_every_setting_with_its_default() -> None:
    """The settings ConfigMap lists every LOVENSE_* variable not taken from the Secret."""
    data = {k: v for k, v in settings("base").items() if k.startswith("LOVENSE_")}
    assert set(data) | FROM_SECRET == {s.env for s in SETTINGS}
    assert not set(data) & FROM_SECRET
    # Deliberate differences from the defaults, each explained in settings.env.
    deviations = {
        "LOVENSE_DEVELOPER_TOKEN_FILE": "/var/run/secrets/lovense/developer-token",
        "LOVENSE_LOG_FORMAT": "json",
    }
    assert data == {s.env: deviations.get(s.env, s.default) for s in SETTINGS
                    if s.env not in FROM_SECRET}


def test_configmap_leaves_tracing_off_and_names_the_worker() -> None:
    """Besides LOVENSE_*, the ConfigMap sets only OTEL_SERVICE_NAME (no OTLP endpoint: tracing
    stays off until an overlay sets one) and LOVENSE_TRACE_UIDS at 0 (no uids on spans)."""
    for path in ("base", "overlays/example"):
        data = settings(path)
        assert {k: v for k, v in data.items() if not k.startswith("LOVENSE_")} == {
            "OTEL_SERVICE_NAME": "lovense-worker"}
        assert data["LOVENSE_TRACE_UIDS"] == "0"
        assert tracing.wanted(data) is False


def test_no_container_turns_tracing_on() -> None:
    """Neither Deployment's containers set an OTLP endpoint; the callback endpoint's names its
    own service in traces, as in docker-compose.yml."""
    for name in (WORKER, CALLBACKS):
        pod = one("overlays/example", "Deployment", name)["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            environ = {**settings("overlays/example"), **env_values(spec)}
            assert tracing.wanted(environ) is False, name
    assert {k: v for k, v in env_values(callbacks_container("overlays/example")).items()
            if k.startswith("OTEL_")} == {"OTEL_SERVICE_NAME": "lovense-callbacks"}
    assert [k for k in env_values(container("overlays/example")) if k.startswith("OTEL_")] == []


def test_worker_servicemonitor_asks_for_openmetrics_first() -> None:
    """The worker's ServiceMonitor scrapes with Prometheus' default protocols, OpenMetrics
    first, the format in which /metrics carries exemplars."""
    monitor = one("overlays/example", "ServiceMonitor", WORKER)["spec"]
    assert monitor["scrapeProtocols"] == [
        "OpenMetricsText1.0.0", "OpenMetricsText0.0.1", "PrometheusText0.0.4"]


def test_crd_validation_checks_scrape_protocols() -> None:
    """The ServiceMonitor validator knows scrapeProtocols: an unknown protocol fails it."""
    monitor = copy.deepcopy(one("overlays/example", "ServiceMonitor", WORKER))
    monitor["spec"]["scrapeProtocols"] = ["OpenMetrics"]
    done = _crds([monitor])
    assert done.returncode == 1
    assert "scrapeProtocols/0 must be equal to one of the allowed values" in done.stdout


def test_worker_container_is_hardened_and_probed() -> None:
    """Non-root, read-only root, no privileges, /tmp in memory, probes on the metrics port."""
    pod = one("overlays/example", "Deployment", WORKER)["spec"]["template"]["spec"]
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
    pod = one("overlays/example", "Deployment", WORKER)["spec"]["template"]["spec"]
    grace = int(settings("overlays/example")["LOVENSE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 5


def test_secrets_reach_the_worker_as_a_file_and_secret_refs() -> None:
    """The developer token is a mounted file; the AMQP URL and utoken key are Secret refs."""
    pod = one("overlays/example", "Deployment", WORKER)["spec"]["template"]["spec"]
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
    pods = [one("overlays/example", "Deployment", WORKER)["spec"]["template"]["spec"],
            one("overlays/example", "Deployment", CALLBACKS)["spec"]["template"]["spec"]]
    containers = [c for pod in pods for c in pod["containers"]]
    wanted = [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
              for c in containers for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    wanted += [(v["secret"]["secretName"], i["key"]) for pod in pods for v in pod["volumes"]
               if "secret" in v for i in v["secret"]["items"]]
    wanted += [(r["name"], r["key"]) for r in
               one("overlays/example", "TriggerAuthentication")["spec"]["secretTargetRef"]]
    missing = [(name, key) for name, key in wanted if key not in secrets.get(name, set())]
    assert missing == []
    assert all(f["configMapRef"]["name"] in maps for c in containers for f in c["envFrom"])
    accounts = {d["metadata"]["name"] for d in resources if d["kind"] == "ServiceAccount"}
    assert all(pod["serviceAccountName"] in accounts for pod in pods)


def test_keda_scales_the_deployment_on_the_shard_backlog_within_the_shards() -> None:
    """KEDA scales the worker Deployment on every shard queue, to at most the shards."""
    scaled = one("overlays/example", "ScaledObject")["spec"]
    data = settings("overlays/example")
    shards = int(data["LOVENSE_SHARDS"])
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": one("overlays/example", "Deployment", WORKER)[
                                            "metadata"]["name"]}
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= shards
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
    deployment = one("overlays/example", "Deployment", WORKER)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one("overlays/example", "Service", WORKER)
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one("overlays/example", "PodDisruptionBudget", WORKER)["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    monitor = one("overlays/example", "ServiceMonitor", WORKER)["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    (port,) = service["spec"]["ports"]
    assert (endpoint["port"], endpoint["path"], port["targetPort"]) == ("metrics", "/metrics",
                                                                         "metrics")


def test_rabbitmq_definitions_configmap_carries_the_file() -> None:
    """The rabbitmq kustomization ships definitions.json unchanged in a ConfigMap."""
    data = one("rabbitmq", "ConfigMap")["data"]
    assert data == {"definitions.json": (K8S / "rabbitmq" / "definitions.json").read_text()}


# ------------------------------------------------------------------ the callback endpoint


def test_callback_deployment_runs_the_endpoint_on_the_settings_ports() -> None:
    """Two replicas of `lovense-worker callbacks` (a real subcommand), the worker's image,
    the http port on LOVENSE_CALLBACK_PORT, its own metrics port, rolled without a gap."""
    deployment = one("overlays/example", "Deployment", CALLBACKS)
    endpoint = callbacks_container("overlays/example")
    data = settings("overlays/example")
    assert endpoint["args"] == ["callbacks"] and cli_accepts(endpoint["args"])
    assert endpoint["image"] == container("overlays/example")["image"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ports = {p["name"]: p["containerPort"] for p in endpoint["ports"]}
    assert set(ports) == {"http", "metrics"}
    assert ports["http"] == int(data["LOVENSE_CALLBACK_PORT"])
    # Its metrics port differs from the worker's, as in docker-compose.yml: one number per
    # process wherever it runs.
    metrics = int(env_values(endpoint).get("LOVENSE_METRICS_PORT", data["LOVENSE_METRICS_PORT"]))
    assert ports["metrics"] == metrics == 9465
    assert metrics != {p["name"]: p["containerPort"] for p in container("overlays/example")[
        "ports"]}["metrics"]
    assert [f["configMapRef"]["name"] for f in endpoint["envFrom"]] == [
        f["configMapRef"]["name"] for f in container("overlays/example")["envFrom"]]


def test_callback_container_is_hardened_and_probed_like_the_worker() -> None:
    """The same pod and container security context as the worker's, /tmp in memory, probes on
    the metrics port, requests and limits, and a grace period above its preStop pause."""
    pod = one("overlays/example", "Deployment", CALLBACKS)["spec"]["template"]["spec"]
    worker_pod = one("overlays/example", "Deployment", WORKER)["spec"]["template"]["spec"]
    endpoint = callbacks_container("overlays/example")
    assert pod["securityContext"] == worker_pod["securityContext"]
    assert endpoint["securityContext"] == container("overlays/example")["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == CALLBACKS
    tmp = {m["name"] for m in endpoint["volumeMounts"] if m["mountPath"] == "/tmp"}
    assert [v["emptyDir"]["medium"] for v in pod["volumes"] if v["name"] in tmp] == ["Memory"]
    assert endpoint["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert endpoint["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(endpoint["resources"]["requests"]) == set(endpoint["resources"]["limits"]) == {
        "cpu", "memory"}
    pause = endpoint["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and pod["terminationGracePeriodSeconds"] >= int(pause[1]) + 10


def test_callback_endpoint_gets_only_the_secrets_it_needs() -> None:
    """The AMQP URL and the utoken key (required: without it every callback is a 403) come
    from the workers' Secret; the internet-facing pod never holds the developer token."""
    pod = one("overlays/example", "Deployment", CALLBACKS)["spec"]["template"]["spec"]
    endpoint = callbacks_container("overlays/example")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in endpoint["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert {name: (ref["name"], ref["key"]) for name, ref in refs.items()} == {
        "LOVENSE_AMQP_URL": (WORKER, "amqp-url"),
        "LOVENSE_UTOKEN_SECRET": (WORKER, "utoken-secret")}
    assert not refs["LOVENSE_UTOKEN_SECRET"].get("optional", False)
    assert not any("secret" in v for v in pod["volumes"])
    assert "envFrom" not in endpoint or all("secretRef" not in f for f in endpoint["envFrom"])
    literal = env_values(endpoint)
    assert literal["LOVENSE_DEVELOPER_TOKEN_FILE"] == ""  # the ConfigMap's path is not mounted
    assert "LOVENSE_DEVELOPER_TOKEN" not in literal


def test_callback_endpoint_settings_load_from_what_the_pod_gets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint's settings load from the container's environment as Kubernetes builds it
    (the ConfigMap, then `env` over it, the Secret's values), even on a pod whose name ends
    in digits, and read back the ports the manifests expose."""
    resources = rendered("overlays/example")
    secret = one("overlays/example", "Secret", WORKER)["data"]
    endpoint = callbacks_container("overlays/example")
    environ = dict(settings("overlays/example"))
    for entry in endpoint["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        environ[entry["name"]] = (base64.b64decode(secret[ref["key"]]).decode() if ref
                                  else entry["value"])
    # A Deployment's pod name ends in 5 random characters, all digits now and then.
    monkeypatch.setenv("HOSTNAME", "lovense-callbacks-5d8f7c9b6d-24567")
    loaded = settings_from_env(environ)
    ports = {p["name"]: p["containerPort"] for p in endpoint["ports"]}
    assert (loaded.callback_port, loaded.metrics_port) == (ports["http"], ports["metrics"])
    assert loaded.utoken_secret and not loaded.developer_token
    assert loaded.callback_trusted_proxies
    (ingress,) = [d for d in resources if d["kind"] == "Ingress"]
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == [loaded.callback_path]


def test_service_pdb_and_monitor_select_the_callback_pods_and_only_them() -> None:
    """The callback endpoint's ClusterIP Service, PDB (min 1 of its replicas) and
    ServiceMonitor find its pods; the worker's objects and the endpoint's never select each
    other's pods or Services (no double scrape, no PDB counting the wrong pods)."""
    resources = rendered("overlays/example")
    deployment = one("overlays/example", "Deployment", CALLBACKS)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = one("overlays/example", "Service", CALLBACKS)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"].get("clusterIP") != "None"
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http", "metrics": "metrics"}
    pdb = one("overlays/example", "PodDisruptionBudget", CALLBACKS)["spec"]
    assert 1 <= pdb["minAvailable"] < deployment["spec"]["replicas"]
    (endpoint,) = one("overlays/example", "ServiceMonitor", CALLBACKS)["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    pods = {WORKER: one("overlays/example", "Deployment", WORKER)["spec"]["template"]["metadata"][
        "labels"], CALLBACKS: labels}
    for kind, key in (("Service", "selector"), ("PodDisruptionBudget", "selector")):
        for d in (d for d in resources if d["kind"] == kind):
            selector = d["spec"][key].get("matchLabels", d["spec"][key])
            assert {n for n, pod in pods.items() if selects(selector, pod)} == {
                d["metadata"]["name"]}, (kind, d["metadata"]["name"])
    services = {d["metadata"]["name"]: d["metadata"]["labels"] for d in resources
                if d["kind"] == "Service"}
    for monitor in (d for d in resources if d["kind"] == "ServiceMonitor"):
        picked = {n for n, lab in services.items()
                  if selects(monitor["spec"]["selector"]["matchLabels"], lab)}
        assert picked == {monitor["metadata"]["name"]}


def test_ingress_exposes_only_the_callback_path_over_tls() -> None:
    """The example Ingress routes exactly LOVENSE_CALLBACK_PATH to the endpoint's http port,
    with TLS for every host: never its metrics port, never the workers, no default backend."""
    ingress = one("overlays/example", "Ingress", CALLBACKS)["spec"]
    data = settings("overlays/example")
    service = one("overlays/example", "Service", CALLBACKS)
    assert "defaultBackend" not in ingress
    routes = [(rule.get("host"), p["path"], p["pathType"], p["backend"]["service"]["name"],
               p["backend"]["service"]["port"]) for rule in ingress["rules"]
              for p in rule["http"]["paths"]]
    assert routes and all(path == data["LOVENSE_CALLBACK_PATH"] and kind == "Exact"
                          and name == CALLBACKS and port == {"name": "http"}
                          for _host, path, kind, name, port in routes)
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    ports = {p["name"]: p["containerPort"] for p in callbacks_container("overlays/example")[
        "ports"]}
    assert ports[http["targetPort"]] == int(data["LOVENSE_CALLBACK_PORT"])
    hosts = {host for host, *_ in routes}
    assert None not in hosts
    assert hosts <= {h for tls in ingress["tls"] for h in tls["hosts"]}
    assert all(tls["secretName"] for tls in ingress["tls"])
    assert ingress["ingressClassName"]
    assert [d for d in rendered("base") if d["kind"] == "Ingress"] == []


def test_example_trusts_x_forwarded_for_from_private_proxies_only() -> None:
    """The example sets LOVENSE_CALLBACK_TRUSTED_PROXIES (else every user shares the ingress
    controller's per-source limit), to private networks only (else anyone could name any
    source); the base keeps the default, trusting nobody."""
    assert settings("base")["LOVENSE_CALLBACK_TRUSTED_PROXIES"] == ""
    raw = settings("overlays/example")["LOVENSE_CALLBACK_TRUSTED_PROXIES"]
    networks = [ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip()]
    assert networks and all(net.is_private for net in networks)
