"""The pool's configuration: one TOML file, every key with a default, CLI flags on top.

``load_config(path, overrides)`` reads the file (stdlib ``tomllib``), rejects unknown
sections and keys with a message naming them, applies ``overrides`` (dotted keys such as
``"stratum.port"``, as the CLI builds them) and validates the result.
``default_config_text()`` is the commented default file that ``matmine-pool init-config``
prints; it is generated from the same table of keys, so the two never drift apart.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.chain.embedded import NodeConfig
from pool.useful import UsefulConfig
from pool.vardiff import VardiffConfig
from protocol.work_messages import CHUNK_SIZE
from protocol.workload import Shape


class ConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message names the key."""


@dataclass
class StratumConfig:
    host: str = "127.0.0.1"
    port: int = 3333
    tls: bool = False
    tls_port: int = 3334
    tls_cert: str = ""
    tls_key: str = ""
    public_host: str = ""
    max_frame_size: int = 16384
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0
    max_connections: int = 10000
    max_connections_per_ip: int = 64
    max_inflight_submits: int = 16


@dataclass
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    history_interval: float = 60.0


@dataclass
class PoolSection:
    data_dir: str = "data"
    payout_address: str = ""
    fee_bps: int = 100
    fee_address: str = ""
    tag: str = "matmine"
    instance_id: int = 0
    pplns_factor: float = 2.0
    min_payout: int = 100_000_000
    payout_interval: float = 600.0
    unlock_interval: float = 30.0
    unknown_block_grace: float = 3600.0
    start_difficulty: float = 1.0
    check_threads: int = 2
    log_level: str = "info"


@dataclass
class VardiffSection:
    enabled: bool = True
    target_seconds: float = 10.0
    retarget_shares: int = 8
    retarget_seconds: float = 30.0
    variance: float = 0.3
    max_step: float = 4.0
    min_difficulty: float = 0.001
    max_difficulty: float = 1e12
    idle_seconds: float = 60.0
    window_shares: int = 64
    confidence: float = 2.0


@dataclass
class WorkSection:
    profile: str = "cpu"
    m: int = 0
    n: int = 0
    k: int = 0
    r: int = 0
    job_refresh_seconds: float = 30.0
    job_expiry_seconds: float = 120.0


@dataclass
class ChainSection:
    kind: str = "embedded"
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 18444
    poll_interval: float = 1.0
    node: dict[str, Any] = field(default_factory=dict)


@dataclass
class LedgerSection:
    kind: str = "sqlite"
    path: str = ""
    url: str = ""
    batch_max_shares: int = 256
    batch_interval_ms: float = 5.0
    max_pending_shares: int = 10000
    connect_timeout: float = 10.0
    statement_timeout: float = 30.0
    call_timeout: float = 60.0
    retry_interval: float = 2.0


@dataclass
class LimitsSection:
    messages_per_second: float = 50.0
    message_burst: int = 200
    invalid_window: int = 50
    invalid_min_shares: int = 20
    invalid_ratio: float = 0.5
    ban_seconds: float = 600.0
    max_banned_ips: int = 10000
    max_jobs_per_session: int = 16
    max_shares_per_job: int = 10000
    checks_per_ip_per_second: float = 100.0
    check_burst_per_ip: int = 500


@dataclass
class RetentionSection:
    interval: float = 600.0
    share_history_seconds: float = 172800.0
    block_grace_seconds: float = 600.0
    useful_history_seconds: float = 604800.0
    blob_grace_seconds: float = 3600.0


