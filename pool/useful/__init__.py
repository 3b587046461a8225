"""Useful work: customers' int8 matrix products, mined as blob workloads and delivered.

- :mod:`pool.useful.blobstore` — content-addressed operand/result blobs on disk;
- :mod:`pool.useful.queue` — work items, units, leases and held shares in SQLite;
- :mod:`pool.useful.results` — result uploads, verdicts, delivery;
- :mod:`pool.useful.judge` — a result spooled, hashed and judged (Freivalds) as it streams in;
- :mod:`pool.useful.unitwork` — a leased unit as a job's workload (share checks, blocks);
- :mod:`pool.useful.api` — the HTTP work API (starlette routes);
- :mod:`pool.useful.data_api` — the HTTP data plane of leases (blob ``GET`` with
  ``Range``, resumable result ``PUT``), authorized by :mod:`pool.useful.tokens`;
- :mod:`pool.useful.cli` — ``matmine-pool work submit|status|result``;
  :mod:`pool.useful.cli_check` — its checks before upload and its progress line.

:class:`UsefulConfig` holds every setting with its default (the pool's ``[useful]``
section); :class:`UsefulMetrics` registers the useful-work metrics on a registry passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from pool.metrics import WorkOfMiners
from protocol.target import MACS_PER_DIFF1
from protocol.useful import DEFAULT_UNIT_M, DEFAULT_UNIT_N
from protocol.work_messages import CHUNK_SIZE, MAX_CHUNK
from protocol.workload import ALLOWED_R, MAX_K, TILE

UNIT_STATES = ("queued", "running", "done", "failed")
CHECK_OUTCOMES = ("pass", "fail", "malformed")
DATA_PATHS = ("http", "stratum")
DATA_DIRECTIONS = ("in", "out")  # in: results from workers; out: operands to workers


@dataclass
class UsefulConfig:
    """Settings of useful work; every key has a default."""

    enabled: bool = True
    unit_m: int = DEFAULT_UNIT_M  # most output rows of A per unit (multiple of 16)
    unit_n: int = DEFAULT_UNIT_N  # most output columns of B per unit (multiple of 16)
    r: int = 64  # preferred slab width; small k gets a smaller r
    chunk_max: int = CHUNK_SIZE  # largest work.get_blob / work.result chunk, bytes
    lease_seconds: float = 600.0  # a unit's lease deadline after it is handed out
    max_attempts: int = 5  # wrong results before a unit (and its item) fails
    freivalds_rounds: int = 3  # each round false-accepts with p ≤ 2^-16
    max_dim: int = 16384  # largest m or n of a product
    max_k: int = MAX_K  # largest k of a product (after padding)
    max_upload_bytes: int = 256 << 20  # A plus B bytes of one product
    max_active_items: int = 8  # queued or running items per customer
    max_queued_bytes: int = 1 << 30  # operand bytes of a customer's unfinished items
    max_inflight_upload_bytes: int = 1 << 30  # uploads being received at once (503 beyond)
    unit_b_max_bytes: int = 16 << 20  # units keep the whole B while its padded Bᵀ fits
    unit_seconds: float = 10.0  # a unit is cut to take about this long on its session
    unit_min_rows: int = 16  # fewest rows of A a unit is cut to (multiple of 16)
    unit_start_rows: int = 256  # rows of a unit for a session whose rate is not measured
    unit_tail_rows: int = 128  # the last queued unit is halved down to this many rows (0: never)
    affinity_seconds: float = 5.0  # a unit waits this long for a session holding its blobs
    max_operands: int = 16  # registered operands per customer
    prefetch: bool = True  # reserve a data-plane session's next unit, named in its jobs

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        for name in ("unit_m", "unit_n"):
            value = getattr(self, name)
            if value < TILE or value % TILE:
                raise ValueError(f"useful.{name} must be a positive multiple of 16, got {value}")
        for name in ("unit_min_rows", "unit_start_rows"):
            value = getattr(self, name)
            if value < TILE or value % TILE:
                raise ValueError(f"useful.{name} must be a positive multiple of 16, got {value}")
        if self.unit_tail_rows < 0 or self.unit_tail_rows % TILE:
            raise ValueError(
                f"useful.unit_tail_rows must be 0 or a multiple of 16, got {self.unit_tail_rows}"
            )
        if not self.unit_seconds > 0:
            raise ValueError("useful.unit_seconds must be positive")
        if self.affinity_seconds < 0 or self.unit_b_max_bytes < 0:
            raise ValueError("useful.affinity_seconds and useful.unit_b_max_bytes must be >= 0")
        if self.r not in ALLOWED_R:
            raise ValueError(f"useful.r must be 32, 64, 128, 256 or 512, got {self.r}")
        if not 256 <= self.chunk_max <= MAX_CHUNK:
            raise ValueError(f"useful.chunk_max must be in 256..1048576, got {self.chunk_max}")
        if not self.lease_seconds > 0:
            raise ValueError("useful.lease_seconds must be positive")
        for name in (
            "max_attempts",
            "freivalds_rounds",
            "max_dim",
            "max_k",
            "max_upload_bytes",
            "max_active_items",
            "max_queued_bytes",
            "max_inflight_upload_bytes",
            "max_operands",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"useful.{name} must be at least 1")

    @property
    def row_bounds(self) -> tuple[int, int, int]:
        """Rows a unit is cut to: (fewest, for an unmeasured session, most = ``unit_m``)."""
        hi = self.unit_m
        lo = min(self.unit_min_rows, hi)
        return lo, max(lo, min(self.unit_start_rows, hi)), hi

    @property
    def false_accept_log2(self) -> int:
        """Freivalds' false-accept probability is at most 2^-this (x drawn from [0, 2^16))."""
        return 16 * self.freivalds_rounds


