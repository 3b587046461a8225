"""The worker's configuration: one TOML file, every key with a default, every flag mirrored.

```toml
login = "ADDRESS.WORKER"        # --login
password = "x"                  # --password
agent = "matmine-worker/0.1"
backend = "blas"                # --backend: "blas" | "opencl"
devices = []                    # --devices: OpenCL "PLATFORM:DEVICE" specs; [] = all
log_level = "INFO"              # --log-level

[[pool]]                        # --pool HOST:PORT (repeat; earlier = higher priority)
url = "127.0.0.1:3333"          # "HOST:PORT", "tcp://HOST:PORT" or "tls://HOST:PORT"
priority = 0                    # lower is preferred; default = position in the list

[connection]
job_timeout = 300.0             # seconds without a new job before reconnecting
ping_interval = 30.0            # keepalive mining.ping period
response_timeout = 30.0         # a request unanswered this long drops the connection
connect_timeout = 10.0
backoff_initial = 1.0           # reconnect backoff: initial, doubling, capped, ±jitter
backoff_max = 60.0
backoff_jitter = 0.25
primary_retry = 30.0            # how often a better pool is probed while on a worse one
follow_foreign_redirects = false  # client.reconnect to another host is refused unless true
max_frame_size = 1048576
tls_ca = ""                     # CA bundle for tls:// pools; "" = the system's

[mining]
roll_time = true                # header time follows the clock, up to 600 s past the job
suggest_difficulty = 0.0        # 0 = do not send mining.suggest_difficulty
check_threads = 1               # CPU threads for re-checking candidates

[useful]
enabled = true                  # --no-useful: announce "useful-1" and take blob jobs
cache_dir = ""                  # --blob-cache: verified operand blobs; "" = the user's cache
cache_max_bytes = 1073741824    # --blob-cache-max: size bound of that cache (LRU)

[watchdog]
stall_timeout = 120.0           # a device without progress this long is restarted; 0 = off

[metrics]
host = "127.0.0.1"
port = 9110                     # --metrics-port; 0 = pick a free port; -1 = no server

[console]
status_interval = 30.0          # seconds between status lines in the log
live = "auto"                   # "auto" (when stdout is a terminal) | "on" | "off"
```
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from protocol.address import validate_address
from protocol.errors import ProtocolError

DEFAULT_METRICS_PORT = 9110
BACKENDS = ("blas", "opencl")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A configuration file or flag that cannot be used, with the reason."""


