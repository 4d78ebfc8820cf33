"""Settings: every LOVENSE_* variable, its default, and a clear error for bad values."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from worker.config import Settings
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
