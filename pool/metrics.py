"""The pool's Prometheus metrics, registered in a registry passed in (no global state).

Labels stay low-cardinality: share results, block states and vardiff
directions only, never per-worker or per-address labels. Every label value is created at
start, so a scrape shows zeros rather than missing series and ``rate()`` works from the
first sample.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pool.health import DEPENDENCIES
from pool.models.receipt import AUDIT_OUTCOMES, UnitAudit
from protocol.errors import ErrorCode
from protocol.target import MACS_PER_DIFF1

SHARE_RESULTS = (
    "accepted",
    "stale",
    "duplicate",
    "low_difficulty",
    "invalid",
    "malformed",
    "rate_limited",
    "pool_error",
)
# found: accepted by the node; rejected: the node said no (ledger state "rejected");
# submit_failed: the first submission went unanswered (the block is kept "submitting" and
# resubmitted: it ends found or rejected); confirmed, orphaned: as the ledger's states.
BLOCK_STATUSES = ("found", "rejected", "submit_failed", "confirmed", "orphaned")
VARDIFF_DIRECTIONS = ("up", "down")

_RESULT_BY_CODE: dict[int, str] = {
    ErrorCode.STALE: "stale",
    ErrorCode.DUPLICATE: "duplicate",
    ErrorCode.LOW_DIFFICULTY: "low_difficulty",
    ErrorCode.MALFORMED: "malformed",
    ErrorCode.RATE_LIMITED: "rate_limited",
}

# Share checks take microseconds to a millisecond (one ticket) plus queueing.
SHARE_CHECK_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# A model unit's audit: a few challenged rows recomputed, microseconds to seconds.
AUDIT_BUCKETS = (1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Durable SQLite commits: sub-millisecond (WAL, NORMAL) to tens of ms (FULL fsync).
DB_WRITE_BUCKETS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


def result_for_error_code(code: int) -> str:
    """The ``shares_total{result}`` label of a share rejected with wire error ``code``.

    STALE, DUPLICATE, LOW_DIFFICULTY, MALFORMED and RATE_LIMITED have their own label;
    every other code (OTHER, UNAUTHORIZED, NOT_SUBSCRIBED, BAD_TIME) → invalid, except a
    refusal caused by the pool's own state (a :class:`PoolFaultCode`, e.g. a 20 for a share
    the ledger could not store) → pool_error: never the miner's fault (SPEC §12.9).
    """
    if isinstance(code, PoolFaultCode):
        return "pool_error"
    return _RESULT_BY_CODE.get(code, "invalid")


class PoolFaultCode(int):
    """A wire error code (an ``int``, sent as such) of a refusal caused by the pool's own
    state: the shares metric counts it under ``pool_error``, apart from miners' faults."""


MAX_TRACKED_WORKERS = 1 << 16
"""Workers whose work :class:`WorkOfMiners` keeps (the least recently active dropped)."""
WORK_FIELDS = ("accepted_work_macs", "useful_mined_macs", "useful_macs")


class WorkOfMiners:
    """Each worker's work since start, for ``/api/miners/ADDRESS``: the expected MACs of
    its accepted shares (``accepted_work_macs``, difficulty × 2³² each), of those the ones
    on useful units (``useful_mined_macs``, held shares included), and the MACs of the
    useful products it delivered that verified (``useful_macs``; a unit is its worker's
    through the shares held on it). At most :data:`MAX_TRACKED_WORKERS` workers."""

    def __init__(self, limit: int = MAX_TRACKED_WORKERS) -> None:
        self.limit = limit
        self._work: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()

    def add(self, address: str, worker: str, field: str, macs: float) -> None:
        """Count ``macs`` of ``field`` (one of :data:`WORK_FIELDS`) for the worker."""
        key = (address, worker)
        row = self._work.get(key)
        if row is None:
            row = self._work[key] = dict.fromkeys(WORK_FIELDS, 0.0)
            while len(self._work) > self.limit:
                self._work.popitem(last=False)
        else:
            self._work.move_to_end(key)
        row[field] += macs

    def of(self, address: str) -> dict[str, dict[str, float | None]]:
        """Worker name → its work and ``useful_fraction`` (verified useful MACs over the
        work its accepted shares prove; None before any)."""
        return {
            worker: {**row, "useful_fraction": useful_fraction(row)}
            for (addr, worker), row in self._work.items()
            if addr == address
        }


def useful_fraction(work: dict[str, float]) -> float | None:
    """Verified useful MACs over the MACs proven by accepted shares (None before any)."""
    accepted = work.get("accepted_work_macs", 0.0)
    return work.get("useful_macs", 0.0) / accepted if accepted else None