@dataclass(frozen=True)
class PoolEndpoint:
    """One pool to connect to; ``priority`` lower = preferred."""

    host: str
    port: int
    tls: bool = False
    priority: int = 0

    @property
    def label(self) -> str:
        scheme = "tls://" if self.tls else ""
        return f"{scheme}{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str, priority: int = 0) -> PoolEndpoint:
        """Parse ``HOST:PORT``, ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` (IPv6 in brackets)."""
        text = url.strip()
        tls = False
        if "://" in text:
            scheme, text = text.split("://", 1)
            scheme = scheme.lower()
            if scheme in ("tls", "ssl", "stratum+tls", "stratum+ssl"):
                tls = True
            elif scheme not in ("tcp", "stratum+tcp"):
                raise ConfigError(f"pool {url!r}: unknown scheme {scheme!r} (use tcp:// or tls://)")
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"pool {url!r}: expected HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"pool {url!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ConfigError(f"pool {url!r}: port {port} out of range")
        return cls(host, port, tls, priority)


@dataclass(frozen=True)
class ConnectionConfig:
    job_timeout: float = 300.0
    ping_interval: float = 30.0
    response_timeout: float = 30.0
    connect_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_jitter: float = 0.25
    primary_retry: float = 30.0
    follow_foreign_redirects: bool = False
    max_frame_size: int = 1 << 20
    tls_ca: str = ""


@dataclass(frozen=True)
class MiningConfig:
    roll_time: bool = True
    suggest_difficulty: float = 0.0
    check_threads: int = 1


@dataclass(frozen=True)
class UsefulConfig:
    """Useful work (blob jobs): on by default; operands cached on disk up to a bound."""

    enabled: bool = True
    cache_dir: str = ""
    cache_max_bytes: int = 1 << 30

    def cache_path(self) -> Path:
        """``cache_dir``, or ``$XDG_CACHE_HOME/matmine-worker/blobs`` (~/.cache if unset)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "matmine-worker" / "blobs"


@dataclass(frozen=True)
class WatchdogConfig:
    stall_timeout: float = 120.0


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT


@dataclass(frozen=True)
class ConsoleConfig:
    status_interval: float = 30.0
    live: str = "auto"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``matmine-worker mine`` needs; defaults for every key."""

    pools: tuple[PoolEndpoint, ...] = ()
    login: str = ""
    password: str = "x"
    agent: str = "matmine-worker/0.1"
    backend: str = "blas"
    devices: tuple[str, ...] = ()
    log_level: str = "INFO"
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    useful: UsefulConfig = field(default_factory=UsefulConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)

    def validate(self) -> WorkerConfig:
        """Raise ``ConfigError`` for anything ``mine`` cannot run with; return self."""
        if not self.pools:
            raise ConfigError("no pool given (--pool HOST:PORT or [[pool]] url in the config)")
        address, dot, worker = self.login.partition(".")
        if not address or (dot and not worker):
            raise ConfigError("login must be ADDRESS or ADDRESS.WORKER (--login)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        c = self.connection
        for name in ("job_timeout", "ping_interval", "response_timeout", "connect_timeout",
                     "backoff_initial", "backoff_max", "primary_retry"):
            if getattr(c, name) <= 0:
                raise ConfigError(f"connection.{name} must be positive")
        if not 0 <= c.backoff_jitter < 1:
            raise ConfigError("connection.backoff_jitter must be in [0, 1)")
        if c.max_frame_size < 1024:
            raise ConfigError("connection.max_frame_size must be at least 1024")
        if self.mining.suggest_difficulty < 0 or self.mining.check_threads < 1:
            raise ConfigError("mining.suggest_difficulty must be ≥ 0, check_threads ≥ 1")
        if self.useful.cache_max_bytes < 0:
            raise ConfigError("useful.cache_max_bytes must be ≥ 0")
        if self.watchdog.stall_timeout < 0:
            raise ConfigError("watchdog.stall_timeout must be ≥ 0 (0 = off)")
        if not -1 <= self.metrics.port < 65536:
            raise ConfigError("metrics.port must be -1 (off), 0 (any) or a port number")
        if self.console.live not in ("auto", "on", "off"):
            raise ConfigError("console.live must be 'auto', 'on' or 'off'")
        try:  # a pool refuses any other address for good (24): say so before connecting
            validate_address(self.login.partition(".")[0])
        except ProtocolError as exc:
            raise ConfigError(f"login {self.login!r}: {exc} (make an address with"
                              " 'matmine-node new-address')") from None
        return self


_SECTIONS: dict[str, type] = {
    "connection": ConnectionConfig,
    "mining": MiningConfig,
    "useful": UsefulConfig,
    "watchdog": WatchdogConfig,
    "metrics": MetricsConfig,
    "console": ConsoleConfig,
}


def _coerce(section: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key}")
        default = getattr(cls(), key)
        values[key] = _typed(f"{section}.{key}", default, value)
    return cls(**values)


def _typed(name: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value
    raise ConfigError(f"{name}: unsupported type")  # pragma: no cover


def config_from_dict(raw: dict[str, Any]) -> WorkerConfig:
    """Build a ``WorkerConfig`` from parsed TOML; unknown keys are errors, not ignored."""
    base = WorkerConfig()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "pool":
            if not isinstance(value, list):
                raise ConfigError("[[pool]] must be an array of tables")
            pools = []
            for position, entry in enumerate(value):
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise ConfigError("every [[pool]] needs url = \"HOST:PORT\"")
                extra = set(entry) - {"url", "priority"}
                if extra:
                    raise ConfigError(f"unknown key(s) in [[pool]]: {sorted(extra)}")
                priority = entry.get("priority", position)
                if isinstance(priority, bool) or not isinstance(priority, int):
                    raise ConfigError("pool priority must be an integer")
                pools.append(PoolEndpoint.parse(entry["url"], priority))
            values["pools"] = tuple(pools)
        elif key == "devices":
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise ConfigError("devices must be a list of strings")
            values["devices"] = tuple(value)
        elif key in _SECTIONS:
            values[key] = _coerce(key, _SECTIONS[key], value)
        elif key in ("login", "password", "agent", "backend", "log_level"):
            values[key] = _typed(key, getattr(base, key), value)
        else:
            raise ConfigError(f"unknown key {key!r}")
    return replace(base, **values)


def load_config(path: str | Path | None) -> WorkerConfig:
    """Read a TOML file (``None`` = all defaults)."""
    if path is None:
        return WorkerConfig()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_dict(raw)


def with_overrides(config: WorkerConfig, **flags: Any) -> WorkerConfig:
    """Apply command-line flags (``None`` = not given) over a loaded config."""
    top: dict[str, Any] = {}
    if flags.get("pools"):
        top["pools"] = tuple(PoolEndpoint.parse(u, i) for i, u in enumerate(flags["pools"]))
    for key in ("login", "password", "backend", "log_level"):
        if flags.get(key) is not None:
            top[key] = flags[key]
    if flags.get("devices") is not None:
        top["devices"] = tuple(flags["devices"])
    if flags.get("metrics_port") is not None:
        top["metrics"] = replace(config.metrics, port=flags["metrics_port"])
    useful: dict[str, Any] = {}
    if flags.get("no_useful"):
        useful["enabled"] = False
    if flags.get("blob_cache") is not None:
        useful["cache_dir"] = flags["blob_cache"]
    if flags.get("blob_cache_max") is not None:
        useful["cache_max_bytes"] = flags["blob_cache_max"]
    if useful:
        top["useful"] = replace(config.useful, **useful)
    return replace(config, **top)
