"""The sections of the pool's configuration: one dataclass per TOML table, each field with
its default and help text (:func:`toolkit.settings.setting`); ``pool.config`` puts them
together and loads them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pool.chain.embedded import NodeConfig
from pool.useful import UsefulConfig
from pool.vardiff import VardiffConfig
from protocol.work_messages import CHUNK_SIZE
from protocol.workload import Shape
from toolkit.settings import (
    setting,
    toml_value,
)

WORK_PROFILES: dict[str, Shape] = {
    # 2048³ with r = 128: the BLAS miner reaches about half of the machine's float32
    # matmul there (tests/bench/worker_speed.py); smaller shapes spend more on per-slab work.
    "cpu": Shape(2048, 2048, 2048, 128),
    "gpu": Shape(4096, 4096, 4096, 128),
}


@dataclass
class StratumConfig:
    host: str = setting(
        "127.0.0.1", "address the miner port binds to (0.0.0.0 for every interface)"
    )
    port: int = setting(3333, "plain TCP miner port (0 picks a free port)", min=0, max=65535)
    tls: bool = setting(False, "also serve miners over TLS on tls_port")
    tls_port: int = setting(3334, "TLS miner port, used when tls = true", min=0, max=65535)
    tls_cert: str = setting("", "PEM certificate chain for the TLS port")
    tls_key: str = setting("", "PEM private key for the TLS port")
    public_host: str = setting(
        "", "host miners are told to reconnect to; empty = the address they connected to"
    )
    max_frame_size: int = setting(
        16384, "largest frame a miner may send, bytes; bigger closes the connection", min=256
    )
    idle_timeout: float = setting(
        300.0, "seconds without any message from a miner before it is dropped", positive=True
    )
    handshake_timeout: float = setting(
        10.0, "seconds a new connection has to subscribe and authorize", positive=True
    )
    max_connections: int = setting(10000, "most miner connections at once", min=1)
    max_connections_per_ip: int = setting(64, "most miner connections from one IP address", min=1)
    max_inflight_submits: int = setting(
        16, "submits of one connection checked at the same time", min=1
    )


@dataclass
class HttpConfig:
    enabled: bool = setting(True, "serve /metrics and the JSON API")
    host: str = setting("127.0.0.1", "address the HTTP port binds to")
    port: int = setting(8080, "HTTP port (0 picks a free port)", min=0, max=65535)
    history_interval: float = setting(
        60.0, "seconds between hashrate history samples (1440 kept per series)", positive=True
    )


@dataclass
class PoolSection:
    data_dir: str = setting(
        "data", "directory for the ledger, the embedded node and the pool wallet address"
    )
    payout_address: str = setting(
        "",
        "the pool's coinbase/wallet address; empty = generate once, keep in data_dir/pool_address",
    )
    fee_bps: int = setting(100, "pool fee in basis points (100 = 1%)", min=0, max=10_000)
    fee_address: str = setting(
        "", "address credited with the fee; empty keeps it in the pool wallet"
    )
    tag: str = setting("matmine", "text written into every coinbase")
    instance_id: int = setting(
        0,
        "0..65535, distinct per pool instance sharing a chain (extranonce prefix)",
        min=0,
        max=0xFFFF,
    )
    pplns_factor: float = setting(
        2.0, "PPLNS window N as a multiple of the network difficulty", positive=True
    )
    min_payout: int = setting(100_000_000, "smallest balance paid out, base units", min=1)
    payout_interval: float = setting(600.0, "seconds between payout runs", positive=True)
    unlock_interval: float = setting(
        30.0, "seconds between checks of found blocks for maturity/orphaning", positive=True
    )
    unknown_block_grace: float = setting(
        3600.0,
        "seconds a found block the node does not know (never accepted, wiped "
        "devnet) stays pending before it is orphaned",
        positive=True,
    )
    start_difficulty: float = setting(1.0, "share difficulty of a new connection", positive=True)
    check_threads: int = setting(2, "worker threads checking shares", min=1)
    check_processes: int = setting(
        0,
        "worker processes checking shares (0: in the check_threads threads of the pool "
        "process); each keeps its own row and header caches",
        min=0,
        max=256,
    )
    log_level: str = setting("info", "debug, info, warning or error")


_VARDIFF = VardiffConfig()  # the vardiff module's defaults, except the pool's floor


@dataclass
class VardiffSection:
    """``[vardiff]``: on/off plus every :class:`~pool.vardiff.VardiffConfig` key."""

    enabled: bool = setting(
        True, "adjust each connection's difficulty toward target_seconds per share"
    )
    target_seconds: float = setting(
        _VARDIFF.target_seconds, "wanted seconds between shares of one connection", positive=True
    )
    retarget_shares: int = setting(
        _VARDIFF.retarget_shares, "review the difficulty after this many shares"
    )
    retarget_seconds: float = setting(
        _VARDIFF.retarget_seconds,
        "...or after this many seconds, whichever comes first",
        positive=True,
    )
    variance: float = setting(
        _VARDIFF.variance, "tolerated relative deviation from target_seconds before a change"
    )
    max_step: float = setting(_VARDIFF.max_step, "largest factor of one difficulty change")
    min_difficulty: float = setting(0.001, "lowest share difficulty", positive=True)
    max_difficulty: float = setting(_VARDIFF.max_difficulty, "highest share difficulty")
    idle_seconds: float = setting(
        _VARDIFF.idle_seconds, "a connection silent this long gets a lower difficulty"
    )
    window_shares: int = setting(
        _VARDIFF.window_shares, "recent shares used for the share-rate estimate"
    )
    confidence: float = setting(
        _VARDIFF.confidence, "also ignore deviations within this many standard deviations of noise"
    )

    def vardiff_config(self) -> VardiffConfig:
        """The section as the vardiff module's own config (its rules checked)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(VardiffConfig)}
        values["window_shares"] = max(self.window_shares, self.retarget_shares)
        return VardiffConfig(**values)