@dataclass
class UsefulSection(UsefulConfig):
    """``[useful]``: every :class:`~pool.useful.UsefulConfig` key, plus the API tokens."""

    tokens: dict[str, Any] = field(default_factory=dict)

    def usable(self, max_frame_size: int) -> str | None:
        """Why useful work cannot run with this frame size (None: it can)."""
        if not self.enabled:
            return "useful.enabled = false"
        if max_frame_size < self.chunk_max + 512:
            return (f"stratum.max_frame_size ({max_frame_size}) is below useful.chunk_max + "
                    f"512 = {self.chunk_max + 512}")
        return None

    def useful_config(self) -> UsefulConfig:
        """The section without its tokens, as the useful-work modules take it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(UsefulConfig)}
        return UsefulConfig(**values)


@dataclass
class PoolConfig:
    """The whole configuration; one attribute per TOML section."""

    stratum: StratumConfig = field(default_factory=StratumConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    pool: PoolSection = field(default_factory=PoolSection)
    vardiff: VardiffSection = field(default_factory=VardiffSection)
    work: WorkSection = field(default_factory=WorkSection)
    chain: ChainSection = field(default_factory=ChainSection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    useful: UsefulSection = field(default_factory=UsefulSection)
    retention: RetentionSection = field(default_factory=RetentionSection)

    @property
    def data_path(self) -> Path:
        return Path(self.pool.data_dir)

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger.path) if self.ledger.path else self.data_path / "pool.sqlite"

    @property
    def ledger_location(self) -> str | Path:
        """What ``pool.ledger.open_ledger`` opens: the PostgreSQL URL or the SQLite file."""
        return self.ledger.url if self.ledger.kind == "postgres" else self.ledger_path

    def vardiff_config(self) -> VardiffConfig:
        """The ``[vardiff]`` section as the vardiff module's own config."""
        v = self.vardiff
        return VardiffConfig(
            target_seconds=v.target_seconds, retarget_shares=v.retarget_shares,
            retarget_seconds=v.retarget_seconds, variance=v.variance, max_step=v.max_step,
            min_difficulty=v.min_difficulty, max_difficulty=v.max_difficulty,
            idle_seconds=v.idle_seconds, window_shares=max(v.window_shares, v.retarget_shares),
            confidence=v.confidence,
        )

    def work_shape(self) -> Shape:
        """The job shape: the profile's shape with any of m, n, k, r overridden."""
        base = WORK_PROFILES[self.work.profile]
        return Shape(
            m=self.work.m or base.m,
            n=self.work.n or base.n,
            k=self.work.k or base.k,
            r=self.work.r or base.r,
        )


WORK_PROFILES: dict[str, Shape] = {
    # 2048³ with r = 128: the BLAS miner reaches about half of the machine's float32
    # matmul there (tests/bench/worker_speed.py); smaller shapes spend more on per-slab work.
    "cpu": Shape(2048, 2048, 2048, 128),
    "gpu": Shape(4096, 4096, 4096, 128),
}

