"""Several broker addresses: parsing LOVENSE_AMQP_URL as a list, the order nodes are tried in,
the node gauge, and passwords kept out of every repr, message and log."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import generate_latest

from tests.logging_state import logging_restored
from worker import cli
from worker.config import Settings
from worker.contract.errors import ConfigError
from worker.core.brokers import Node, connect_order, parse_brokers, redact
from worker.metrics import CallbackMetrics, Metrics

THREE = ("amqp://bob:hunter2@rabbit-0:5672/prod,amqp://bob:hunter2@rabbit-1:5673/prod,"
         "amqp://bob:hunter2@rabbit-2/prod")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def test_one_url_is_one_node_with_its_defaults() -> None:
    """A single URL is a list of one node; a missing port, vhost and login take AMQP's defaults."""
    brokers = parse_brokers("amqp://rabbit")
    assert (brokers.names, brokers.vhost, brokers.user, brokers.password) == (
        "rabbit:5672", "/", "guest", "guest")
    assert parse_brokers("amqps://rabbit/").names == "rabbit:5671"


def test_a_list_keeps_its_order_vhost_and_login() -> None:
    """A comma-separated list gives each node host:port in the order written, and the shared
    (percent-decoded) vhost and login."""
    brokers = parse_brokers(THREE)
    assert brokers.names == "rabbit-0:5672,rabbit-1:5673,rabbit-2:5672"
    assert (brokers.vhost, brokers.user, brokers.password) == ("prod", "bob", "hunter2")
    assert [node.url for node in brokers.nodes] == THREE.split(",")
    spaced = parse_brokers(" amqp://a:5672/%2Fv , amqp://b:5672/%2Fv ")
    assert (spaced.names, spaced.vhost) == ("a:5672,b:5672", "/v")


def test_a_percent_encoded_comma_stays_in_the_password() -> None:
    """A comma inside credentials is written %2C and does not split the list."""
    brokers = parse_brokers("amqp://bob:a%2Cb@h1/,amqp://bob:a%2Cb@h2/")
    assert (brokers.names, brokers.password) == ("h1:5672,h2:5672", "a,b")


@pytest.mark.parametrize(("raw", "error"), [
    ("nope", "must be an amqp:// or amqps:// URL"),
    ("", "must be an amqp:// or amqps:// URL"),
    ("amqp://bob:pw1@a/,http://bob:pw1@b/",
     "entry 2 of 2 ('http://bob:***@b/') must be an amqp:// or amqps:// URL"),
    ("amqp://a/,,amqp://c/", "entry 2 of 3 ('') is empty"),
    ("amqp://a/,amqp://b:99999/", "entry 2 of 2 ('amqp://b:99999/') has no valid port"),
    ("amqp://a/,amqp://:5672/", "entry 2 of 2 ('amqp://:5672/') names no host"),
    ("amqp://bob:pw1@a/prod,amqp://bob:pw1@b/test",
     "entry 2 of 2 ('amqp://bob:***@b/test') names vhost 'test', the first entry 'prod': every "
     "entry must name the same vhost and credentials"),
    ("amqp://bob:pw1@a/,amqp://eve:pw1@b/",
     "entry 2 of 2 ('amqp://eve:***@b/') names user 'eve', the first entry 'bob': every entry "
     "must name the same vhost and credentials"),
    ("amqp://bob:pw1@a/,amqp://bob:pw1@b/,amqp://bob:pw2@c/",
     "entry 3 of 3 ('amqp://bob:***@c/') has another password than the first entry: every "
     "entry must name the same vhost and credentials"),
    ("amqp://a:5672/,amqp://a/", "entry 2 of 2 ('amqp://a/') names a:5672 again"),
])
def test_a_bad_list_is_refused_naming_the_entry(raw: str, error: str) -> None:
    """Each refusal names the entry (password hidden) and what is wrong with it."""
    with pytest.raises(ValueError) as caught:
        parse_brokers(raw)
    assert str(caught.value) == error
    assert "pw1" not in str(caught.value) and "pw2" not in str(caught.value)