@dataclass
class WorkSection:
    profile: str = setting(
        "cpu",
        'job shape preset: "cpu" (2048x2048x2048, r=128) or "gpu" (4096-sized)',
        choices=tuple(WORK_PROFILES),
    )
    m: int = setting(0, "rows of A (0 = from profile), multiple of 16")
    n: int = setting(0, "rows of Bᵀ (0 = from profile), multiple of 16")
    k: int = setting(0, "inner dimension (0 = from profile), multiple of r, >= 4r")
    r: int = setting(0, "slab width (0 = from profile): 32, 64, 128, 256 or 512")
    job_refresh_seconds: float = setting(
        30.0, "seconds between new (non-clean) jobs on the same block", positive=True
    )
    job_expiry_seconds: float = setting(
        120.0, "seconds a superseded job still accepts shares", positive=True
    )


_NODE_EXAMPLE = (
    "# (uncomment to change; shown are the node's defaults)",
    *(
        f"# {f.name} = {toml_value(getattr(NodeConfig(), f.name))}"
        for f in dataclasses.fields(NodeConfig)
    ),
)


@dataclass
class ChainSection:
    kind: str = setting(
        "embedded",
        '"embedded" (devnet node in this process) or "rpc" (matmine-node serve)',
        choices=("embedded", "rpc"),
    )
    rpc_host: str = setting("127.0.0.1", "node RPC host when kind = rpc")
    rpc_port: int = setting(18444, "node RPC port when kind = rpc", min=0, max=65535)
    poll_interval: float = setting(1.0, "seconds between checks of the chain tip", positive=True)
    resubmit_interval: float = setting(
        5.0,
        "seconds between tries of found blocks whose submission the node did not answer",
        positive=True,
    )
    submit_timeout: float = setting(
        10.0,
        "seconds a found block's first submission may wait for the node; then the share is "
        "answered and the block left to the resubmitter",
        positive=True,
    )
    rpc_timeout: float = setting(
        30.0, "seconds one node RPC may take (kind = rpc) before it is retried", positive=True
    )
    node: dict[str, Any] = setting(
        {}, "settings of the embedded node (table, passed to its config)", example=_NODE_EXAMPLE
    )