# Comment for every key, shown by ``init-config``; a key missing here is a bug (tested).
HELP: dict[str, dict[str, str]] = {
    "stratum": {
        "host": "address the miner port binds to (0.0.0.0 for every interface)",
        "port": "plain TCP miner port (0 picks a free port)",
        "tls": "also serve miners over TLS on tls_port",
        "tls_port": "TLS miner port, used when tls = true",
        "tls_cert": "PEM certificate chain for the TLS port",
        "tls_key": "PEM private key for the TLS port",
        "public_host": "host miners are told to reconnect to; empty = the address they "
        "connected to",
        "max_frame_size": "largest frame a miner may send, bytes; bigger closes the connection",
        "idle_timeout": "seconds without any message from a miner before it is dropped",
        "handshake_timeout": "seconds a new connection has to subscribe and authorize",
        "max_connections": "most miner connections at once",
        "max_connections_per_ip": "most miner connections from one IP address",
        "max_inflight_submits": "submits of one connection checked at the same time",
    },
    "http": {
        "enabled": "serve /metrics and the JSON API",
        "host": "address the HTTP port binds to",
        "port": "HTTP port (0 picks a free port)",
        "history_interval": "seconds between hashrate history samples (1440 kept per series)",
    },
    "pool": {
        "data_dir": "directory for the ledger, the embedded node and the pool wallet address",
        "payout_address": "the pool's coinbase/wallet address; empty = generate once, keep in "
        "data_dir/pool_address",
        "fee_bps": "pool fee in basis points (100 = 1%)",
        "fee_address": "address credited with the fee; empty keeps it in the pool wallet",
        "tag": "text written into every coinbase",
        "instance_id": "0..65535, distinct per pool instance sharing a chain (extranonce prefix)",
        "pplns_factor": "PPLNS window N as a multiple of the network difficulty",
        "min_payout": "smallest balance paid out, base units",
        "payout_interval": "seconds between payout runs",
        "unlock_interval": "seconds between checks of found blocks for maturity/orphaning",
        "unknown_block_grace": "seconds a found block the node does not know (never accepted, "
        "wiped devnet) stays pending before it is orphaned",
        "start_difficulty": "share difficulty of a new connection",
        "check_threads": "worker threads checking shares",
        "log_level": "debug, info, warning or error",
    },
    "vardiff": {
        "enabled": "adjust each connection's difficulty toward target_seconds per share",
        "target_seconds": "wanted seconds between shares of one connection",
        "retarget_shares": "review the difficulty after this many shares",
        "retarget_seconds": "...or after this many seconds, whichever comes first",
        "variance": "tolerated relative deviation from target_seconds before a change",
        "max_step": "largest factor of one difficulty change",
        "min_difficulty": "lowest share difficulty",
        "max_difficulty": "highest share difficulty",
        "idle_seconds": "a connection silent this long gets a lower difficulty",
        "window_shares": "recent shares used for the share-rate estimate",
        "confidence": "also ignore deviations within this many standard deviations of noise",
    },
    "work": {
        "profile": 'job shape preset: "cpu" (2048x2048x2048, r=128) or "gpu" (4096-sized)',
        "m": "rows of A (0 = from profile), multiple of 16",
        "n": "rows of Bᵀ (0 = from profile), multiple of 16",
        "k": "inner dimension (0 = from profile), multiple of r, >= 4r",
        "r": "slab width (0 = from profile): 32, 64, 128, 256 or 512",
        "job_refresh_seconds": "seconds between new (non-clean) jobs on the same block",
        "job_expiry_seconds": "seconds a superseded job still accepts shares",
    },
    "chain": {
        "kind": '"embedded" (devnet node in this process) or "rpc" (matmine-node serve)',
        "rpc_host": "node RPC host when kind = rpc",
        "rpc_port": "node RPC port when kind = rpc",
        "poll_interval": "seconds between checks of the chain tip",
        "node": "settings of the embedded node (table, passed to its config)",
    },
    "ledger": {
        "kind": '"sqlite" (a file) or "postgres" (needs the postgres extra)',
        "path": "SQLite ledger file; empty = data_dir/pool.sqlite",
        "url": "PostgreSQL URL (postgresql://user:pass@host/db) when kind = postgres",
        "batch_max_shares": "most shares committed in one transaction",
        "batch_interval_ms": "longest wait before a batch of shares is committed",
        "max_pending_shares": "shares waiting for a commit before submits wait",
        "connect_timeout": "PostgreSQL: seconds to wait for a connection",
        "statement_timeout": "PostgreSQL: seconds one statement may run on the server",
        "call_timeout": "PostgreSQL: seconds one ledger call may take before the pool gives up"
        " on it (a hung server)",
        "retry_interval": "seconds between checks of an unavailable ledger (submits are "
        "answered 20 meanwhile)",
    },
    "limits": {
        "messages_per_second": "sustained messages per second from one connection",
        "message_burst": "messages one connection may send in a burst",
        "invalid_window": "recent shares judged per connection",
        "invalid_min_shares": "shares seen before a connection is judged",
        "invalid_ratio": "share of invalid submits that starts the escalation "
        "(resend work, reconnect, drop, ban)",
        "ban_seconds": "how long an IP stays banned",
        "max_banned_ips": "most IP addresses remembered as banned",
        "max_jobs_per_session": "jobs remembered per connection",
        "max_shares_per_job": "shares remembered per job for duplicate checks",
        "checks_per_ip_per_second": "sustained full share checks per second for one IP "
        "address (beyond it, submits are answered 27, which never counts against a miner)",
        "check_burst_per_ip": "full share checks one IP address may have in a burst",
    },
    "useful": {
        "enabled": "lease customers' matrix products (work API) to miners that announce "
        '"useful-1"; synthetic work when none is queued',
        "unit_m": "most output rows per work unit (multiple of 16)",
        "unit_n": "most output columns per work unit (multiple of 16)",
        "r": "preferred slab width of unit jobs (small k gets a smaller r)",
        "chunk_max": f"largest work.get_blob / work.result chunk, bytes (>= {CHUNK_SIZE}); "
        "useful work stays off unless stratum.max_frame_size >= chunk_max + 512",
        "lease_seconds": "seconds a miner has to return a unit's product",
        "max_attempts": "wrong results before a unit (and its work item) fails",
        "freivalds_rounds": "rounds of Freivalds' check; each false-accepts with p <= 2^-16",
        "max_dim": "largest m or n of a submitted product",
        "max_k": "largest k of a submitted product (after padding)",
        "max_upload_bytes": "largest A plus B upload, bytes",
        "max_active_items": "unfinished work items per customer",
        "max_queued_bytes": "operand bytes of one customer's unfinished items",
        "max_inflight_upload_bytes": "bytes of work API uploads received at once, all customers "
        "together (a body without Content-Length counts as max_upload_bytes); beyond: 503",
        "tokens": 'work API tokens: token = "customer name"; none = loopback clients only',
    },
    "retention": {
        "interval": "seconds between retention runs (share pruning)",
        "share_history_seconds": "shares kept at least this long, beyond what any PPLNS "
        "window of a block not yet credited still needs",
        "block_grace_seconds": "the window of a block this old is kept too (a block found "
        "but not yet in the ledger)",
        "useful_history_seconds": "customers' finished work items (and their results) are "
        "kept this long",
        "blob_grace_seconds": "blobs stored this recently are never collected (an upload "
        "whose item is not recorded yet)",
    },
}