def test_settings_refuse_a_mixed_list_as_a_config_error() -> None:
    """LOVENSE_AMQP_URL with entries in two vhosts stops start-up with a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LOVENSE_AMQP_URL": "amqp://a/x,amqp://b/y"})
    assert str(caught.value) == (
        "LOVENSE_AMQP_URL: entry 2 of 2 ('amqp://b/y') names vhost 'y', the first entry 'x': "
        "every entry must name the same vhost and credentials")


@pytest.mark.parametrize("argv", [["publish", "{}"], ["requeue-dead"]])
def test_cli_exits_2_on_a_mixed_list(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """publish and requeue-dead refuse a list whose credentials differ: exit 2, no password."""
    monkeypatch.setenv("LOVENSE_AMQP_URL", "amqp://bob:pw1@a/,amqp://bob:pw2@b/")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "lovense-worker: configuration error: LOVENSE_AMQP_URL: entry 2 of 2 "
        "('amqp://bob:***@b/') has another password than the first entry: every entry must "
        "name the same vhost and credentials\n")


def test_connect_order_shuffles_with_the_injected_random() -> None:
    """The order is the injected generator's shuffle: reproducible for a seed, and over seeds
    every node comes first."""
    brokers = parse_brokers(THREE)
    expected = list(brokers.nodes)
    random.Random(7).shuffle(expected)
    assert connect_order(brokers, random.Random(7)) == tuple(expected)
    firsts = {connect_order(brokers, random.Random(seed))[0].name for seed in range(30)}
    assert firsts == {"rabbit-0:5672", "rabbit-1:5673", "rabbit-2:5672"}


def test_the_node_just_lost_is_tried_last() -> None:
    """With ``last``, that node comes after every other, whatever the shuffle."""
    brokers = parse_brokers(THREE)
    lost = brokers.nodes[1]
    for seed in range(20):
        order = connect_order(brokers, random.Random(seed), last=lost)
        assert (order[-1], sorted(order, key=lambda n: n.name)) == (
            lost, sorted(brokers.nodes, key=lambda n: n.name))


def test_no_password_in_any_repr() -> None:
    """Nodes, the list, Settings and redact() never show the password."""
    brokers = parse_brokers(THREE)
    assert repr(brokers) == ("Brokers(rabbit-0:5672,rabbit-1:5673,rabbit-2:5672, "
                             "vhost='prod', user='bob')")
    assert repr(brokers.nodes[0]) == "Node(rabbit-0:5672)"
    assert Node("::1", 5672, "amqp://[::1]/").name == "[::1]:5672"
    settings = Settings.from_env({"LOVENSE_AMQP_URL": THREE})
    assert "hunter2" not in repr(settings)
    assert ("amqp_url='amqp://bob:***@rabbit-0:5672/prod,amqp://bob:***@rabbit-1:5673/prod,"
            "amqp://bob:***@rabbit-2/prod'") in repr(settings)
    assert redact(THREE).count("***") == 3 and "hunter2" not in redact(THREE)


def test_logs_hide_the_password_of_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    """cli._configure_logs hides the list's password, as written and decoded."""
    raw = "amqp://bob:p%40ss-w0rd@a/,amqp://bob:p%40ss-w0rd@b/"
    cli._configure_logs(Settings(amqp_url=raw, log_format="json"))
    structlog.get_logger().warning("connect_failed", said="no p@ss-w0rd", url=raw)
    out = capsys.readouterr().err + capsys.readouterr().out
    assert "p@ss-w0rd" not in out and "p%40ss-w0rd" not in out
    assert "amqp://bob:[redacted]@a/,amqp://bob:[redacted]@b/" in out


def _samples(metrics: Metrics | CallbackMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.mark.parametrize(("kind", "name"), [(Metrics, "lovense_worker_broker_node_info"),
                                            (CallbackMetrics, "lovense_callback_broker_node_info")])
def test_node_gauge_shows_one_node_and_drops_the_old(
        kind: type[Metrics | CallbackMetrics], name: str) -> None:
    """The node gauge is 1 for the node connected to, 0 once lost, and switching nodes drops
    the old label."""
    metrics = kind()
    assert _samples(metrics, name) == []
    metrics.node.connected("rabbit-0:5672")
    assert _samples(metrics, name) == [f'{name}{{node="rabbit-0:5672"}} 1.0']
    metrics.node.lost()
    assert _samples(metrics, name) == [f'{name}{{node="rabbit-0:5672"}} 0.0']
    metrics.node.connected("rabbit-1:5672")
    assert _samples(metrics, name) == [f'{name}{{node="rabbit-1:5672"}} 1.0']
