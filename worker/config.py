"""The worker's configuration: one TOML file, every key with a default, every flag mirrored.

Each key is a dataclass field below with its default and help text
(:func:`toolkit.settings.setting`); sections are TOML tables. The pools are an array::

    login = "ADDRESS.WORKER"        # --login
    backend = "blas"                # --backend: "blas" | "opencl"

    [[pool]]                        # --pool HOST:PORT (repeat; earlier = higher priority)
    url = "127.0.0.1:3333"          # "HOST:PORT", "tcp://HOST:PORT" or "tls://HOST:PORT"
    priority = 0                    # lower is preferred; default = position in the list

    [connection]
    backoff_max = 60.0

``default_config_text()`` is the commented file of every key at its default that
``matmine-worker init-config`` prints, generated from the same fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocol.address import validate_address
from protocol.errors import ProtocolError
from toolkit.settings import (
    ConfigError,
    check_bounds,
    from_dict,
    override,
    read_toml,
    section,
    setting,
    toml_text,
)

from .autotune import DOT_CHOICES
from .model_settings import ModelConfig

DEFAULT_METRICS_PORT = 9110
BACKENDS = ("blas", "opencl")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    job_timeout: float = setting(
        300.0, "seconds without a new job before reconnecting", positive=True
    )
    ping_interval: float = setting(30.0, "keepalive mining.ping period, seconds", positive=True)
    response_timeout: float = setting(
        30.0, "a request unanswered this long (seconds) drops the connection", positive=True
    )
    connect_timeout: float = setting(
        10.0, "seconds to wait for a TCP/TLS connection", positive=True
    )
    backoff_initial: float = setting(
        1.0, "first reconnect delay, seconds (then doubling)", positive=True
    )
    backoff_max: float = setting(60.0, "longest reconnect delay, seconds", positive=True)
    backoff_jitter: float = setting(0.25, "reconnect delays vary by ± this fraction")
    primary_retry: float = setting(
        30.0, "how often (seconds) a better pool is probed while on a worse one", positive=True
    )
    follow_foreign_redirects: bool = setting(
        False, "client.reconnect to another host is refused unless true"
    )
    max_frame_size: int = setting(1 << 20, "largest frame accepted from a pool, bytes", min=1024)
    tls_ca: str = setting("", 'CA bundle for tls:// pools; "" = the system\'s')


@dataclass(frozen=True)
class MiningConfig:
    roll_time: bool = setting(True, "header time follows the clock, up to 600 s past the job")
    suggest_difficulty: float = setting(0.0, "0 = do not send mining.suggest_difficulty")
    check_threads: int = setting(1, "CPU threads for re-checking candidates")


@dataclass(frozen=True)
class UsefulConfig:
    """Useful work (blob jobs): on by default; operands cached on disk up to a bound."""

    enabled: bool = setting(True, 'announce "useful-1" and take blob jobs (--no-useful)')
    cache_dir: str = setting("", 'verified operand blobs (--blob-cache); "" = the user\'s cache')
    cache_max_bytes: int = setting(1 << 30, "size bound of that cache, LRU (--blob-cache-max)")
    wait_after_product: float = setting(
        5.0,
        "seconds a device waits for the pool's next job once a unit's product is taken, "
        "instead of mining more headers of that unit (work nobody asked for); 0 = never wait",
        min=0.0,
        max=600.0,
    )

    def cache_path(self) -> Path:
        """``cache_dir``, or ``$XDG_CACHE_HOME/matmine-worker/blobs`` (~/.cache if unset)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "matmine-worker" / "blobs"


@dataclass(frozen=True)
class OpenCLConfig:
    dot: str = setting(
        "auto",
        'inner product of the OpenCL kernel: "auto" (the fastest the device claims that '
        'passes its self-test, else portable) or one forced: "portable", "packed", '
        '"khr_packed", "amd_sdot4", "ptx_dp4a", "ptx_mma", "mma_emulated" (--dot)',
        choices=DOT_CHOICES,
    )


@dataclass(frozen=True)
class WatchdogConfig:
    stall_timeout: float = setting(
        120.0, "a device without progress this long (seconds) is restarted; 0 = off"
    )


@dataclass(frozen=True)
class MetricsConfig:
    host: str = setting("127.0.0.1", "address of the /metrics and /api/summary server")
    port: int = setting(
        DEFAULT_METRICS_PORT, "its port (--metrics-port); 0 = pick a free port; -1 = no server"
    )


