"""The worker's useful work: a blob job's operands in, its unit's exact product out.

A job whose ``work.source`` is a blob names a unit of a customer's product A·B (SPEC
§12.7). :meth:`UsefulWork.workload` gets both operands through the
:class:`~worker.blobcache.BlobCache`: from disk when cached, else over the lease's HTTP
data plane when the job names one (:mod:`worker.data_client`: ``GET`` with ``Range``
resume), else — or when that fails — over the job's own session with ``work.get_blob``
in chunks of at most ``chunk_max`` bytes. The result goes the same way: ``PUT`` with
resume when the job names a data plane, ``work.result`` chunks otherwise. Each blob is
verified against the job's commitments (size, content hash, entry range, row root)
before a :class:`Workload` is made of it, so no device ever mines an unverified row; a
blob that fails raises :class:`BlobRejected`.

While mining, the miner asks each scan of a blob job for the header's noisy product
``A'·B'`` (the backend's final accumulators, ``scan(..., want_product=True)``) as long as
:meth:`UsefulWork.wants_product` says so, and :meth:`UsefulWork.claim` once per completed
header; the first header of a unit on a session gets ``True`` and the miner hands its
product (from the scan, or from ``backend.product(header)`` for a backend that gives
none) to :meth:`UsefulWork.hand_over`, which queues it for :mod:`worker.delivery`
(denoised in a worker thread, uploaded in the background, one upload at a time, the
verdict booked when it arrives) and returns at once: the miner moves on. A job whose
source names ``next`` (the unit the pool reserved for this session) has those blobs
prefetched in the background once its own operands are in (:mod:`worker.prefetch`), and
the blob cache keeps the current unit's operands pinned, so a Bᵀ shared by the next unit
stays. :meth:`UsefulWork.run` runs the delivery and prefetch tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from protocol.messages import BlobSource
from protocol.work_messages import CHUNK_SIZE
from protocol.workload import Shape, Workload

from .blobcache import BlobCache, BlobRejected, BlobSpec, VerifiedBlob
from .client import Job, PoolClient
from .data_client import DataClient, DataPlane, DataPlaneError
from .delivery import Product, ResultDelivery
from .prefetch import Prefetcher
from .stats import USEFUL_RESULTS, WorkerStats

log = logging.getLogger(__name__)

RESULT_OUTCOMES = USEFUL_RESULTS
"""``verified``: the pool's check passed; ``rejected``: it failed; ``failed``: not delivered."""
MAX_UNITS = 64  # units remembered per session (the oldest is forgotten first)


def is_blob_job(job: Job) -> bool:
    """Does ``job`` carry a blob workload (useful work) rather than a synthetic one?"""
    return isinstance(job.notify.work.source, BlobSource)


@dataclass
class _Unit:
    """What this worker did with one unit on one session."""

    job: Job  # the latest job of this unit (its id goes with the result)
    claimed: bool = False
    outcome: str | None = None


