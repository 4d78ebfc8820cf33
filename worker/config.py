"""Settings: every ``LOVENSE_*`` variable, parsed once at start-up into a frozen object.

Nothing reads the environment or touches the disk at import time. A bad value
raises :class:`~worker.contract.errors.ConfigError` naming the variable; the CLI turns
that into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from worker.contract.errors import ConfigError
from worker.core.lan import Networks
from worker.core.rules import Caps


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Setting:
    """One documented variable: its name, unit, default and meaning (the README table)."""

    env: str
    attr: str
    default: str
    unit: str
    meaning: str
    parse: Callable[[str], Any]


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}")
        return value

    return parse


def _ordinal(raw: str) -> int:
    # -1: not given; resolved from the hostname once LOVENSE_REPLICAS is known.
    return -1 if not raw else _int_in(0, 1023)(raw)


def _hostname_ordinal() -> int:
    host = os.environ.get("HOSTNAME", "") or socket.gethostname()
    tail = host.rsplit("-", 1)[-1]
    return int(tail) if "-" in host and tail.isdigit() else 0


def _flag(raw: str) -> bool:
    if raw not in ("0", "1", "true", "false"):
        raise ValueError(f"must be 0 or 1, got {raw!r}")
    return raw in ("1", "true")


def _text(raw: str) -> str:
    return raw


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _amqp_url(raw: str) -> str:
    if not raw.startswith(("amqp://", "amqps://")):
        raise ValueError("must be an amqp:// or amqps:// URL")
    return raw


def _networks(raw: str) -> Networks:
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a CIDR network ({exc})") from None
    return tuple(nets)


def _log_format(raw: str) -> str:
    if raw not in ("json", "console"):
        raise ValueError(f"must be json or console, got {raw!r}")
    return raw


def _existing_file(raw: str) -> Path | None:
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"no readable file at {raw!r}")
    return path


def _platform(raw: str) -> str:
    if not raw or any(ord(c) < 32 for c in raw):
        raise ValueError("must be a non-empty header value")
    return raw


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("LOVENSE_AMQP_URL", "amqp_url", "amqp://guest:guest@localhost:5672/", "URL",
            "RabbitMQ to consume commands from and publish results to", _amqp_url),
    Setting("LOVENSE_DEVELOPER_TOKEN", "developer_token", "", "secret",
            "Lovense developer token for the server route; never logged", _text),
    Setting("LOVENSE_DEVELOPER_TOKEN_FILE", "developer_token_file", "", "path",
            "file holding the developer token (wins over LOVENSE_DEVELOPER_TOKEN)",
            _existing_file),
    Setting("LOVENSE_UTOKEN_SECRET", "utoken_secret", "", "secret",
            "key of the per-user utoken, HMAC-SHA256(uid), sent with GetQrCode", _text),
    Setting("LOVENSE_API_BASE", "api_base", "https://api.lovense-api.com", "URL",
            "Lovense server API base; http://127.0.0.1:PORT for the simulator", _url),
    Setting("LOVENSE_PLATFORM", "platform", "lovense-worker", "text",
            "X-platform header on LAN calls (shown in Lovense Remote)", _platform),
    Setting("LOVENSE_LAN_ALLOW", "lan_allow", "", "CIDR list",
            "networks the LAN route may connect to; empty turns the LAN route off", _networks),
    Setting("LOVENSE_LAN_CA_FILE", "lan_ca_file", "", "path",
            "extra CA bundle trusted for LAN TLS, on top of the system roots", _existing_file),
    Setting("LOVENSE_SHARDS", "shards", "4", "queues",
            "number of command shard queues lovense.commands.N", _int_in(1, 1024)),
    Setting("LOVENSE_PREFETCH", "prefetch", "256", "messages",
            "unacked commands one process holds, split evenly over its shards",
            _int_in(1, 65535)),
    Setting("LOVENSE_METRICS_PORT", "metrics_port", "9464", "port",
            "port of /metrics, /healthz and /readyz (0 turns the endpoint off)",
            _int_in(0, 65535)),
    Setting("LOVENSE_METRICS_HOST", "metrics_host", "0.0.0.0", "address",
            "address the metrics and health endpoint binds to", _text),
    Setting("LOVENSE_SHUTDOWN_GRACE_S", "shutdown_grace_s", "20", "s",
            "on SIGTERM/SIGINT, how long calls in flight may finish before the worker exits",
            _int_in(0, 3600)),
    Setting("LOVENSE_LOG_FORMAT", "log_format", "", "json|console",
            "log format; default console on a terminal, json otherwise", _log_format),
    Setting("LOVENSE_LOG_LEVEL", "log_level", "info", "level",
            "debug, info, warning or error", lambda raw: _choice(raw, LOG_LEVELS)),
    Setting("LOVENSE_DEFAULT_TTL_MS", "default_ttl_ms", "10000", "ms",
            "deadline of a command without ttlMs, from its publish time",
            _int_in(1, 86_400_000)),
    Setting("LOVENSE_SERVER_TIMEOUT_MS", "server_timeout_ms", "5000", "ms",
            "timeout of one call to the Lovense server API", _int_in(1, 600_000)),
    Setting("LOVENSE_LAN_TIMEOUT_MS", "lan_timeout_ms", "3000", "ms",
            "timeout of one call to a Lovense Remote app on the LAN", _int_in(1, 600_000)),
    Setting("LOVENSE_MAX_UIDS_PER_CALL", "max_uids_per_call", "50", "users",
            "most users comma-joined into one server call", _int_in(1, 1000)),
    Setting("LOVENSE_KEY_QUEUE", "key_queue", "16", "commands",
            "stopPrevious 0 commands, and separately PatternV2 and queries, kept per "
            "(uid, toy) key; overflow drops the oldest",
            _int_in(1, 10_000)),
    Setting("LOVENSE_SERVER_RATE", "server_rate", "2", "calls/s",
            "per-uid rate of calls on the server route", _float_in(0.01, 10_000)),
    Setting("LOVENSE_SERVER_BURST", "server_burst", "4", "calls",
            "per-uid burst of calls on the server route", _int_in(1, 10_000)),
    Setting("LOVENSE_LAN_RATE", "lan_rate", "10", "calls/s",
            "per-uid rate of calls on the LAN route", _float_in(0.01, 10_000)),
    Setting("LOVENSE_LAN_BURST", "lan_burst", "10", "calls",
            "per-uid burst of calls on the LAN route", _int_in(1, 10_000)),
    Setting("LOVENSE_SERVER_MAX_RPS", "server_max_rps", "100", "calls/s",
            "cap on server-route calls per worker process (size it as the account's limit "
            "divided by the replicas)", _float_in(0.1, 1_000_000)),
    Setting("LOVENSE_BATCH_WINDOW_MS", "batch_window_ms", "20", "ms",
            "identical commands for different users arriving within this window share one "
            "server call (0 turns merging off)", _int_in(0, 10_000)),
    Setting("LOVENSE_LAN_FANOUT", "lan_fanout", "100", "calls",
            "most concurrent LAN calls of one multi-user message", _int_in(1, 100_000)),
    Setting("LOVENSE_MAX_TIME_SEC", "max_time_sec", "0", "s",
            "when set, timeSec 0 (until stopped) and longer times are capped to it; 0 = off",
            _int_in(0, 86_400)),
    Setting("LOVENSE_STOP_RETRY_S", "stop_retry_s", "30", "s",
            "how long a Stop keeps retrying before its result is failed", _int_in(0, 3600)),
    Setting("LOVENSE_ALLOW_UNVERIFIED_CALLBACKS", "allow_unverified_callbacks", "0", "0|1",
            "accept callbacks without a verifiable utoken when LOVENSE_UTOKEN_SECRET is unset "
            "(unsafe; the worker warns at start-up)", _flag),
    Setting("LOVENSE_LAN_TTL_S", "lan_ttl_s", "86400", "s",
            "a LAN endpoint not refreshed by a callback within this is forgotten; also the "
            "callback log's max age", _int_in(60, 30 * 86400)),
    Setting("LOVENSE_SNAPSHOT_INTERVAL_S", "snapshot_interval_s", "300", "s",
            "how often a replica writes a registry snapshot (start-up reads the newest, then "
            "the log after it)", _int_in(5, 86400)),
    Setting("LOVENSE_BREAKER_FAILURES", "breaker_failures", "3", "calls",
            "LAN calls in a row that never reached an app before its circuit opens",
            _int_in(1, 1000)),
    Setting("LOVENSE_BREAKER_COOLDOWN_S", "breaker_cooldown_s", "30", "s",
            "how long an open circuit skips the app's LAN endpoint before one trial call",
            _int_in(1, 86400)),
    Setting("LOVENSE_RECENT_IDS", "recent_ids", "100000", "ids",
            "finished command ids remembered, so a redelivered or repeated one is answered "
            "again without a second call", _int_in(0, 10_000_000)),
    Setting("LOVENSE_MAX_DELIVERIES", "max_deliveries", "5", "deliveries",
            "a message delivered this many times is given up on: failed result, lovense.dead",
            _int_in(1, 19)),
    Setting("LOVENSE_REPLICAS", "replicas", "1", "replicas",
            "how many worker replicas share the shards (at most LOVENSE_SHARDS)",
            _int_in(1, 1024)),
    Setting("LOVENSE_REPLICA", "replica", "", "ordinal",
            "this replica's ordinal 0…LOVENSE_REPLICAS-1; default: the -N suffix of the "
            "hostname (a StatefulSet pod's ordinal), else 0", _ordinal),
    Setting("LOVENSE_HTTP_CONNECTIONS", "http_connections", "512", "connections",
            "most open HTTP connections per route", _int_in(1, 100_000)),
    Setting("LOVENSE_MAX_TOYS", "max_toys", "32", "toy ids",
            "most toy ids one command may name (a Stop naming more stops every toy of its "
            "users)", _int_in(1, 1024)),
    Setting("LOVENSE_MAX_UIDS", "max_uids", "10000", "users",
            "most users one message may name (a Stop naming more is carried out for all)",
            _int_in(1, 100_000)),
    Setting("LOVENSE_MAX_ACTION_LENGTH", "max_action_length", "256", "characters",
            "longest Function action", _int_in(16, 65_536)),
    Setting("LOVENSE_MAX_RULE_LENGTH", "max_rule_length", "64", "characters",
            "longest Pattern rule", _int_in(16, 4096)),
    Setting("LOVENSE_MAX_STRENGTH_LENGTH", "max_strength_length", "256", "characters",
            "longest Pattern strength", _int_in(16, 65_536)),
    Setting("LOVENSE_WIDE_STOP_USERS", "wide_stop_users", "20000", "users",
            "users of multi-user Stops whose calls run at once; a wider burst's watermarks "
            "apply on arrival and its calls wait for room", _int_in(1, 10_000_000)),
    Setting("LOVENSE_RECENT_BYTES", "recent_bytes", "67108864", "bytes",
            "memory budget of the finished command ids (LOVENSE_RECENT_IDS); over it the "
            "oldest go first", _int_in(0, 2**40)),
    Setting("LOVENSE_WATERMARK_BYTES", "watermark_bytes", "33554432", "bytes",
            "memory budget of the Stop watermarks; over it a user's per-toy marks merge into "
            "one mark for every toy (none younger than the Stop log's hour is dropped)",
            _int_in(1 << 20, 2**40)),
)



def _choice(raw: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """The worker's configuration, read once at start-up."""

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    developer_token: Secret = field(default_factory=lambda: Secret(""))
    utoken_secret: Secret = field(default_factory=lambda: Secret(""))
    api_base: str = "https://api.lovense-api.com"
    platform: str = "lovense-worker"
    lan_allow: Networks = ()
    lan_ca_file: Path | None = None
    shards: int = 4
    prefetch: int = 256
    metrics_port: int = 9464
    metrics_host: str = "0.0.0.0"
    shutdown_grace_s: int = 20
    log_format: str = "console"
    log_level: str = "info"
    default_ttl_ms: int = 10_000
    server_timeout_ms: int = 5_000
    lan_timeout_ms: int = 3_000
    max_uids_per_call: int = 50
    key_queue: int = 16
    server_rate: float = 2.0
    server_burst: int = 4
    lan_rate: float = 10.0
    lan_burst: int = 10
    server_max_rps: float = 100.0
    batch_window_ms: int = 20
    lan_fanout: int = 100
    max_time_sec: int = 0
    stop_retry_s: int = 30
    allow_unverified_callbacks: bool = False
    lan_ttl_s: int = 86400
    snapshot_interval_s: int = 300
    breaker_failures: int = 3
    breaker_cooldown_s: int = 30
    recent_ids: int = 100_000
    max_deliveries: int = 5
    replicas: int = 1
    replica: int = 0
    http_connections: int = 512
    max_toys: int = 32
    max_uids: int = 10_000
    max_action_length: int = 256
    max_rule_length: int = 64
    max_strength_length: int = 256
    wide_stop_users: int = 20_000
    recent_bytes: int = 64 * 1024 * 1024
    watermark_bytes: int = 32 * 1024 * 1024

    def __repr__(self) -> str:
        # The AMQP URL may carry a password; the token is a Secret already.
        fields = ", ".join(
            f"{f.name}={_redact_url(getattr(self, f.name)) if f.name == 'amqp_url' else getattr(self, f.name)!r}"  # noqa: E501
            for f in dataclasses.fields(self)
        )
        return f"Settings({fields})"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
    ) -> Settings:
        """Build settings from ``LOVENSE_*`` variables, then CLI overrides keyed by variable."""
        env = dict(os.environ if environ is None else environ)
        for key, value in (overrides or {}).items():
            if value is not None:
                env[key] = value
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env, setting.default).strip()
            if not raw and setting.env == "LOVENSE_LOG_FORMAT":
                raw = "console" if sys.stderr.isatty() else "json"
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}: {exc}") from None
        token_file: Path | None = values.pop("developer_token_file")
        token: str = values.pop("developer_token")
        if token_file is not None:
            token = token_file.read_text(encoding="utf-8").strip()
            if not token:
                raise ConfigError("LOVENSE_DEVELOPER_TOKEN_FILE: the file is empty")
        values["utoken_secret"] = Secret(values["utoken_secret"])
        if values["replica"] < 0:
            values["replica"] = _hostname_ordinal() if values["replicas"] > 1 else 0
        if values["replicas"] > values["shards"]:
            raise ConfigError(
                f"LOVENSE_REPLICAS: {values['replicas']} replicas for {values['shards']} shards "
                "would leave replicas idle; keep it at most LOVENSE_SHARDS")
        if values["replica"] >= values["replicas"]:
            raise ConfigError(
                f"LOVENSE_REPLICA: ordinal {values['replica']} is not below LOVENSE_REPLICAS "
                f"({values['replicas']})")
        return cls(developer_token=Secret(token), **values)

    @property
    def caps(self) -> Caps:
        """Return the size caps on what producers send."""
        return Caps(toys=self.max_toys, uids=self.max_uids, action=self.max_action_length,
                    rule=self.max_rule_length, strength=self.max_strength_length)

    @property
    def lan_enabled(self) -> bool:
        """Return whether the LAN route may be used at all."""
        return bool(self.lan_allow)


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
