"""The pool's useful-work side, as its sessions and its HTTP app use it.

:class:`UsefulWork` owns the :class:`~pool.useful.blobstore.BlobStore`, the
:class:`~pool.useful.queue.WorkQueue` and the :class:`~pool.useful.results.ResultDesk`
under the pool's data dir, and offers the event loop async calls that run the synchronous
parts in worker threads behind one ``CapacityLimiter``:

- :meth:`lease` — the session's lease (continued, or a new one) with its
  :class:`~pool.useful.unitwork.UnitWork` (cached per unit), or None: synthetic work;
- :meth:`attach`, :meth:`lease_of_job`, :meth:`hold` — jobs of a lease and their held
  shares (a :class:`~pool.ledger.base.ShareRecord` kept as JSON until the result is judged);
- :meth:`get_blob` — ``work.get_blob``, only for the blobs of the session's current lease,
  bounded in bytes per lease;
- :meth:`take_result` — ``work.result`` chunks; the final one is judged (Freivalds);
- :meth:`release_session` and :meth:`run_expiry` — leases that end without a result.

Sessions hear of ended leases through the ``on_lease_end`` callback of :meth:`run_expiry`
(the pool pushes them a new job). Every synchronous call is made through
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import trio

from pool.ledger.base import ShareRecord
from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.blobstore import BlobStore
from pool.useful.queue import Lease, LeaseEnd, LeaseError, WorkQueue
from pool.useful.results import ResultDesk, Verdict
from pool.useful.unitwork import UnitWork
from protocol.errors import ProtocolError
from protocol.messages import ErrorCode
from protocol.work_messages import GetBlob, GetBlobResult, WorkResult, WorkResultAck

log = logging.getLogger("pool.useful")

T = TypeVar("T")
UNITWORK_CACHE = 8
"""Units kept in memory with their row trees (a unit is shared by its re-leases)."""
BLOB_BUDGET_FACTOR = 4
"""A lease may fetch its operand blobs this many times over before ``work.get_blob`` is 27."""
MAX_EXPIRY_SLEEP = 1.0


def share_to_json(record: ShareRecord) -> dict[str, Any]:
    """A share record as JSON-able values (bytes as hex) for :meth:`WorkQueue.hold_share`."""
    out = asdict(record)
    out["digest"] = record.digest.hex()
    out["session_id"] = record.session_id.hex()
    return out


def share_from_json(data: dict[str, Any]) -> ShareRecord:
    """The inverse of :func:`share_to_json`."""
    return ShareRecord(**{**data, "digest": bytes.fromhex(data["digest"]),
                          "session_id": bytes.fromhex(data["session_id"])})


class UsefulWork:
    """Useful work of one pool instance; see the module doc."""

    def __init__(self, data_dir: str | Path, config: UsefulConfig, metrics: UsefulMetrics,
                 limiter: trio.CapacityLimiter | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        root = Path(data_dir)
        self.config = config
        self.metrics = metrics
        self.limiter = limiter or trio.CapacityLimiter(2)
        self.blobs = BlobStore(root / "useful" / "blobs")
        self.queue = WorkQueue(root / "useful.sqlite", self.blobs, config, clock=clock,
                               on_units_changed=metrics.set_unit_counts)
        self.desk = ResultDesk(self.queue, self.blobs, config, metrics)
        self._works: OrderedDict[int, UnitWork] = OrderedDict()
        self._current: dict[str, Lease] = {}   # session → the lease of its newest job
        self._served: dict[int, int] = {}      # lease id → blob bytes served
        self._expiry_poke = trio.Event()
        self.on_lease_end: Callable[[LeaseEnd], None] | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def start(self) -> None:
        """Deliver items a crash left whole but unassembled."""
        done = await self._call(self.desk.recover)
        if done:
            log.info("assembled %d finished work item(s) left by the last run", len(done))
        if self.queue.recovered:
            log.info("released %d lease(s) of the last run; their units are queued again",
                     len(self.queue.recovered))

    def close(self) -> None:
        self.queue.close()

    # -- leases and jobs ------------------------------------------------------------------

    async def lease(self, session: str) -> tuple[Lease, UnitWork] | None:
        """The session's lease and its unit's workload, or None when no unit is queued."""
        if not self.config.enabled:
            return None
        await self._expire()  # so that no ended lease goes unannounced
        lease = await self._call(self.queue.lease, session)
        if lease is None:
            self._current.pop(session, None)
            return None
        work = self._works.get(lease.unit.key)
        if work is None:
            work = await self._call(UnitWork.load, self.blobs, lease.unit)
            self._works[lease.unit.key] = work
            while len(self._works) > UNITWORK_CACHE:
                self._works.popitem(last=False)
        else:
            self._works.move_to_end(lease.unit.key)
        if self._current.get(session) is None or self._current[session].id != lease.id:
            log.info("unit %s… (item %s, unit %d) leased to session %s until %.0f",
                     lease.unit.unit_id.hex()[:16], lease.unit.item, lease.unit.plan.index,
                     session, lease.deadline)
        self._current[session] = lease
        self._expiry_poke.set()
        return lease, work

    async def attach(self, lease: Lease, session: str, job_id: str) -> None:
        await self._call(self.queue.attach_job, lease.id, session, job_id)

    async def lease_of_job(self, session: str, job_id: str) -> Lease | None:
        return await self._call(self.queue.lease_of_job, session, job_id)

    async def hold(self, lease_id: int, record: ShareRecord) -> bool:
        """Hold a share of a useful job; False: the lease ended (the share is stale)."""
        return await self._call(self.queue.hold_share, lease_id, share_to_json(record))

    def current(self, session: str) -> Lease | None:
        """The lease of the session's newest useful job (None: synthetic work)."""
        return self._current.get(session)

    def _ended(self, ends: list[LeaseEnd]) -> None:
        for end in ends:
            self.desk.forget(end.lease.id)
            self._served.pop(end.lease.id, None)
            current = self._current.get(end.lease.session)
            if current is not None and current.id == end.lease.id:
                del self._current[end.lease.session]
            log.info("lease %d of unit %s… ended (%s): %d held share(s) voided", end.lease.id,
                     end.lease.unit.unit_id.hex()[:16], end.state, len(end.shares))

    # -- work.get_blob --------------------------------------------------------------------

    async def get_blob(self, session: str, msg: GetBlob) -> GetBlobResult:
        """Answer ``work.get_blob``; ``ProtocolError`` with the wire code when refused."""
        lease = self._current.get(session)
        unit = lease.unit if lease is not None else None
        if lease is None or unit is None or msg.hash not in (unit.a_blob, unit.b_blob) \
                or lease.deadline < self.queue.clock():
            raise ProtocolError(f"work.get_blob: blob {msg.hash.hex()[:16]}… is not an operand "
                                "of this session's current work unit", code=ErrorCode.STALE)
        budget = BLOB_BUDGET_FACTOR * (unit.shape.m + unit.shape.n) * unit.shape.k
        served = self._served.get(lease.id, 0)
        if served + min(msg.length, self.config.chunk_max) > budget:
            raise ProtocolError(f"work.get_blob: this work unit's blobs were already served "
                                f"{served} bytes; the limit is {budget}",
                                code=ErrorCode.RATE_LIMITED)
        data, total = await self._call(self.blobs.read_chunk, msg.hash, msg.offset, msg.length,
                                       self.config.chunk_max)
        self._served[lease.id] = served + len(data)
        return GetBlobResult(data=data, total=total)

    # -- work.result ----------------------------------------------------------------------

    async def take_result(self, session: str, msg: WorkResult
                          ) -> tuple[WorkResultAck, Verdict | None]:
        """Take one ``work.result`` chunk; on the final one, judge the unit's product.

        Raises ``ProtocolError`` (wire code) for a chunk that is refused. The verdict's
        ``end.shares`` are JSON share records: credit them on ``pass`` (see
        :func:`share_from_json`), they are void otherwise.
        """
        lease = await self.lease_of_job(session, msg.job_id)
        if lease is None:
            raise ProtocolError(f"work.result: job {msg.job_id!r:.70} is not a useful-work job "
                                "of this session", code=ErrorCode.OTHER)
        receipt = self.desk.receive(lease, session, msg.unit, msg.offset, msg.data, msg.final)
        if not receipt.complete:
            return WorkResultAck(accepted=True, received=receipt.received), None
        raw = self.desk.take_upload(lease.id)
        try:
            verdict = await self._call(self.desk.judge, lease.id, raw)
        except LeaseError as exc:  # it ended while the upload was checked
            raise ProtocolError(f"work.result: {exc}", code=ErrorCode.STALE) from None
        self._ended_by_verdict(verdict)
        if verdict.passed:
            log.info("unit %s… verified (session %s): %d held share(s) to credit%s",
                     lease.unit.unit_id.hex()[:16], session, len(verdict.end.shares),
                     f"; item {lease.unit.item} delivered" if verdict.delivered else "")
            return WorkResultAck(accepted=True, received=receipt.received, verified=True), \
                verdict
        log.warning("unit %s… result of session %s rejected (%s): %d held share(s) voided",
                    lease.unit.unit_id.hex()[:16], session, verdict.reason,
                    len(verdict.end.shares))
        return WorkResultAck(accepted=False, received=receipt.received, verified=False,
                             reason=(verdict.reason or verdict.outcome)[:256]), verdict

    def _ended_by_verdict(self, verdict: Verdict) -> None:
        lease = verdict.end.lease
        self._served.pop(lease.id, None)
        current = self._current.get(lease.session)
        if current is not None and current.id == lease.id:
            del self._current[lease.session]

    # -- leases that end without a result -------------------------------------------------

    async def release_session(self, session: str) -> list[LeaseEnd]:
        """The session left: its lease ends, its unit goes back to the queue."""
        ends = await self._call(self.queue.release_session, session)
        self._ended(ends)
        self._current.pop(session, None)
        return ends

    async def _expire(self) -> None:
        ends = await self._call(self.queue.expire)
        self._ended(ends)
        if self.on_lease_end is not None:
            for end in ends:
                self.on_lease_end(end)

    async def run_expiry(self, on_lease_end: Callable[[LeaseEnd], None], *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """End leases past their deadline (at the deadline, or within a second of it).

        ``on_lease_end`` hears of each (it must not block: it schedules new work).
        """
        self.on_lease_end = on_lease_end
        task_status.started()
        while True:
            deadline = await self._call(self.queue.next_deadline)
            wait = MAX_EXPIRY_SLEEP if deadline is None else \
                min(MAX_EXPIRY_SLEEP, max(0.0, deadline - self.queue.clock()) + 0.01)
            with trio.move_on_after(wait):
                await self._expiry_poke.wait()
            self._expiry_poke = trio.Event()
            await self._expire()