@dataclass
class LedgerSection:
    kind: str = setting(
        "sqlite",
        '"sqlite" (a file) or "postgres" (needs the postgres extra)',
        choices=("sqlite", "postgres"),
    )
    path: str = setting("", "SQLite ledger file; empty = data_dir/pool.sqlite")
    url: str = setting("", "PostgreSQL URL (postgresql://user:pass@host/db) when kind = postgres")
    batch_max_shares: int = setting(256, "most shares committed in one transaction", min=1)
    batch_interval_ms: float = setting(
        5.0, "longest wait before a batch of shares is committed", positive=True
    )
    max_pending_shares: int = setting(
        10000, "shares waiting for a commit before submits wait", min=1
    )
    connect_timeout: float = setting(
        10.0, "PostgreSQL: seconds to wait for a connection", positive=True
    )
    statement_timeout: float = setting(
        30.0, "PostgreSQL: seconds one statement may run on the server", positive=True
    )
    call_timeout: float = setting(
        60.0,
        "PostgreSQL: seconds one ledger call may take before "
        "the pool gives up on it (a hung server)",
        positive=True,
    )
    retry_interval: float = setting(
        2.0,
        "seconds between checks of an unavailable ledger (submits are answered 20 meanwhile)",
        positive=True,
    )


@dataclass
class LimitsSection:
    messages_per_second: float = setting(
        50.0, "sustained messages per second from one connection", positive=True
    )
    message_burst: int = setting(200, "messages one connection may send in a burst", min=1)
    invalid_window: int = setting(50, "recent shares judged per connection", min=1)
    invalid_min_shares: int = setting(20, "shares seen before a connection is judged")
    invalid_ratio: float = setting(
        0.5,
        "share of invalid submits that starts the escalation (resend work, reconnect, drop, ban)",
    )
    ban_seconds: float = setting(600.0, "how long an IP stays banned", positive=True)
    max_banned_ips: int = setting(10000, "most IP addresses remembered as banned", min=1)
    max_jobs_per_session: int = setting(16, "jobs remembered per connection", min=1)
    max_shares_per_job: int = setting(
        10000, "shares remembered per job for duplicate checks", min=1
    )
    checks_per_ip_per_second: float = setting(
        100.0,
        "sustained full share checks per second for one IP address (beyond it, "
        "submits are answered 27, which never counts against a miner)",
        positive=True,
    )
    check_burst_per_ip: int = setting(
        500, "full share checks one IP address may have in a burst", min=1
    )


@dataclass
class RetentionSection:
    interval: float = setting(
        600.0, "seconds between retention runs (share pruning)", positive=True
    )
    share_history_seconds: float = setting(
        172800.0,
        "shares kept at least this long, beyond what any PPLNS window of a block "
        "not yet credited still needs",
    )
    block_grace_seconds: float = setting(
        600.0,
        "the window of a block this old is kept too (a block found but not yet in the ledger)",
    )
    useful_history_seconds: float = setting(
        604800.0,
        "customers' finished work items (and their results) are kept this long",
        positive=True,
    )
    blob_grace_seconds: float = setting(
        3600.0,
        "blobs stored this recently are never collected (an upload whose item is not recorded yet)",
        positive=True,
    )


_USEFUL = UsefulConfig()  # the useful-work modules' defaults