def rounds_for(false_accept_log2: int) -> int:
    """Freivalds rounds for a false-accept probability below ``2^-false_accept_log2``."""
    return max(1, math.ceil(false_accept_log2 / 16))


class UsefulMetrics:
    """The pool's useful-work metrics, registered on the ``registry`` passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.useful_macs = Counter(
            "matmine_pool_useful_macs",
            "MACs of verified useful products (unpadded)",
            registry=registry,
        )
        self.work_units = Gauge(
            "matmine_pool_work_units",
            "Useful work units by state",
            ["state"],
            registry=registry,
        )
        self.result_checks = Counter(
            "matmine_pool_result_checks",
            "Checks of returned unit results by outcome",
            ["outcome"],
            registry=registry,
        )
        self.data_bytes_total = Counter(
            "matmine_pool_data_bytes",
            "Useful-work bytes moved: operands out, results in, by path (http or stratum)",
            ["direction", "path"],
            registry=registry,
        )
        for direction in DATA_DIRECTIONS:
            for path in DATA_PATHS:
                self.data_bytes_total.labels(direction, path)
        self.mined_macs = 0.0
        """Expected MACs (difficulty × 2³²) of the shares held on leased units since start."""
        self.verified_macs = 0
        """MACs of verified useful products since start (what ``useful_macs`` counts)."""
        self.miners: WorkOfMiners | None = None
        """Each worker's useful work, when the pool tracks its workers' work."""
        for state in UNIT_STATES:
            self.work_units.labels(state)
        for outcome in CHECK_OUTCOMES:
            self.result_checks.labels(outcome)

    def set_unit_counts(self, counts: dict[str, int]) -> None:
        for state in UNIT_STATES:
            self.work_units.labels(state).set(counts.get(state, 0))

    def data_bytes(self, direction: str, path: str, nbytes: int) -> None:
        """Count ``nbytes`` of useful-work data moved (``matmine_pool_data_bytes_total``)."""
        if nbytes:
            self.data_bytes_total.labels(direction, path).inc(nbytes)

    def share_held(self, address: str, worker: str, difficulty: float) -> None:
        """Count a share held on a leased unit: difficulty × 2³² expected MACs."""
        macs = difficulty * MACS_PER_DIFF1
        self.mined_macs += macs
        if self.miners is not None:
            self.miners.add(address, worker, "useful_mined_macs", macs)

    def result_checked(
        self, outcome: str, macs: int = 0, worker: tuple[str, str] | None = None
    ) -> None:
        """Count a judged result; a passing one's ``macs`` (its product's) go to the pool's
        verified useful work and to ``worker`` (address, name) when known."""
        self.result_checks.labels(outcome).inc()
        if outcome == "pass" and macs:
            self.useful_macs.inc(macs)
            self.verified_macs += macs
            if worker is not None and self.miners is not None:
                self.miners.add(*worker, "useful_macs", macs)
