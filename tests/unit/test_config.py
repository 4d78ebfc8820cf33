"""Settings: every LOVENSE_* variable, its default, and a clear error for bad values."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import sys
from pathlib import Path

import pytest

from worker import cli
from worker.config import SETTINGS, VARIABLES, Setting, Settings
from worker.contract.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    """With no variables set the documented defaults apply and the LAN route is off."""
    settings = Settings.from_env({"LOVENSE_LOG_FORMAT": "json"})
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert settings.api_base == "https://api.lovense-api.com"
    assert settings.platform == "lovense-worker"
    assert (settings.shards, settings.prefetch, settings.metrics_port) == (4, 256, 9464)
    assert (settings.default_ttl_ms, settings.server_timeout_ms, settings.lan_timeout_ms) == (
        10000, 5000, 3000)
    assert settings.lan_allow == () and settings.lan_enabled is False


def test_cli_overrides_win_over_environment() -> None:
    """A CLI override replaces the variable's value."""
    settings = Settings.from_env({"LOVENSE_SHARDS": "8"}, {"LOVENSE_SHARDS": "2"})
    assert settings.shards == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOVENSE_SHARDS": "four"}, "LOVENSE_SHARDS: must be a whole number, got 'four'"),
        ({"LOVENSE_PREFETCH": "0"}, "LOVENSE_PREFETCH: must be between 1 and 65535, got 0"),
        ({"LOVENSE_LAN_ALLOW": "10.0.0.0/33"},
         "LOVENSE_LAN_ALLOW: '10.0.0.0/33' is not a CIDR network "
         "('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)"),
        ({"LOVENSE_API_BASE": "ftp://x"},
         "LOVENSE_API_BASE: must be an http:// or https:// URL, got 'ftp://x'"),
        ({"LOVENSE_LOG_FORMAT": "xml"}, "LOVENSE_LOG_FORMAT: must be json or console, got 'xml'"),
        ({"LOVENSE_LAN_CA_FILE": "/nonexistent/ca.pem"},
         "LOVENSE_LAN_CA_FILE: no readable file at '/nonexistent/ca.pem'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    """A malformed variable is a ConfigError naming it and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_lan_allow_parses_a_list(tmp_path: Path) -> None:
    """LOVENSE_LAN_ALLOW takes comma-separated CIDRs."""
    settings = Settings.from_env({"LOVENSE_LAN_ALLOW": "192.168.0.0/16, 127.0.0.1/32"})
    assert settings.lan_allow == (ipaddress.ip_network("192.168.0.0/16"),
                                  ipaddress.ip_network("127.0.0.1/32"))


def test_token_file_wins_and_never_shows(tmp_path: Path) -> None:
    """The token file's content is the token, and repr shows neither token nor AMQP password."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123\n")
    settings = Settings.from_env({
        "LOVENSE_DEVELOPER_TOKEN": "env-token-456",
        "LOVENSE_DEVELOPER_TOKEN_FILE": str(token_file),
        "LOVENSE_AMQP_URL": "amqp://bob:hunter2@rabbit:5672/",
    })
    assert settings.developer_token.reveal() == "file-token-123"
    text = repr(settings)
    assert "file-token-123" not in text and "hunter2" not in text
    assert "amqp://bob:***@rabbit:5672/" in text


def test_token_file_must_hold_a_token(tmp_path: Path) -> None:
    """An empty token file is refused by name, as a missing one is."""
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LOVENSE_DEVELOPER_TOKEN_FILE": str(token_file)})
    assert str(caught.value) == "LOVENSE_DEVELOPER_TOKEN_FILE: the file is empty"


# -- one declaration per setting ------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: Settings whose empty default is resolved at start-up rather than parsed to the field's default.
_RESOLVED = {"LOVENSE_LOG_FORMAT"}


def test_every_variable_is_named_after_its_attribute() -> None:
    """Each attribute is read from LOVENSE_ + its name in capitals; the token also from *_FILE."""
    assert VARIABLES == {name: f"LOVENSE_{name.upper()}" for name in _FIELDS}
    assert [s.env for s in SETTINGS if s.env not in VARIABLES.values()] == [
        "LOVENSE_DEVELOPER_TOKEN_FILE"]


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.env not in _RESOLVED],
                         ids=lambda s: s.env)
def test_written_default_parses_to_the_typed_default(setting: Setting) -> None:
    """The default as the README and the ConfigMap write it is the attribute's typed default."""
    attr = setting.env.removeprefix("LOVENSE_").lower()
    if attr == "developer_token_file":
        assert setting.parse(setting.default) is None
        return
    value, default = setting.parse(setting.default), _FIELDS[attr].default
    assert (value, type(value)) == (default, type(default))


def test_nothing_set_is_the_default_settings() -> None:
    """An empty environment gives Settings(), the log format aside (it depends on the terminal)."""
    assert Settings.from_env({"LOVENSE_LOG_FORMAT": "console"}) == Settings()


def test_log_format_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty LOVENSE_LOG_FORMAT is console on a terminal and json otherwise."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert Settings.from_env({}).log_format == "json"
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Settings.from_env({}).log_format == "console"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOVENSE_SHARDS": "1025"}, "LOVENSE_SHARDS: must be between 1 and 1024, got 1025"),
        ({"LOVENSE_SERVER_RATE": "0"},
         "LOVENSE_SERVER_RATE: must be between 0.01 and 10000, got 0"),
        ({"LOVENSE_SERVER_MAX_RPS": "fast"},
         "LOVENSE_SERVER_MAX_RPS: must be a number, got 'fast'"),
        ({"LOVENSE_MAX_DELIVERIES": "20"},
         "LOVENSE_MAX_DELIVERIES: must be between 1 and 19, got 20"),
        ({"LOVENSE_WATERMARK_BYTES": "1048575"},
         "LOVENSE_WATERMARK_BYTES: must be between 1048576 and 1099511627776, got 1048575"),
        ({"LOVENSE_LOG_LEVEL": "trace"},
         "LOVENSE_LOG_LEVEL: must be one of debug, info, warning, error, got 'trace'"),
        ({"LOVENSE_ALLOW_UNVERIFIED_CALLBACKS": "yes"},
         "LOVENSE_ALLOW_UNVERIFIED_CALLBACKS: must be 0 or 1, got 'yes'"),
        ({"LOVENSE_PLATFORM": "a\tb"}, "LOVENSE_PLATFORM: must be a non-empty header value"),
        ({"LOVENSE_AMQP_URL": "nope"}, "LOVENSE_AMQP_URL: must be an amqp:// or amqps:// URL"),
    ],
)
def test_refusals_keep_their_messages(env: dict[str, str], message: str) -> None:
    """Out-of-range and malformed values are refused with these exact messages."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.bounds], ids=lambda s: s.env)
def test_every_bound_is_inclusive_and_refused_beyond(setting: Setting) -> None:
    """Each number accepts both ends of its range and refuses one past either end, by name."""
    assert setting.bounds is not None
    low, high = setting.bounds
    shown = "{}" if isinstance(low, int) else "{:g}"
    for edge in (low, high):
        assert setting.parse(str(edge)) == edge
    for past in (low - 1, high + 1):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({setting.env: str(past)})
        expected = f"must be between {shown} and {shown}, got {shown}".format(low, high, past)
        assert str(caught.value) == f"{setting.env}: {expected}"


# -- reading some settings, and the CLI -----------------------------------------------------------


def test_only_reads_the_named_variables() -> None:
    """With only=, other variables are not read (nor refused) and keep their defaults."""
    env = {"LOVENSE_AMQP_URL": "amqps://rabbit/", "LOVENSE_SHARDS": "four"}
    settings = Settings.from_env(env, only={"LOVENSE_AMQP_URL"})
    assert (settings.amqp_url, settings.shards) == ("amqps://rabbit/", 4)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LOVENSE_AMQP_URL": "nope"}, only={"LOVENSE_AMQP_URL"})
    assert str(caught.value) == "LOVENSE_AMQP_URL: must be an amqp:// or amqps:// URL"


def test_defaults_stand_in_for_unset_or_empty_variables() -> None:
    """defaults= fills an unset or empty variable; a set variable and an override win over it."""
    loopback = {"LOVENSE_LAN_ALLOW": "127.0.0.1/32"}
    assert Settings.from_env({}, defaults=loopback).lan_allow == (
        ipaddress.ip_network("127.0.0.1/32"),)
    assert Settings.from_env({"LOVENSE_LAN_ALLOW": ""}, defaults=loopback).lan_enabled
    assert Settings.from_env({"LOVENSE_LAN_ALLOW": "10.0.0.0/8"}, defaults=loopback).lan_allow == (
        ipaddress.ip_network("10.0.0.0/8"),)
    assert not Settings.from_env({}, {"LOVENSE_LAN_ALLOW": ""}, defaults=loopback).lan_enabled


def test_unknown_names_are_a_programming_error() -> None:
    """A misspelt variable in overrides, defaults or only= fails loudly instead of doing nothing."""
    with pytest.raises(ValueError, match="not LOVENSE_\\* settings: LOVENSE_SHARD"):
        Settings.from_env({}, only={"LOVENSE_SHARD"})


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", '{"command": "GetToys", "uid": "u"}'],
        ["requeue-dead", "--dry-run"],
    ],
    ids=["publish", "requeue-dead"],
)
def test_cli_refuses_a_bad_amqp_url(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """publish and requeue-dead check LOVENSE_AMQP_URL (and --amqp-url) as run does: exit 2."""
    error = ("lovense-worker: configuration error: "
             "LOVENSE_AMQP_URL: must be an amqp:// or amqps:// URL\n")
    monkeypatch.setenv("LOVENSE_AMQP_URL", "nope")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == error
    monkeypatch.setenv("LOVENSE_AMQP_URL", "amqp://guest:guest@localhost:5672/")
    assert cli.main([*argv, "--amqp-url", "http://rabbit/"]) == 2
    assert capsys.readouterr().err == error