class MinedMacs(Collector):
    """``matmine_pool_mined_macs_total{kind}``: the expected MACs of accepted shares
    (difficulty × 2³² each), ``useful`` (on leased units) or ``synthetic`` (the rest)."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "matmine_pool_mined_macs",
            "Expected MACs of accepted shares (difficulty × 2³² each), by kind of work",
            labels=["kind"],
        )
        useful = self.metrics.useful_mined_macs()
        family.add_metric(["useful"], useful)
        family.add_metric(["synthetic"], max(0.0, self.metrics.accepted_work_macs - useful))
        yield family


class PoolMetrics:
    """All pool metrics, registered in ``registry``. Attributes are prometheus_client objects."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Gauge(
            "matmine_pool_connections", "Open miner connections.", registry=registry
        )
        self.workers = Gauge(
            "matmine_pool_workers", "Authorized workers (address.worker) online.", registry=registry
        )
        self.shares = Counter(
            "matmine_pool_shares",
            "Submitted shares by result: accepted, stale, duplicate, low_difficulty, invalid,"
            " malformed, rate_limited, pool_error (refused because of the pool's own state,"
            " e.g. its ledger could not store the share).",
            ["result"],
            registry=registry,
        )
        self.accepted_work = Counter(
            "matmine_pool_accepted_work_macs",
            "MACs proven by accepted shares (difficulty × 2³² each), useful work's included.",
            registry=registry,
        )
        self.accepted_work_macs = 0.0
        """What ``accepted_work`` counts, since start."""
        self.miners = WorkOfMiners()
        """Each worker's accepted and useful work since start."""
        self.useful_mined_macs: Callable[[], float] = lambda: 0.0
        """Of ``accepted_work_macs``, the MACs of shares mined on useful units (set by the
        pool when it has useful work)."""
        registry.register(MinedMacs(self))
        self.share_check_seconds = Histogram(
            "matmine_pool_share_check_seconds",
            "Time to judge one submitted share (ticket verification included).",
            buckets=SHARE_CHECK_BUCKETS,
            registry=registry,
        )
        self.hashrate = Gauge(
            "matmine_pool_hashrate_macs_per_second",
            "Pool hashrate in MAC/s proven by accepted shares (5-minute EWMA).",
            registry=registry,
        )
        self.network_difficulty = Gauge(
            "matmine_pool_network_difficulty",
            "Difficulty of the current network target.",
            registry=registry,
        )
        self.block_height = Gauge(
            "matmine_pool_block_height", "Height of the block being mined.", registry=registry
        )
        self.blocks = Counter(
            "matmine_pool_blocks",
            "Blocks by outcome: found (accepted by the node), rejected (the node said no, or the"
            " chain moved past it), submit_failed (no answer to its first submission; kept and"
            " resubmitted), confirmed, orphaned.",
            ["status"],
            registry=registry,
        )
        self.block_submissions_pending = Gauge(
            "matmine_pool_block_submissions_pending",
            "Found blocks whose submission the node has not answered yet (kept, resubmitted).",
            registry=registry,
        )
        self.template_age = Gauge(
            "matmine_pool_template_age_seconds",
            "Seconds since the pool last got a block template from the chain.",
            registry=registry,
        )
        self.vardiff_changes = Counter(
            "matmine_pool_vardiff_changes",
            "Vardiff share-difficulty changes by direction.",
            ["direction"],
            registry=registry,
        )
        self.paid = Counter(
            "matmine_pool_paid_base_units",
            "Base units paid to miners in completed payment batches.",
            registry=registry,
        )
        self.pending_payout = Gauge(
            "matmine_pool_pending_payout_base_units",
            "Base units owed to miners and not yet on chain (balances plus pending batches).",
            registry=registry,
        )
        self.payout_lag_seconds = Gauge(
            "matmine_pool_payout_lag_seconds",
            "Age of the oldest payable balance not yet paid (0 when none).",
            registry=registry,
        )
        self.db_write_seconds = Histogram(
            "matmine_pool_db_write_seconds",
            "Time of one durable ledger write (a share batch commit, a credit, a payment).",
            buckets=DB_WRITE_BUCKETS,
            registry=registry,
        )
        self.bans = Counter(
            "matmine_pool_bans", "Connections banned for misbehaviour.", registry=registry
        )
        self.evictions = Counter(
            "matmine_pool_connection_evictions",
            "Connections closed to make room for a new one (they had not proven work).",
            registry=registry,
        )
        self.ban_decisions = Counter(
            "matmine_pool_ban_decisions",
            "IP ban decisions at a session's second or later drop within ban_seconds: banned,"
            " or spared because the IP's honest sessions outweigh its drops.",
            ["decision"],
            registry=registry,
        )
        self.retention_last_run = Gauge(
            "matmine_pool_retention_last_run_timestamp_seconds",
            "Unix time of the last retention run that succeeded (0: none yet).",
            registry=registry,
        )
        self.retention_interval = Gauge(
            "matmine_pool_retention_interval_seconds",
            "Configured seconds between retention runs.",
            registry=registry,
        )
        self.share_rows = Gauge(
            "matmine_pool_share_rows", "Rows in the ledger's share table.", registry=registry
        )
        self.blob_bytes = Gauge(
            "matmine_pool_blob_bytes", "Bytes in the useful-work blob store.", registry=registry
        )
        self.work_items = Gauge(
            "matmine_pool_work_item_rows",
            "Work items (customers' products) remembered.",
            registry=registry,
        )
        self.database_bytes = Gauge(
            "matmine_pool_database_bytes",
            "Size on disk of each SQLite database of the pool (its WAL included).",
            ["database"],
            registry=registry,
        )
        self.dependency_up = Gauge(
            "matmine_pool_dependency_up",
            "1 while the dependency (ledger, chain) answers, 0 while it is down.",
            ["dependency"],
            registry=registry,
        )
        for dependency in DEPENDENCIES:
            self.dependency_up.labels(dependency=dependency).set(1)
        # Each result's child, bound once: a share is counted without a label lookup.
        self._shares_by_result = {r: self.shares.labels(result=r) for r in SHARE_RESULTS}
        for status in BLOCK_STATUSES:
            self.blocks.labels(status=status)
        for direction in VARDIFF_DIRECTIONS:
            self.vardiff_changes.labels(direction=direction)

    def share(self, result: str) -> None:
        """Count one share with ``result`` (one of :data:`SHARE_RESULTS`)."""
        child = self._shares_by_result.get(result)
        if child is None:
            raise ValueError(f"unknown share result {result!r}")
        child.inc()

    def share_accepted_work(
        self, difficulty: float, address: str | None = None, worker: str | None = None
    ) -> None:
        """Count the work an accepted share of ``difficulty`` proves (difficulty × 2³² MACs),
        for the pool and, when named, for its worker."""
        macs = difficulty * MACS_PER_DIFF1
        self.accepted_work.inc(macs)
        self.accepted_work_macs += macs
        if address is not None and worker is not None:
            self.miners.add(address, worker, "accepted_work_macs", macs)

    def share_rejected(self, code: int) -> None:
        """Count one share rejected with wire error ``code``."""
        self._shares_by_result[result_for_error_code(code)].inc()

    def vardiff_changed(self, old: float, new: float) -> None:
        """Count a vardiff change from ``old`` to ``new`` (equal values count nothing)."""
        if new != old:
            self.vardiff_changes.labels(direction="up" if new > old else "down").inc()

    def block(self, status: str) -> None:
        """Count a block reaching ``status`` (one of :data:`BLOCK_STATUSES`)."""
        if status not in BLOCK_STATUSES:
            raise ValueError(f"unknown block status {status!r}")
        self.blocks.labels(status=status).inc()


