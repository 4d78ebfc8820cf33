"""Settings: every ``LOVENSE_*`` variable, parsed once at start-up into a frozen object.

Each field of :class:`Settings` is the one declaration of its variable: name,
type, typed default, bounds, unit and the README's description.
:data:`SETTINGS` lists the variables in that order; the README's configuration
table is rendered from it (``scripts/settings_table.py``, checked by the unit
tests) and the Kubernetes ConfigMap is checked against it (``tests/deploy``).

Nothing reads the environment or touches the disk at import time. A bad value
raises :class:`~worker.contract.errors.ConfigError` naming the variable; the CLI turns
that into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from worker.contract.errors import ConfigError
from worker.core.brokers import Brokers, parse_brokers, redact
from worker.core.lan import Networks
from worker.core.rules import Caps

_T = TypeVar("_T")


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
    """One variable: how it is read, and its row in the README's configuration table."""

    env: str
    #: The default as written in the environment ("" = unset).
    default: str
    unit: str
    #: What it does, in Markdown, as the README shows it.
    meaning: str
    parse: Callable[[str], object]
    #: The accepted range of a number (inclusive).
    bounds: tuple[float, float] | None = None
    #: A word on the default shown beside it in the README ("off", "64 MiB").
    note: str = ""
    #: How an empty value is resolved at start-up, shown in the README instead of "(empty)".
    auto: str = ""

    def read(self, env: Mapping[str, str]) -> Any:
        """Return the parsed value of this variable in ``env`` (its default when unset)."""
        raw = env.get(self.env, self.default).strip()
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.env}: {exc}") from None


# -- parsers: raw text to a typed value, or ValueError saying what is wrong -----------------------


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


def _flag(raw: str) -> bool:
    if raw not in ("0", "1", "true", "false"):
        raise ValueError(f"must be 0 or 1, got {raw!r}")
    return raw in ("1", "true")


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _amqp_url(raw: str) -> str:
    parse_brokers(raw)
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
    if not raw:
        return "console" if sys.stderr.isatty() else "json"
    if raw not in ("json", "console"):
        raise ValueError(f"must be json or console, got {raw!r}")
    return raw


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def _existing_file(raw: str) -> Path | None:
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"no readable file at {raw!r}")
    return path


def _file_text(raw: str) -> str | None:
    path = _existing_file(raw)
    if path is None:
        return None
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError("the file is empty")
    return text


def _path(raw: str) -> str:
    if not raw.startswith("/") or any(c in raw for c in "?# ") or any(ord(c) < 32 for c in raw):
        raise ValueError(f"must be a URL path starting with /, got {raw!r}")
    return raw


def _platform(raw: str) -> str:
    if not raw or any(ord(c) < 32 for c in raw):
        raise ValueError("must be a non-empty header value")
    return raw


# -- declarations: a Settings field carrying its Setting ------------------------------------------

_SETTING: Final = "setting"
#: A companion ``*_FILE`` variable naming a file that holds the value (it wins when set).
_FILE: Final = "file"


def _declare(env: str, default: _T, written: str, parse: Callable[[str], _T], unit: str,
             meaning: str, *, bounds: tuple[float, float] | None = None, note: str = "",
             auto: str = "", file: Setting | None = None) -> _T:
    """Return a field whose default is ``default``, read from ``env`` (written ``written``)."""
    setting = Setting(env, written, unit, meaning, parse, bounds, note, auto)
    return field(default=default, metadata={_SETTING: setting, _FILE: file})


def _int(env: str, default: int, low: int, high: int, unit: str, meaning: str, *,
         note: str = "") -> int:
    return _declare(env, default, str(default), _int_in(low, high), unit, meaning,
                    bounds=(low, high), note=note)


def _float(env: str, default: float, low: float, high: float, unit: str, meaning: str) -> float:
    return _declare(env, default, f"{default:g}", _float_in(low, high), unit, meaning,
                    bounds=(low, high))


def _str(env: str, default: str, parse: Callable[[str], str], unit: str, meaning: str) -> str:
    return _declare(env, default, default, parse, unit, meaning)


