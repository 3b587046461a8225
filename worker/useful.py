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
none) to :meth:`UsefulWork.deliver`, which
denoises it in a worker thread (``protocol.denoise``), sends the unit's C as int32
little-endian in ``work.result`` chunks on the session that gave the job, and reads the
pool's verdict from the answer to the final chunk. Mining goes on meanwhile: the pool
pushes new work once it has judged the result.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from protocol.denoise import denoise
from protocol.errors import ProtocolError
from protocol.messages import BlobSource
from protocol.noise import pow_seed
from protocol.useful import RESULT_DTYPE, chunks
from protocol.work_messages import CHUNK_SIZE, WorkResultAck
from protocol.workload import Shape, Workload

from .blobcache import BlobCache, BlobRejected, BlobSpec, VerifiedBlob
from .client import Job, PoolClient
from .data_client import DataClient, DataPlane, DataPlaneError
from .outcomes import RequestFailed
from .stats import USEFUL_RESULTS, WorkerStats

log = logging.getLogger(__name__)

RESULT_OUTCOMES = USEFUL_RESULTS
"""``verified``: the pool's check passed; ``rejected``: it failed; ``failed``: not delivered."""
RESULT_WINDOW = 8  # result chunks in flight at once (acks are collected in order)
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
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    _cache: BlobCache | None = field(default=None, init=False, repr=False)
    _client: PoolClient | None = field(default=None, init=False, repr=False)
    _units: dict[bytes, _Unit] = field(default_factory=dict, init=False, repr=False)
    _data: DataClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_max <= CHUNK_SIZE:
            raise ValueError(f"chunk_max must be in 1..{CHUNK_SIZE}, got {self.chunk_max}")
        self.cache_dir = Path(self.cache_dir)

    @property
    def cache(self) -> BlobCache:
        """The blob cache, its directory made on first use (so synthetic-only mining
        leaves no trace on disk)."""
        if self._cache is None:
            self._cache = BlobCache(self.cache_dir, self.cache_max_bytes, self._count_bytes)
        return self._cache

    def _count_bytes(self, n: int) -> None:
        self.stats.blob_bytes += n  # matmine_worker_blob_bytes_total

    # --- operands ------------------------------------------------------------------------

    async def workload(self, job: Job) -> Workload:
        """The job's verified workload, fetched through the cache if need be.

        Raises :class:`BlobRejected` when a blob does not match the job's commitments and
        :class:`RequestFailed` when the pool refuses a request (``code``) or the session
        ends (``code`` None).
        """
        work = job.notify.work
        a_spec, b_spec = BlobSpec.operands(work)
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
        return workload

    @property
    def data(self) -> DataClient:
        if self._data is None:
            self._data = DataClient(self._count_bytes)
        return self._data

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
        job whose unit has no claimed header on this session yet (does not claim)."""
        if not is_blob_job(job):
            return False
        unit = self._units.get(job.notify.work.work_root)
        return job.client is not self._client or unit is None or not unit.claimed

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

    async def deliver(self, job: Job, workload: Workload, header: bytes, noisy: np.ndarray) -> str:
        """Denoise ``noisy`` (A'·B' of ``header``), send C to the pool, return the outcome."""
        unit_id = workload.work_root
        short = unit_id.hex()[:16]
        try:
            raw = await trio.to_thread.run_sync(
                _exact_product, workload, header, noisy, limiter=self.limiter
            )
        except (ProtocolError, ValueError) as exc:  # pragma: no cover - a backend bug
            return self._finish(job, "failed", f"unit {short}…: cannot denoise: {exc}")
        plane = self.plane(job)
        if plane is not None:
            try:
                answer = await self.data.upload_result(plane, unit_id, raw)
            except DataPlaneError as exc:
                log.warning("unit %s…: %s; sending it over the stratum connection", short, exc)
            else:
                ack = WorkResultAck(
                    accepted=True,
                    received=int(answer.get("received", 0)),
                    verified=bool(answer["verified"]),
                    reason=None if answer.get("reason") is None else str(answer["reason"])[:256],
                )
                return self._verdict(job, workload, ack)
        return await self._deliver_stratum(job, workload, raw)

    async def _deliver_stratum(self, job: Job, workload: Workload, raw: bytes) -> str:
        """Send C in ``work.result`` chunks on the job's session; the outcome."""
        unit_id = workload.work_root
        short = unit_id.hex()[:16]
        client = job.client
        in_flight: deque[tuple[int, Callable[[], Awaitable[WorkResultAck]]]] = deque()
        try:
            for offset, data, final in chunks(raw, self.chunk_max):
                latest = self._units.get(unit_id)
                job_id = latest.job.job_id if latest and latest.job.client is client else job.job_id
                in_flight.append(
                    (offset, await client.send_result(job_id, unit_id, offset, data, final))
                )
                # Up to RESULT_WINDOW chunks in flight; the final one waits for all before it.
                while in_flight and (len(in_flight) >= RESULT_WINDOW or final):
                    sent_at, ack_of = in_flight.popleft()
                    ack = await ack_of()
                    if not in_flight and final:
                        return self._verdict(job, workload, ack)
                    if not ack.accepted:
                        why = ack.reason or "no reason given"
                        return self._finish(
                            job,
                            "failed",
                            f"unit {short}…: pool refused the result chunk at {sent_at}: {why}",
                        )
        except RequestFailed as exc:
            return self._finish(job, "failed", f"unit {short}…: result not delivered: {exc}")
        raise AssertionError("chunks() always ends with a final chunk")  # pragma: no cover

    def _verdict(self, job: Job, workload: Workload, ack: WorkResultAck) -> str:
        """The outcome of a unit from the pool's answer to its final result chunk."""
        short = workload.work_root.hex()[:16]
        why = ack.reason or "no reason given"
        if ack.verified is None:
            what = (
                "took the final chunk but gave no verdict"
                if ack.accepted
                else (f"refused the final result chunk: {why}")
            )
            return self._finish(job, "failed", f"unit {short}…: the pool {what}")
        if ack.verified and ack.accepted:
            self.stats.useful_macs += workload.shape.macs_per_header
            return self._finish(
                job,
                "verified",
                f"unit {short}…: result verified by the pool ({ack.received} bytes)",
            )
        return self._finish(
            job, "rejected", f"unit {short}…: the pool's check of the result failed: {why}"
        )

    def _finish(self, job: Job, outcome: str, message: str) -> str:
        unit = self._units.get(job.notify.work.work_root)
        if unit is not None and job.client is self._client:
            unit.outcome = outcome
        self.stats.useful_results[outcome] += 1
        (log.info if outcome == "verified" else log.error)("%s", message)
        return outcome


def _make_workload(shape: Shape, a: np.ndarray, bt: np.ndarray) -> Workload:
    workload = Workload(shape, a, bt)
    _ = workload.work_root  # hash the rows here, off the trio thread
    return workload


def _exact_product(workload: Workload, header: bytes, noisy: np.ndarray) -> bytes:
    """The unit's C = A·B from one header's noisy product, as int32 LE bytes."""
    c = denoise(noisy, workload.a, workload.bt, pow_seed(header), workload.shape.r)
    return np.ascontiguousarray(c, dtype=RESULT_DTYPE).tobytes()


__all__ = ["RESULT_OUTCOMES", "BlobRejected", "UsefulWork", "is_blob_job"]
