"""deploy/grafana: the dashboard's queries are valid PromQL on real metrics, and provisioned."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import (
    DEPLOY,
    grafana_to_promql,
    known_metric_names,
    load_json,
    load_yaml,
    metric_names,
    run,
    tool,
)
from worker.metrics import CallbackMetrics

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "lovense-worker.json"


def panels() -> list[dict[str, Any]]:
    """Return the dashboard's graph panels (rows excluded)."""
    return [p for p in load_json(DASHBOARD)["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    """Return every query of the dashboard."""
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's $__rate_interval made 5m)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": grafana_to_promql(e)}
        for i, e in enumerate(exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(exprs())} rules found" in run([tool("promtool"), "check", "rules",
                                                          path])


def test_queries_use_only_metrics_that_exist() -> None:
    """Each metric a panel selects is exported by the worker or scraped from RabbitMQ."""
    used = set().union(*(metric_names(grafana_to_promql(e)) for e in exprs()))
    assert used - known_metric_names() == set()


def test_dashboard_shows_what_operators_need() -> None:
    """Throughput, upstream latency, coalescing, batching, rate limits, Stops, dead letters,
    registry size, shards per replica, open circuits, the broker node each replica is on, and
    the callback endpoint's answers, latency, broker connection and tracked sources each have
    a panel."""
    used = {p["title"]: set().union(*(metric_names(grafana_to_promql(t["expr"]))
                                      for t in p["targets"])) for p in panels()}
    wanted = {
        "Commands finished by status": "lovense_worker_messages_total",
        "Upstream latency by route": "lovense_worker_upstream_seconds_bucket",
        "Coalesced": "lovense_worker_coalesced_total",
        "Batching: users per server call": "lovense_worker_batch_uids_bucket",
        "Rate-limit waits by route": "lovense_worker_rate_limit_wait_seconds_bucket",
        "Stop latency": "lovense_worker_stop_seconds_bucket",
        "Dead letters": "lovense_worker_dead_letters_total",
        "LAN registry size": "lovense_worker_registry_users",
        "Shards consumed per replica": "lovense_worker_shards_consumed",
        "Circuits open": "lovense_worker_circuits_open",
        "Callbacks by status": "lovense_callback_requests_total",
        "Callback errors and refusals": "lovense_callback_requests_total",
        "Callback latency": "lovense_callback_request_seconds_bucket",
        "Callback endpoints connected to RabbitMQ": "lovense_callback_broker_connected",
        "Connected to RabbitMQ": "lovense_worker_broker_node_info",
        "Callback sources tracked": "lovense_callback_sources",
    }
    assert {title: metric in used.get(title, set()) for title, metric in wanted.items()} == {
        title: True for title in wanted}


def test_callback_endpoint_has_its_own_row_showing_all_its_metrics() -> None:
    """Every lovense_callback_* family is on the dashboard, and only in the panels under the
    "Callback endpoint" row: the endpoint's health reads apart from the workers'."""
    section = ""
    where: dict[str, set[str]] = {}
    for panel in load_json(DASHBOARD)["panels"]:
        if panel["type"] == "row":
            section = panel["title"]
            continue
        for target in panel["targets"]:
            for name in metric_names(grafana_to_promql(target["expr"])):
                if name.startswith("lovense_callback_"):
                    where.setdefault(section, set()).add(name)
    assert set(where) == {"Callback endpoint"}
    families = {family.name for family in CallbackMetrics().registry.collect()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in where["Callback endpoint"]}
    assert families and families == shown


def test_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    """Every query names the ${datasource} variable; panel ids are unique; widths fit 24."""
    dashboard = load_json(DASHBOARD)
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus")
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert all(p["datasource"] == source and all(t["datasource"] == source
                                                 for t in p["targets"]) for p in panels())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])
    assert dashboard["uid"] == "lovense-worker"


def test_provisioning_loads_the_dashboard_from_where_compose_mounts_it() -> None:
    """Grafana's provisioning reads the folder compose mounts the dashboards into."""
    grafana = load_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in grafana["volumes"])
    assert (DEPLOY / "grafana" / "provisioning").is_dir()
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "lovense-worker.yml")[
        "providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    assert "9090:9090" in load_yaml(DEPLOY / "docker-compose.yml")["services"]["prometheus"][
        "ports"]


def datasource(name: str) -> dict[str, Any]:
    """Return the only data source a provisioning file under datasources/ defines."""
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / name)["datasources"]
    return source  # type: ignore[no-any-return]


def test_jaeger_datasource_points_at_the_jaeger_service_ui_port() -> None:
    """Grafana provisions a Jaeger data source with the fixed uid `jaeger`, through its proxy,
    at the compose service's query port (16686)."""
    source = datasource("jaeger.yml")
    assert (source["name"], source["uid"], source["type"], source["access"], source["url"]) == (
        "Jaeger", "jaeger", "jaeger", "proxy", "http://jaeger:16686")
    assert "127.0.0.1:16686:16686" in load_yaml(DEPLOY / "docker-compose.yml")["services"][
        "jaeger"]["ports"]


def test_prometheus_datasource_links_exemplar_trace_ids_to_jaeger() -> None:
    """The Prometheus data source turns an exemplar's trace_id label into a link to the trace
    in the Jaeger data source, named by that data source's uid."""
    jaeger = datasource("jaeger.yml")
    assert datasource("prometheus.yml")["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": jaeger["uid"]}]


def test_every_datasource_file_is_in_the_mounted_provisioning_folder() -> None:
    """The Prometheus and Jaeger data source files sit in the folder compose mounts at
    /etc/grafana/provisioning, each with a distinct uid."""
    folder = GRAFANA / "provisioning" / "datasources"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["jaeger.yml", "prometheus.yml"]
    grafana = load_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert sorted(datasource(name)["uid"] for name in files) == ["jaeger", "prometheus"]