@dataclass(frozen=True, slots=True)
class Settings:
    """The worker's configuration, read once at start-up."""

    amqp_url: str = _str(
        "LOVENSE_AMQP_URL", "amqp://guest:guest@localhost:5672/", _amqp_url, "URLs",
        "RabbitMQ to consume commands from and publish results to: one URL, or the nodes of "
        "one cluster comma-separated (same vhost and credentials in each; a comma in them is "
        "written `%2C`), tried in a shuffled order on every (re)connect")
    developer_token: Secret = _declare(
        "LOVENSE_DEVELOPER_TOKEN", Secret(""), "", Secret, "secret",
        "Lovense developer token for the server route; never logged, never in a result or "
        "`repr`",
        file=Setting("LOVENSE_DEVELOPER_TOKEN_FILE", "", "path",
                     "file holding the developer token (wins over `LOVENSE_DEVELOPER_TOKEN`)",
                     _file_text))
    utoken_secret: Secret = _declare(
        "LOVENSE_UTOKEN_SECRET", Secret(""), "", Secret, "secret",
        "key of the per-user `utoken`, HMAC-SHA256(uid), sent with GetQrCode")
    api_base: str = _str(
        "LOVENSE_API_BASE", "https://api.lovense-api.com", _url, "URL",
        "Lovense server API base; `http://127.0.0.1:PORT` for the simulator")
    platform: str = _str(
        "LOVENSE_PLATFORM", "lovense-worker", _platform, "text",
        "`X-platform` header on LAN calls (shown in Lovense Remote)")
    lan_allow: Networks = _declare(
        "LOVENSE_LAN_ALLOW", (), "", _networks, "CIDR list",
        "networks the LAN route may connect to; empty turns the LAN route off")
    lan_ca_file: Path | None = _declare(
        "LOVENSE_LAN_CA_FILE", None, "", _existing_file, "path",
        "extra CA bundle trusted for LAN TLS, on top of the system roots")
    shards: int = _int(
        "LOVENSE_SHARDS", 4, 1, 1024, "queues",
        "number of command shard queues `lovense.commands.N`")
    prefetch: int = _int(
        "LOVENSE_PREFETCH", 256, 1, 65535, "messages",
        "unacked commands one process holds, split evenly over its shards")
    metrics_port: int = _int(
        "LOVENSE_METRICS_PORT", 9464, 0, 65535, "port",
        "port of `/metrics`, `/healthz` and `/readyz` (0 turns the endpoint off)")
    metrics_host: str = _str(
        "LOVENSE_METRICS_HOST", "0.0.0.0", str, "address",
        "address the metrics and health endpoint binds to")
    shutdown_grace_s: int = _int(
        "LOVENSE_SHUTDOWN_GRACE_S", 20, 0, 3600, "s",
        "on SIGTERM/SIGINT, how long calls in flight may finish before the worker exits")
    log_format: str = _declare(
        "LOVENSE_LOG_FORMAT", "console", "", _log_format, "`json`/`console`", "log format",
        auto="console on a terminal, else `json`")
    log_level: str = _str(
        "LOVENSE_LOG_LEVEL", "info", _one_of(LOG_LEVELS), "level",
        "`debug`, `info`, `warning` or `error`")
    default_ttl_ms: int = _int(
        "LOVENSE_DEFAULT_TTL_MS", 10_000, 1, 86_400_000, "ms",
        "deadline of a command without `ttlMs`, from its publish time")
    server_timeout_ms: int = _int(
        "LOVENSE_SERVER_TIMEOUT_MS", 5_000, 1, 600_000, "ms",
        "timeout of one call to the Lovense server API")
    lan_timeout_ms: int = _int(
        "LOVENSE_LAN_TIMEOUT_MS", 3_000, 1, 600_000, "ms",
        "timeout of one call to a Lovense Remote app on the LAN")
    max_uids_per_call: int = _int(
        "LOVENSE_MAX_UIDS_PER_CALL", 50, 1, 1000, "users",
        "most users comma-joined into one server call")
    key_queue: int = _int(
        "LOVENSE_KEY_QUEUE", 16, 1, 10_000, "commands",
        "`stopPrevious: 0` commands, and separately PatternV2 and queries, kept per (uid, toy) "
        "key; overflow drops the oldest")
    server_rate: float = _float(
        "LOVENSE_SERVER_RATE", 2.0, 0.01, 10_000, "calls/s",
        "per-uid rate of calls on the server route")
    server_burst: int = _int(
        "LOVENSE_SERVER_BURST", 4, 1, 10_000, "calls", "per-uid burst on the server route")
    lan_rate: float = _float(
        "LOVENSE_LAN_RATE", 10.0, 0.01, 10_000, "calls/s",
        "per-uid rate of calls on the LAN route")
    lan_burst: int = _int(
        "LOVENSE_LAN_BURST", 10, 1, 10_000, "calls", "per-uid burst on the LAN route")
    server_max_rps: float = _float(
        "LOVENSE_SERVER_MAX_RPS", 100.0, 0.1, 1_000_000, "calls/s",
        "your account's cap on server-route calls: the live worker processes share it, each "
        "taking an equal part")
    batch_window_ms: int = _int(
        "LOVENSE_BATCH_WINDOW_MS", 20, 0, 10_000, "ms",
        "identical toy-less commands for different users arriving within this window share "
        "one server call (0 turns merging off)")
    lan_fanout: int = _int(
        "LOVENSE_LAN_FANOUT", 100, 1, 100_000, "calls",
        "most concurrent LAN calls of one multi-user message")
    max_time_sec: int = _int(
        "LOVENSE_MAX_TIME_SEC", 0, 0, 86_400, "s",
        "when set, `timeSec` 0 and longer times are capped to it (see \"Safety cap\")",
        note="off")
    stop_retry_s: int = _int(
        "LOVENSE_STOP_RETRY_S", 30, 0, 3600, "s",
        "how long a Stop keeps retrying before its result is `failed`")
    trace_uids: bool = _declare(
        "LOVENSE_TRACE_UIDS", False, "0", _flag, "0/1",
        "put the uid of a single-user command on its trace spans (`lovense.uid`); tracing "
        "itself is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see Tracing)")
    allow_unverified_callbacks: bool = _declare(
        "LOVENSE_ALLOW_UNVERIFIED_CALLBACKS", False, "0", _flag, "0/1",
        "accept callbacks without a verifiable utoken when `LOVENSE_UTOKEN_SECRET` is unset "
        "(unsafe; the worker warns at start-up)")
    callback_host: str = _str(
        "LOVENSE_CALLBACK_HOST", "0.0.0.0", str, "address",
        "address `lovense-worker callbacks` listens on for the Lovense Remote app's POSTs")
    callback_port: int = _int(
        "LOVENSE_CALLBACK_PORT", 8080, 0, 65535, "port",
        "port of the callback endpoint (`callbacks`, and `run --simulator`; 0: any free port)")
    callback_path: str = _str(
        "LOVENSE_CALLBACK_PATH", "/lovense/callback", _path, "path",
        "path of the callback URL entered in the Lovense developer dashboard")
    callback_source_rate: float = _float(
        "LOVENSE_CALLBACK_SOURCE_RATE", 5.0, 0.1, 10_000, "per s",
        "callbacks one source address may post per second (burst "
        "`LOVENSE_CALLBACK_SOURCE_BURST`); over it: 429")
    callback_source_burst: int = _int(
        "LOVENSE_CALLBACK_SOURCE_BURST", 20, 1, 100_000, "callbacks",
        "callbacks one source address may post at once before its rate applies")
    callback_rate: float = _float(
        "LOVENSE_CALLBACK_RATE", 3000.0, 1.0, 1_000_000.0, "per s",
        "callbacks the whole endpoint process takes per second; over it: 429")
    callback_trusted_proxies: Networks = _declare(
        "LOVENSE_CALLBACK_TRUSTED_PROXIES", (), "", _networks, "CIDR list",
        "peers whose `X-Forwarded-For` names the source address (your ingress); from any "
        "other peer the TCP address is the source", note="none")
    lan_ttl_s: int = _int(
        "LOVENSE_LAN_TTL_S", 86400, 60, 30 * 86400, "s",
        "a LAN endpoint not refreshed by a callback within this is forgotten; also the "
        "callback log's max age")
    snapshot_interval_s: int = _int(
        "LOVENSE_SNAPSHOT_INTERVAL_S", 300, 5, 86400, "s",
        "how often a replica writes a registry snapshot")
    breaker_failures: int = _int(
        "LOVENSE_BREAKER_FAILURES", 3, 1, 1000, "calls",
        "LAN calls in a row that never reached an app before its circuit opens")
    breaker_cooldown_s: int = _int(
        "LOVENSE_BREAKER_COOLDOWN_S", 30, 1, 86400, "s",
        "how long an open circuit skips an app before one trial call")
    recent_ids: int = _int(
        "LOVENSE_RECENT_IDS", 100_000, 0, 10_000_000, "ids",
        "finished command ids remembered, so a redelivered or repeated one is answered again "
        "without a second call")
    max_deliveries: int = _int(
        "LOVENSE_MAX_DELIVERIES", 5, 1, 19, "deliveries",
        "a message whose `x-delivery-count` reaches this is given up on: `failed` result, "
        "then `lovense.dead`")
    http_connections: int = _int(
        "LOVENSE_HTTP_CONNECTIONS", 512, 1, 100_000, "connections",
        "most open HTTP connections per route")
    max_toys: int = _int(
        "LOVENSE_MAX_TOYS", 32, 1, 1024, "toy ids",
        "most toy ids one command may name; a Stop naming more stops every toy of its users")
    max_uids: int = _int(
        "LOVENSE_MAX_UIDS", 10_000, 1, 100_000, "users",
        "most users one message may name; a Stop naming more is carried out for all of them")
    max_action_length: int = _int(
        "LOVENSE_MAX_ACTION_LENGTH", 256, 16, 65_536, "characters", "longest Function `action`")
    max_rule_length: int = _int(
        "LOVENSE_MAX_RULE_LENGTH", 64, 16, 4096, "characters", "longest Pattern `rule`")
    max_strength_length: int = _int(
        "LOVENSE_MAX_STRENGTH_LENGTH", 256, 16, 65_536, "characters",
        "longest Pattern `strength`")
    wide_stop_users: int = _int(
        "LOVENSE_WIDE_STOP_USERS", 20_000, 1, 10_000_000, "users",
        "users of multi-user Stops whose calls run at once; the watermarks of a wider burst "
        "apply on arrival, its calls wait for room")
    recent_bytes: int = _int(
        "LOVENSE_RECENT_BYTES", 64 * 1024 * 1024, 0, 2**40, "bytes",
        "memory budget of the finished command ids; over it (or over `LOVENSE_RECENT_IDS`) the "
        "oldest go first", note="64 MiB")
    watermark_bytes: int = _int(
        "LOVENSE_WATERMARK_BYTES", 32 * 1024 * 1024, 1 << 20, 2**40, "bytes",
        "memory budget of the Stop watermarks; over it a user's per-toy marks merge into one "
        "mark for every toy (none younger than the Stop log's hour is dropped)",
        note="32 MiB")

    def __repr__(self) -> str:
        # The AMQP URL may carry a password; the token is a Secret already.
        fields = ", ".join(
            f"{f.name}={redact(repr(getattr(self, f.name)))}"
            for f in dataclasses.fields(self)
        )
        return f"Settings({fields})"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
        *,
        defaults: Mapping[str, str] | None = None,
        only: Collection[str] | None = None,
    ) -> Settings:
        """Build settings from ``LOVENSE_*`` variables (``os.environ`` when not given).

        ``overrides`` (CLI flags, keyed by variable; None = not given) win over the
        environment; ``defaults`` stand in for variables that are unset or empty;
        ``only`` reads just these variables and leaves every other setting at its
        default, for a subcommand that needs one or two.
        """
        _check_names(overrides or {}, defaults or {}, only or ())
        env = dict(os.environ if environ is None else environ)
        for key, value in (defaults or {}).items():
            if not env.get(key):
                env[key] = value
        for key, override in (overrides or {}).items():
            if override is not None:
                env[key] = override
        values: dict[str, Any] = {}
        for attr, setting, file in _DECLARED:
            if only is not None and setting.env not in only:
                continue
            values[attr] = setting.read(env)
            if file is not None and (text := file.read(env)) is not None:
                values[attr] = setting.parse(text)
        return cls(**values)

    @property
    def caps(self) -> Caps:
        """Return the size caps on what producers send."""
        return Caps(toys=self.max_toys, uids=self.max_uids, action=self.max_action_length,
                    rule=self.max_rule_length, strength=self.max_strength_length)

    @property
    def brokers(self) -> Brokers:
        """Return the broker nodes of ``LOVENSE_AMQP_URL`` (checked when the settings were read)."""
        return parse_brokers(self.amqp_url)

    @property
    def lan_enabled(self) -> bool:
        """Return whether the LAN route may be used at all."""
        return bool(self.lan_allow)


#: Each Settings attribute with its variable and, for the developer token, its ``*_FILE`` twin.
_DECLARED: Final[tuple[tuple[str, Setting, Setting | None], ...]] = tuple(
    (f.name, f.metadata[_SETTING], f.metadata[_FILE]) for f in dataclasses.fields(Settings))

#: Every variable, in the order of the README's configuration table.
SETTINGS: Final[tuple[Setting, ...]] = tuple(
    s for _attr, setting, file in _DECLARED for s in (setting, file) if s is not None)

#: The variable of each Settings attribute (``"shards"`` → ``"LOVENSE_SHARDS"``).
VARIABLES: Final[Mapping[str, str]] = {attr: setting.env for attr, setting, _ in _DECLARED}


def _check_names(*groups: Collection[str]) -> None:
    known = {s.env for s in SETTINGS}
    unknown = sorted({name for names in groups for name in names} - known)
    if unknown:
        raise ValueError(f"not LOVENSE_* settings: {', '.join(unknown)}")