class ModelMetrics:
    """Model jobs' audits (SPEC §12.12.6), registered in ``registry``: each judged unit by
    outcome, the challenges drawn, the MACs the pool spent checking them and the time; the
    same totals since start for ``/api/pool`` (:meth:`stats`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.audits = Counter(
            "matmine_pool_model_audits",
            "Judged deliveries of model units by outcome: passed (shares credited), failed (a"
            " wrong answer, or delivered roots the held shares contradict), unanswered (no"
            " answer by the audit's deadline).",
            ["outcome"],
            registry=registry,
        )
        self.challenges = Counter(
            "matmine_pool_model_audit_challenges",
            "Challenges (layer, row) drawn by the model units' audits.",
            registry=registry,
        )
        self.cost = Counter(
            "matmine_pool_model_audit_macs",
            "MACs the pool spent recomputing challenged rows of model units.",
            registry=registry,
        )
        self.seconds = Histogram(
            "matmine_pool_model_audit_seconds",
            "Time to check one model unit's audit answers.",
            buckets=AUDIT_BUCKETS,
            registry=registry,
        )
        self.totals = dict.fromkeys(AUDIT_OUTCOMES, 0)
        self.challenges_drawn = 0
        self.cost_macs = 0
        self.audited_macs = 0  # useful MACs of the units whose answers were checked
        self.audit_seconds = 0.0
        for outcome in AUDIT_OUTCOMES:
            self.audits.labels(outcome=outcome)

    def audited(self, lease: object, audit: UnitAudit) -> None:
        """Count one judgment (a :class:`~pool.models.receipt.ReceiptBook` listener)."""
        self.audits.labels(outcome=audit.outcome).inc()
        self.totals[audit.outcome] += 1
        self.challenges.inc(audit.challenges)
        self.challenges_drawn += audit.challenges
        if audit.outcome != "unanswered":
            self.cost.inc(audit.cost_macs)
            self.seconds.observe(audit.seconds)
            self.audit_seconds += audit.seconds
            self.cost_macs += audit.cost_macs
            self.audited_macs += audit.unit_macs

    def stats(self) -> dict[str, object]:
        """The totals since start; ``audit_cost_ppm``: the checks' MACs in parts per
        million of the checked units' MACs (None before any)."""
        ppm = self.cost_macs * 10**6 / self.audited_macs if self.audited_macs else None
        return {
            "audits": dict(self.totals),
            "audit_challenges": self.challenges_drawn,
            "audit_macs": self.cost_macs,
            "audit_cost_ppm": ppm,
            "audit_seconds": self.audit_seconds,
        }


def with_models(
    stats: Callable[[], Awaitable[dict[str, Any]]], models: ModelMetrics | None
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """Useful work's stats for ``/api/pool`` and, with model jobs on, their audits
    (``"models"``)."""

    async def both() -> dict[str, Any]:
        answer = await stats()
        if models is not None:
            answer["models"] = models.stats()
        return answer

    return both
