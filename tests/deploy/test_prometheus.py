"""deploy/prometheus: rules and config pass promtool, fire as intended, use real metric names."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.support import (
    DEPLOY,
    RABBITMQ_FAMILIES,
    ROOT,
    exported_metric_names,
    known_metric_names,
    load_yaml,
    metric_names,
    run,
    tool,
)

RULES = DEPLOY / "prometheus" / "rules.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = ROOT / "tests" / "deploy" / "rules_test.yml"


def alerts() -> list[dict[str, Any]]:
    """Return every alerting rule of rules.yml."""
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def test_rules_pass_promtool_check() -> None:
    """promtool accepts rules.yml (PromQL, templates, durations)."""
    assert "SUCCESS" in run([tool("promtool"), "check", "rules", RULES])


def test_alerts_fire_and_stay_quiet_as_their_unit_tests_say() -> None:
    """promtool's unit tests: each alert fires on its failure, with its labels and text."""
    assert "SUCCESS" in run([tool("promtool"), "test", "rules", RULE_TESTS])


def test_every_alert_has_a_unit_test() -> None:
    """rules_test.yml exercises every alert of rules.yml."""
    tested = {case["alertname"] for test in load_yaml(RULE_TESTS)["tests"]
              for case in test["alert_rule_test"]}
    assert tested == {a["alert"] for a in alerts()}


def test_prometheus_config_passes_promtool_check() -> None:
    """promtool accepts prometheus.yml and finds its rule file."""
    assert "SUCCESS" in run([tool("promtool"), "check", "config", CONFIG])


def test_the_contracts_alerts_exist_with_severity_and_text() -> None:
    """The alerts the deployment promises exist, each with a severity, summary and description."""
    named = {a["alert"]: a for a in alerts()}
    assert set(named) == {
        "LovenseShardWithoutConsumer", "LovenseWorkerDisconnected", "LovenseDeadLettersGrowing",
        "LovenseUpstreamErrorRatio", "LovenseConfigurationError", "LovenseEndToEndLatencyHigh",
        "LovenseStopLatencyHigh", "LovenseCallbackErrorRatio", "LovenseCallbacksDisconnected",
        "LovenseCallbacksForbidden", "LovenseCallbacksRateLimited",
    }
    for alert in named.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert set(alert["annotations"]) == {"summary", "description"}


def test_rules_use_only_metrics_that_exist() -> None:
    """Each metric a rule selects is exported by the worker or scraped from RabbitMQ."""
    used = set().union(*(metric_names(a["expr"]) for a in alerts()))
    assert used - known_metric_names() == set()
    assert {"lovense_worker_config_errors_total", "lovense_worker_end_to_end_seconds_bucket",
            "lovense_worker_stop_seconds_bucket", "lovense_worker_upstream_requests_total",
            "rabbitmq_detailed_queue_consumers", "rabbitmq_detailed_queue_messages",
            "lovense_callback_requests_total", "lovense_callback_broker_connected"} <= used


def test_metric_name_extraction_finds_selectors_only() -> None:
    """The extractor keeps metric names and drops functions, labels, strings and durations."""
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route="lan",'
            'code!~"0|200"}[5m] offset 1h))) / ignoring(x) group_left(y) b_total > 1e3 and '
            'on (job) up_thing unless c:recorded:rate5m')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "up_thing", "c:recorded:rate5m"}


def test_exported_names_include_prometheus_client_suffixes() -> None:
    """Counters are known with _total, histograms with _bucket/_sum/_count, gauges bare."""
    names = exported_metric_names()
    assert {"lovense_worker_messages_total", "lovense_worker_stop_seconds_bucket",
            "lovense_worker_stop_seconds_count", "lovense_worker_inflight"} <= names
    assert "lovense_worker_messages" not in names


def test_prometheus_scrapes_the_worker_and_rabbitmqs_detailed_queue_metrics() -> None:
    """prometheus.yml scrapes the worker's and the callback endpoint's metrics ports (jobs
    named as their ServiceMonitors' Services in deploy/k8s) and asks RabbitMQ for the families
    rules use."""
    jobs = {j["job_name"]: j for j in load_yaml(CONFIG)["scrape_configs"]}
    compose = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    base = DEPLOY / "k8s" / "base"
    for job, service, k8s_service in (
            ("lovense-worker", "worker", "service.yaml"),
            ("lovense-callbacks", "callbacks", "callbacks-service.yaml")):
        port = compose[service]["environment"]["LOVENSE_METRICS_PORT"]
        assert jobs[job]["static_configs"] == [{"targets": [f"{service}:{port}"]}]
        # prometheus-operator names the job after the Service: the same label in both.
        assert load_yaml(base / k8s_service)["metadata"]["name"] == job
    rabbit = jobs["rabbitmq"]
    assert rabbit["static_configs"] == [{"targets": ["rabbitmq:15692"]}]
    assert rabbit["metrics_path"] == "/metrics/detailed"
    assert sorted(rabbit["params"]["family"]) == sorted(RABBITMQ_FAMILIES)
    assert "15692:15692" in compose["rabbitmq"]["ports"]


def test_prometheus_negotiates_openmetrics_with_the_worker() -> None:
    """No scrape_protocols anywhere in prometheus.yml: Prometheus asks for OpenMetrics first,
    the only format in which the worker's /metrics carries exemplars."""
    config = load_yaml(CONFIG)
    assert "scrape_protocols" not in config["global"]
    assert [j["job_name"] for j in config["scrape_configs"] if "scrape_protocols" in j] == []


@pytest.mark.parametrize("expr", ["rate(nope_total[5m])", "lovense_worker_messages"])
def test_unknown_metric_names_are_caught(expr: str) -> None:
    """A misspelt metric or one missing its _total suffix is not a known name."""
    assert metric_names(expr) - known_metric_names() == metric_names(expr)