@dataclass(frozen=True)
class ConsoleConfig:
    status_interval: float = setting(30.0, "seconds between status lines in the log")
    live: str = setting("auto", '"auto" (when stdout is a terminal) | "on" | "off"')


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``matmine-worker mine`` needs; defaults for every key."""

    pools: tuple[PoolEndpoint, ...] = ()  # TOML: [[pool]] tables (--pool)
    login: str = setting("", "ADDRESS or ADDRESS.WORKER the pool credits (--login)")
    password: str = setting("x", "pool password, if the pool wants one (--password)")
    agent: str = setting("matmine-worker/0.1", "user agent sent to the pool")
    backend: str = setting("blas", '"blas" (CPU) or "opencl" (GPUs) (--backend)')
    devices: tuple[str, ...] = setting((), 'OpenCL "PLATFORM:DEVICE" specs; [] = all (--devices)')
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR (--log-level)")
    connection: ConnectionConfig = section(ConnectionConfig)
    mining: MiningConfig = section(MiningConfig)
    useful: UsefulConfig = section(UsefulConfig)
    opencl: OpenCLConfig = section(OpenCLConfig)
    watchdog: WatchdogConfig = section(WatchdogConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    console: ConsoleConfig = section(ConsoleConfig)
    model: ModelConfig = section(ModelConfig)

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
        check_bounds(self)  # the connection's timeouts and frame size
        if not 0 <= self.connection.backoff_jitter < 1:
            raise ConfigError("connection.backoff_jitter must be in [0, 1)")
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
            raise ConfigError(
                f"login {self.login!r}: {exc} (make an address with 'matmine-node new-address')"
            ) from None
        return self


def config_from_dict(raw: dict[str, Any]) -> WorkerConfig:
    """Build a ``WorkerConfig`` from parsed TOML; unknown keys are errors, not ignored."""
    rest = {key: value for key, value in raw.items() if key != "pool"}
    config: WorkerConfig = from_dict(WorkerConfig, rest, skip=("pools",))
    if "pool" in raw:
        config = replace(config, pools=_pools(raw["pool"]))
    return config


def _pools(value: Any) -> tuple[PoolEndpoint, ...]:
    """The ``[[pool]]`` tables: ``url`` and an optional ``priority`` (default: position)."""
    if not isinstance(value, list):
        raise ConfigError("[[pool]] must be an array of tables")
    pools = []
    for position, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigError('every [[pool]] needs url = "HOST:PORT"')
        extra = set(entry) - {"url", "priority"}
        if extra:
            raise ConfigError(f"unknown key(s) in [[pool]]: {sorted(extra)}")
        priority = entry.get("priority", position)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError("pool priority must be an integer")
        pools.append(PoolEndpoint.parse(entry["url"], priority))
    return tuple(pools)


def load_config(path: str | Path | None) -> WorkerConfig:
    """Read a TOML file (``None`` = all defaults)."""
    return config_from_dict(read_toml(path) if path is not None else {})


def with_overrides(config: WorkerConfig, **flags: Any) -> WorkerConfig:
    """Apply command-line flags (``None`` = not given) over a loaded config."""
    pools = tuple(PoolEndpoint.parse(u, i) for i, u in enumerate(flags.get("pools") or ()))
    settings: dict[str, Any] = {}
    for key in ("login", "password", "backend", "log_level"):
        if flags.get(key) is not None:
            settings[key] = flags[key]
    for flag, key in (
        ("devices", "devices"),
        ("metrics_port", "metrics.port"),
        ("blob_cache", "useful.cache_dir"),
        ("blob_cache_max", "useful.cache_max_bytes"),
        ("dot", "opencl.dot"),
    ):
        if flags.get(flag) is not None:
            settings[key] = tuple(flags[flag]) if flag == "devices" else flags[flag]
    if flags.get("no_useful"):
        settings["useful.enabled"] = False
    config = override(config, settings)
    return replace(config, pools=pools) if pools else config


CONFIG_HEADER = (
    "matmine worker configuration. Every key is optional; shown are the defaults.",
    "CLI flags (matmine-worker mine --help) override what is set here; mine needs a pool",
    "and a login, here or as --pool and --login.",
)

# The pools: an array of tables, so after every top-level key; commented out by default.
POOL_EXAMPLE = (
    "",
    "# The pools, in order of preference (--pool HOST:PORT, repeated): one [[pool]] each.",
    '# url: "HOST:PORT", "tcp://HOST:PORT" or "tls://HOST:PORT"; priority: lower is',
    "# preferred (default: the position in the list).",
    "# [[pool]]",
    '# url = "127.0.0.1:3333"',
    "# priority = 0",
    "",
)


def default_config_text() -> str:
    """A complete, commented TOML file with every key at its default value."""
    lines = toml_text(WorkerConfig(), CONFIG_HEADER).splitlines()
    at = lines.index("pools = []")  # a [[pool]] array in TOML, not a key: the example instead
    del lines[at - (lines[at - 1].strip() == "#") : at + 1]  # the key and its empty help
    first_table = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines[first_table:first_table] = POOL_EXAMPLE
    return "\n".join(lines) + "\n"