@dataclass
class UsefulSection(UsefulConfig):
    """``[useful]``: every :class:`~pool.useful.UsefulConfig` key, plus the API tokens."""

    enabled: bool = setting(
        _USEFUL.enabled,
        "lease customers' matrix products (work API) to "
        'miners that announce "useful-1"; synthetic work when none is '
        "queued",
    )
    unit_m: int = setting(_USEFUL.unit_m, "most output rows per work unit (multiple of 16)")
    unit_n: int = setting(_USEFUL.unit_n, "most output columns per work unit (multiple of 16)")
    r: int = setting(_USEFUL.r, "preferred slab width of unit jobs (small k gets a smaller r)")
    chunk_max: int = setting(
        _USEFUL.chunk_max,
        "largest work.get_blob / work.result chunk, "
        f"bytes (>= {CHUNK_SIZE}); useful work stays off unless "
        "stratum.max_frame_size >= chunk_max + 512",
    )
    lease_seconds: float = setting(
        _USEFUL.lease_seconds, "seconds a miner has to return a unit's product"
    )
    max_attempts: int = setting(
        _USEFUL.max_attempts, "wrong results before a unit (and its work item) fails"
    )
    freivalds_rounds: int = setting(
        _USEFUL.freivalds_rounds, "rounds of Freivalds' check; each false-accepts with p <= 2^-16"
    )
    max_dim: int = setting(_USEFUL.max_dim, "largest m or n of a submitted product")
    max_k: int = setting(_USEFUL.max_k, "largest k of a submitted product (after padding)")
    max_upload_bytes: int = setting(_USEFUL.max_upload_bytes, "largest A plus B upload, bytes")
    max_active_items: int = setting(_USEFUL.max_active_items, "unfinished work items per customer")
    max_queued_bytes: int = setting(
        _USEFUL.max_queued_bytes, "operand bytes of one customer's unfinished items"
    )
    max_inflight_upload_bytes: int = setting(
        _USEFUL.max_inflight_upload_bytes,
        "bytes of work API uploads received at once, all "
        "customers together (a body without Content-Length counts as max_upload_bytes); "
        "beyond: 503",
    )
    unit_b_max_bytes: int = setting(
        _USEFUL.unit_b_max_bytes,
        "units are cut along m only, each with the whole B (one Bᵀ blob a worker keeps), "
        "while B's padded blob is at most this many bytes; 0 = always cut along m and n",
        min=0,
    )
    unit_seconds: float = setting(
        _USEFUL.unit_seconds,
        "a unit is cut at lease time to take about this long on its session "
        "(from the session's measured hashrate)",
        positive=True,
    )
    unit_min_rows: int = setting(
        _USEFUL.unit_min_rows, "fewest rows of A a unit is cut to (multiple of 16)", min=16
    )
    unit_start_rows: int = setting(
        _USEFUL.unit_start_rows,
        "rows of A of a unit for a session without a measured hashrate (multiple of 16; "
        "at most unit_m)",
        min=16,
    )
    unit_tail_rows: int = setting(
        _USEFUL.unit_tail_rows,
        "the last queued unit (no other queued) is cut to half its rows, not below this "
        "(multiple of 16; 0 = never), so the queue drains in smaller units and the last "
        "result uploads quickly",
        min=0,
    )
    affinity_seconds: float = setting(
        _USEFUL.affinity_seconds,
        "seconds a queued unit waits for a connected session that already holds its "
        "operand blobs before any capable session may lease it",
        min=0,
    )
    max_operands: int = setting(_USEFUL.max_operands, "registered operands per customer", min=1)
    prefetch: bool = setting(
        _USEFUL.prefetch,
        "while a session mines over the data plane, reserve it one more queued unit and "
        "name it in its jobs (SPEC §12.7 next) so it fetches the operands meanwhile",
    )
    data_plane: bool = setting(
        True,
        "name the HTTP data plane in blob jobs (SPEC §12.7: operands and results over the "
        "HTTP port); false = over the stratum connection only",
    )
    data_url: str = setting(
        "",
        "public URL base of the data plane (e.g. a reverse proxy or CDN in front of the "
        "pool); empty = http://<stratum.public_host or http.host>:<http.port>/data",
    )
    tokens: dict[str, Any] = setting(
        {},
        'work API tokens: token = "customer name"; none = loopback clients only',
        example=('# "token-of-at-least-8-chars" = "customer name"',),
    )

    def usable(self, max_frame_size: int) -> str | None:
        """Why useful work cannot run with this frame size (None: it can)."""
        if not self.enabled:
            return "useful.enabled = false"
        if max_frame_size < self.chunk_max + 512:
            return (
                f"stratum.max_frame_size ({max_frame_size}) is below useful.chunk_max + "
                f"512 = {self.chunk_max + 512}"
            )
        return None

    def useful_config(self) -> UsefulConfig:
        """The section without its tokens, as the useful-work modules take it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(UsefulConfig)}
        return UsefulConfig(**values)