def _check_type(section: str, key: str, default: Any, value: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover


def config_from_dict(data: dict[str, Any]) -> PoolConfig:
    """Build a ``PoolConfig`` from parsed TOML; unknown sections/keys raise ``ConfigError``."""
    config = PoolConfig()
    for section, values in data.items():
        if section not in HELP:
            raise ConfigError(f"unknown section [{section}] (known: {', '.join(HELP)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        target = getattr(config, section)
        for key, value in values.items():
            if key not in HELP[section]:
                raise ConfigError(
                    f"unknown key {key!r} in [{section}] (known: {', '.join(HELP[section])})"
                )
            setattr(target, key, _check_type(section, key, getattr(target, key), value))
    validate(config)
    return config


def apply_overrides(config: PoolConfig, overrides: dict[str, Any]) -> PoolConfig:
    """Set dotted keys (``"stratum.port": 4000``) on ``config`` and validate again."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in HELP or key not in HELP[section]:
            raise ConfigError(f"unknown setting {dotted!r}")
        target = getattr(config, section)
        setattr(target, key, _check_type(section, key, getattr(target, key), value))
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> PoolConfig:
    """Read ``path`` (None = all defaults), apply ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    config = config_from_dict(data)
    return apply_overrides(config, overrides or {})


def validate(config: PoolConfig) -> None:
    """Raise ``ConfigError`` for values that parse but cannot work."""
    s, p, w, v, lim = config.stratum, config.pool, config.work, config.vardiff, config.limits
    for name, port in (("stratum.port", s.port), ("stratum.tls_port", s.tls_port),
                       ("http.port", config.http.port), ("chain.rpc_port", config.chain.rpc_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be in 0..65535, got {port}")
    if s.tls and not (s.tls_cert and s.tls_key):
        raise ConfigError("stratum.tls = true needs stratum.tls_cert and stratum.tls_key")
    if s.max_frame_size < 256:
        raise ConfigError("stratum.max_frame_size must be at least 256 bytes")
    for name, value in (("stratum.idle_timeout", s.idle_timeout),
                        ("stratum.handshake_timeout", s.handshake_timeout),
                        ("pool.payout_interval", p.payout_interval),
                        ("pool.unlock_interval", p.unlock_interval),
                        ("pool.unknown_block_grace", p.unknown_block_grace),
                        ("pool.start_difficulty", p.start_difficulty),
                        ("pool.pplns_factor", p.pplns_factor),
                        ("vardiff.target_seconds", v.target_seconds),
                        ("vardiff.retarget_seconds", v.retarget_seconds),
                        ("vardiff.min_difficulty", v.min_difficulty),
                        ("work.job_refresh_seconds", w.job_refresh_seconds),
                        ("work.job_expiry_seconds", w.job_expiry_seconds),
                        ("chain.poll_interval", config.chain.poll_interval),
                        ("ledger.batch_interval_ms", config.ledger.batch_interval_ms),
                        ("ledger.connect_timeout", config.ledger.connect_timeout),
                        ("ledger.statement_timeout", config.ledger.statement_timeout),
                        ("ledger.call_timeout", config.ledger.call_timeout),
                        ("ledger.retry_interval", config.ledger.retry_interval),
                        ("limits.messages_per_second", lim.messages_per_second),
                        ("limits.ban_seconds", lim.ban_seconds),
                        ("limits.checks_per_ip_per_second", lim.checks_per_ip_per_second),
                        ("retention.interval", config.retention.interval),
                        ("retention.useful_history_seconds",
                         config.retention.useful_history_seconds),
                        ("retention.blob_grace_seconds", config.retention.blob_grace_seconds),
                        ("http.history_interval", config.http.history_interval)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, value in (("stratum.max_connections", s.max_connections),
                        ("stratum.max_connections_per_ip", s.max_connections_per_ip),
                        ("stratum.max_inflight_submits", s.max_inflight_submits),
                        ("pool.check_threads", p.check_threads),
                        ("ledger.batch_max_shares", config.ledger.batch_max_shares),
                        ("ledger.max_pending_shares", config.ledger.max_pending_shares),
                        ("limits.message_burst", lim.message_burst),
                        ("limits.invalid_window", lim.invalid_window),
                        ("limits.max_banned_ips", lim.max_banned_ips),
                        ("limits.max_jobs_per_session", lim.max_jobs_per_session),
                        ("limits.max_shares_per_job", lim.max_shares_per_job),
                        ("limits.check_burst_per_ip", lim.check_burst_per_ip)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    try:
        config.vardiff_config()
    except ValueError as exc:
        raise ConfigError(f"[vardiff] {exc}") from None
    if not v.min_difficulty <= p.start_difficulty <= v.max_difficulty:
        raise ConfigError(f"pool.start_difficulty {p.start_difficulty:g} must lie within "
                          f"[vardiff.min_difficulty, vardiff.max_difficulty] = "
                          f"[{v.min_difficulty:g}, {v.max_difficulty:g}]")
    if not 0 < lim.invalid_ratio <= 1:
        raise ConfigError("limits.invalid_ratio must be in (0, 1]")
    if not 0 <= p.fee_bps <= 10_000:
        raise ConfigError(f"pool.fee_bps must be in 0..10000, got {p.fee_bps}")
    if not 0 <= p.instance_id <= 0xFFFF:
        raise ConfigError(f"pool.instance_id must be in 0..65535, got {p.instance_id}")
    from pool.jobs import MAX_TAG_BYTES  # every job's coinbase tag adds "/JOB_ID"

    if len(p.tag.encode()) > MAX_TAG_BYTES:
        raise ConfigError(f"pool.tag must be at most {MAX_TAG_BYTES} bytes (UTF-8)")
    if p.min_payout < 1:
        raise ConfigError("pool.min_payout must be at least 1 base unit")
    if w.profile not in WORK_PROFILES:
        raise ConfigError(f"work.profile must be one of {', '.join(WORK_PROFILES)}")
    if config.chain.kind not in ("embedded", "rpc"):
        raise ConfigError('chain.kind must be "embedded" or "rpc"')
    if config.ledger.kind not in ("sqlite", "postgres"):
        raise ConfigError('ledger.kind must be "sqlite" or "postgres"')
    if config.ledger.kind == "postgres" and not config.ledger.url.startswith(
            ("postgresql://", "postgres://")):
        raise ConfigError("ledger.kind = postgres needs ledger.url = postgresql://...")
    if p.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("pool.log_level must be debug, info, warning or error")
    try:
        config.work_shape()
    except Exception as exc:  # ProtocolError names the bad dimension
        raise ConfigError(f"[work] shape: {exc}") from None
    if config.chain.kind == "embedded":
        node_config(config)
    validate_useful(config)
    from protocol.address import validate_address

    for name, addr in (("pool.payout_address", p.payout_address),
                       ("pool.fee_address", p.fee_address)):
        if addr:
            try:
                validate_address(addr)
            except Exception as exc:
                raise ConfigError(f"{name}: {exc}") from None


def validate_useful(config: PoolConfig) -> None:
    """The ``[useful]`` section: UsefulConfig's rules, the chunk size, the tokens."""
    u = config.useful
    try:
        u.useful_config().validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if u.chunk_max < CHUNK_SIZE:
        raise ConfigError(f"useful.chunk_max must be at least {CHUNK_SIZE} (the chunk every "
                          f"worker may use), got {u.chunk_max}")
    if (config.http.enabled and u.usable(config.stratum.max_frame_size) is None
            and not u.tokens and not _is_loopback_host(config.http.host)):
        raise ConfigError(
            f"http.host = {config.http.host!r} is not a loopback address and [useful.tokens] "
            "is empty: the work API would take anyone's work; set [useful.tokens], bind "
            "http.host to 127.0.0.1, or set useful.enabled = false")
    for token, customer in u.tokens.items():
        if not isinstance(customer, str) or not customer or len(token) < 8:
            raise ConfigError("[useful.tokens] entries are TOKEN = \"customer name\", tokens "
                              f"of at least 8 characters; got {token[:4]!r}… = {customer!r:.40}")


def _is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def node_config(config: PoolConfig) -> NodeConfig:
    """The embedded node's settings from ``[chain.node]`` (its defaults for what is unset)."""
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = set(config.chain.node) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [chain.node]: {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(known))})")
    try:
        return NodeConfig(**config.chain.node)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[chain.node] {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if value < 1e9 else f"{value:.0e}".replace("e+", "e")
    if isinstance(value, int):
        return f"{value:_}" if value >= 100_000 else str(value)
    return str(value)


def default_config_text() -> str:
    """A complete, commented TOML file with every key at its default value."""
    config = PoolConfig()
    lines = ["# matmine pool configuration. Every key is optional; shown are the defaults.",
             "# CLI flags (matmine-pool serve --help) override what is set here.", ""]
    for section, helps in HELP.items():
        obj = getattr(config, section)
        lines.append(f"[{section}]")
        tables = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, dict):
                tables.append(f.name)
                continue
            lines.append(f"# {helps[f.name]}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        for name in tables:
            lines.append("")
            lines.append(f"# {helps[name]}")
            lines.append(f"[{section}.{name}]")
            if (section, name) == ("useful", "tokens"):
                lines.append('# "token-of-at-least-8-chars" = "customer name"')
            if (section, name) == ("chain", "node"):
                lines.append("# (uncomment to change; shown are the node's defaults)")
                for f in dataclasses.fields(NodeConfig):
                    lines.append(f"# {f.name} = {_toml_value(getattr(NodeConfig(), f.name))}")
        lines.append("")
    return "\n".join(lines)