@dataclass
class UsefulWork:
    """Operand fetching and result delivery for blob jobs; one per worker."""

    stats: WorkerStats
    cache_dir: Path
    cache_max_bytes: int
    chunk_max: int = CHUNK_SIZE
    wait_after_product: float = 5.0  # [useful] wait_after_product
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    _cache: BlobCache | None = field(default=None, init=False, repr=False)
    _client: PoolClient | None = field(default=None, init=False, repr=False)
    _units: dict[bytes, _Unit] = field(default_factory=dict, init=False, repr=False)
    data: DataClient = field(init=False, repr=False)
    delivery: ResultDelivery = field(init=False, repr=False)
    prefetcher: Prefetcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_max <= CHUNK_SIZE:
            raise ValueError(f"chunk_max must be in 1..{CHUNK_SIZE}, got {self.chunk_max}")
        self.cache_dir = Path(self.cache_dir)
        self.data = DataClient(self._count_bytes, self._count_sent)
        self.delivery = ResultDelivery(
            self.stats,
            self.data,
            self.chunk_max,
            self.plane,
            self._latest_job_id,
            self._set_outcome,
        )
        self.prefetcher = Prefetcher(lambda: self.cache, self.data, trio.CapacityLimiter(1))

    @property
    def cache(self) -> BlobCache:
        """The blob cache, its directory made on first use (so synthetic-only mining
        leaves no trace on disk)."""
        if self._cache is None:
            self._cache = BlobCache(self.cache_dir, self.cache_max_bytes, self._count_bytes)
        return self._cache

    def _count_bytes(self, n: int) -> None:
        self.stats.blob_bytes += n  # matmine_worker_blob_bytes_total
        self.stats.useful_bytes["in"] += n

    def _count_sent(self, n: int) -> None:
        self.stats.useful_bytes["out"] += n

    # --- operands ------------------------------------------------------------------------

    async def workload(self, job: Job) -> Workload:
        """The job's verified workload, fetched through the cache if need be.

        Raises :class:`BlobRejected` when a blob does not match the job's commitments and
        :class:`RequestFailed` when the pool refuses a request (``code``) or the session
        ends (``code`` None).
        """
        work = job.notify.work
        a_spec, b_spec = BlobSpec.operands(work)
        self.cache.pin(a_spec.blob_id, b_spec.blob_id)
        before, started = self.stats.blob_bytes, trio.current_time()
        a = await self._ensure(job, a_spec)
        b = await self._ensure(job, b_spec)
        fetched = self.stats.blob_bytes - before
        if fetched:
            took = max(trio.current_time() - started, 1e-6)
            log.info(
                "job %s: fetched %.1f MiB of operands for unit %s… in %.2f s (%.1f MB/s)",
                job.job_id,
                fetched / 2**20,
                work.work_root.hex()[:16],
                took,
                fetched / took / 1e6,
            )
        workload = await trio.to_thread.run_sync(
            _make_workload, work.shape, a.matrix, b.matrix, limiter=self.limiter
        )
        if workload.work_root != work.work_root:
            raise BlobRejected("the verified operands do not give the job's work_root")
        self._track(job)
        plane = self.plane(job)
        source = work.source
        if plane is not None and isinstance(source, BlobSource) and source.next is not None:
            self.prefetcher.want(plane, source.next)  # after this unit's own operands
        return workload

    @staticmethod
    def plane(job: Job) -> DataPlane | None:
        """The job's HTTP data plane (SPEC §12.7), or None: the stratum ``work.*`` path."""
        source = job.notify.work.source
        if not isinstance(source, BlobSource) or source.data is None or source.token is None:
            return None
        return DataPlane.of(source.data, source.token, job.client.endpoint.host)

    async def _ensure(self, job: Job, spec: BlobSpec) -> VerifiedBlob:
        """One verified operand: cached, else over HTTP, else (or if that fails) stratum."""
        plane = self.plane(job)
        if plane is not None:
            cached = await trio.to_thread.run_sync(self.cache.load, spec, limiter=self.limiter)
            if cached is None:  # a prefetch may be bringing it; any other waits
                await self.prefetcher.settle(spec.blob_id)
                cached = await trio.to_thread.run_sync(self.cache.load, spec, limiter=self.limiter)
            if cached is not None:
                return cached
            part = self.cache.dir / f".part-{spec.blob_id.hex()}"
            try:
                blob = await self.data.fetch_blob(plane, spec, part)
            except DataPlaneError as exc:
                log.warning("job %s: %s; fetching over the stratum connection", job.job_id, exc)
            else:
                await trio.to_thread.run_sync(self.cache.store, blob, limiter=self.limiter)
                return blob
        return await self.cache.ensure(spec, job.client.get_blob, self.chunk_max, self.limiter)

    # --- results -------------------------------------------------------------------------

    def _track(self, job: Job) -> _Unit:
        if job.client is not self._client:
            self._client = job.client
            self._units.clear()
        unit_id = job.notify.work.work_root
        unit = self._units.get(unit_id)
        if unit is None:
            unit = self._units[unit_id] = _Unit(job)
            while len(self._units) > MAX_UNITS:
                self._units.pop(next(iter(self._units)))
        else:
            unit.job = job
        return unit

    def wants_product(self, job: Job) -> bool:
        """Should the next scan of ``job`` also return its noisy product? True for a blob
        job whose unit has no claimed header on this session yet (does not claim). A scan
        that starts while this is True is useful work; any other is synthetic."""
        if not is_blob_job(job):
            return False
        unit = self._units.get(job.notify.work.work_root)
        return job.client is not self._client or unit is None or not unit.claimed

    def product_taken(self, job: Job) -> bool:
        """Whether this session already took the product of ``job``'s unit (its further
        headers would be mined on a unit whose useful work is done)."""
        return is_blob_job(job) and not self.wants_product(job)

    def claim(self, job: Job) -> bool:
        """True once per unit and session: the miner should hand this header's product over."""
        if not is_blob_job(job):
            return False
        unit = self._track(job)
        if unit.claimed:
            return False
        unit.claimed = True
        return True

    def unclaim(self, job: Job) -> None:
        """The product of a claimed header could not be computed; let another header try."""
        unit = self._units.get(job.notify.work.work_root)
        if unit is not None and job.client is self._client and unit.outcome is None:
            unit.claimed = False

    def outcome(self, job: Job) -> str | None:
        """``verified``/``rejected``/``failed`` once the job's unit has been delivered."""
        unit = self._units.get(job.notify.work.work_root)
        return unit.outcome if unit is not None and job.client is self._client else None

    def hand_over(self, job: Job, workload: Workload, header: bytes, noisy: np.ndarray) -> None:
        """Queue ``noisy`` (A'·B' of ``header``, the unit's claimed header) for delivery in
        the background; returns at once (:mod:`worker.delivery`)."""
        self.delivery.hand_over(Product(job, workload, header, noisy))

    def _latest_job_id(self, job: Job) -> str:
        latest = self._units.get(job.notify.work.work_root)
        return latest.job.job_id if latest and latest.job.client is job.client else job.job_id

    def _set_outcome(self, job: Job, outcome: str) -> None:
        unit = self._units.get(job.notify.work.work_root)
        if unit is not None and job.client is self._client:
            unit.outcome = outcome

    async def run(self) -> None:
        """The background tasks: result delivery and prefetch (the worker's nursery)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.delivery.run)
            nursery.start_soon(self.prefetcher.run)


def _make_workload(shape: Shape, a: np.ndarray, bt: np.ndarray) -> Workload:
    workload = Workload(shape, a, bt)
    _ = workload.work_root  # hash the rows here, off the trio thread
    return workload


__all__ = ["RESULT_OUTCOMES", "BlobRejected", "UsefulWork", "is_blob_job"]
