"""The pool's useful-work side, as its sessions and its HTTP app use it.

:class:`UsefulWork` owns the blob store, the work queue and the result desk under the
pool's data dir, and offers the event loop async calls that run the synchronous parts in
worker threads behind one ``CapacityLimiter``:

- :meth:`lease` — the session's lease (continued, or a new one on the unit that suits it:
  :class:`~pool.useful.affinity.Placement`) with its ``UnitWork``, or None: synthetic;
- :meth:`attach`, :meth:`lease_of_job`, :meth:`hold` — jobs of a lease and their held
  shares (a :class:`~pool.ledger.base.ShareRecord` kept as JSON until the result is judged);
- :meth:`get_blob` — ``work.get_blob``, only the current lease's blobs, bounded per lease;
- :meth:`take_result` — ``work.result`` chunks; the final one makes the lease
  ``delivered`` (a :class:`Delivery`: the session takes its next job at once) and
  :meth:`judge` then checks it (Freivalds), credits the held shares, then marks the unit
  done (a crash in between never loses an acknowledged share);
- :meth:`release_session` and :meth:`run_expiry` — leases that end without a result;
- :meth:`watch_queue` — tells the pool whenever units are queued, so idle capable
  sessions lease one at once.

Sessions hear of ended leases through ``on_lease_end`` (the pool pushes them a new job).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import trio

from pool.ledger.base import ShareRecord
from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.affinity import Placement
from pool.useful.blobstore import BlobStore
from pool.useful.judge import ResultStream
from pool.useful.queue import Lease, LeaseChoice, LeaseEnd, LeaseError, WorkQueue
from pool.useful.queue_watch import QueueWatch
from pool.useful.reservations import Reservation, Reservations
from pool.useful.results import Passed, ResultDesk, Verdict
from pool.useful.serving import BlobServing
from pool.useful.tokens import LeaseTokens
from pool.useful.unitwork import UnitWork
from protocol.errors import ErrorCode, ProtocolError
from protocol.work_messages import GetBlob, GetBlobResult, WorkResult, WorkResultAck

log = logging.getLogger("pool.useful")

T = TypeVar("T")
UNITWORK_CACHE = 8
"""Units kept in memory with their row trees (a unit is shared by its re-leases)."""
MAX_EXPIRY_SLEEP = 1.0


@dataclass(frozen=True)
class Delivery:
    """A lease's whole result, received and the lease marked delivered; not judged yet."""

    lease: Lease
    session: str
    result: ResultStream  # spooled, its verdict reached as its bytes came in
    received: int


Credit = Callable[[list[ShareRecord]], Awaitable[object]]
"""Writes verified shares to the ledger (idempotent by digest)."""


class UsefulWork:
    """Useful work of one pool instance; see the module doc."""

    def __init__(
        self,
        data_dir: str | Path,
        config: UsefulConfig,
        metrics: UsefulMetrics,
        limiter: trio.CapacityLimiter | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        root = Path(data_dir)
        self.config = config
        self.metrics = metrics
        self.limiter = limiter or trio.CapacityLimiter(2)
        self.watch = QueueWatch(metrics)
        self.blobs = BlobStore(root / "useful" / "blobs")
        self.queue = WorkQueue(
            root / "useful.sqlite",
            self.blobs,
            config,
            clock=clock,
            on_units_changed=self.watch.units_changed,
        )
        self.desk = ResultDesk(self.queue, self.blobs, config, metrics)
        self._works: OrderedDict[bytes, UnitWork] = OrderedDict()
        self._current: dict[str, Lease] = {}  # session → the lease of its newest job
        self._expiry_poke = trio.Event()
        self.on_lease_end: Callable[[LeaseEnd], None] | None = None
        self.tokens = LeaseTokens()
        self.placement = Placement(config)  # affinity and unit sizes
        self.serving = BlobServing(config, self.blobs, metrics, self.placement.holders, self._call)
        self.reservations = Reservations(self.tokens)  # the next unit of each session
        self._uploading: set[int] = set()  # leases whose upload started (mining over)
        self.data_url: str | None = None  # named in blob jobs (SPEC §12.7); None: stratum only

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def start(self) -> None:
        """Deliver items a crash left whole but unassembled."""
        done = await self._call(self.desk.recover)
        if done:
            log.info("assembled %d finished work item(s) left by the last run", len(done))
        if self.queue.recovered:
            log.info(
                "released %d lease(s) of the last run; their units are queued again",
                len(self.queue.recovered),
            )

    def close(self) -> None:
        self.queue.close()

    async def stats(self) -> dict[str, Any]:
        """For the dashboard: units and items by state, verified useful MACs since start."""

        def read() -> tuple[dict[str, int], dict[str, int]]:
            return self.queue.unit_counts(), self.queue.item_counts()

        units, items = await self._call(read)
        return {"units": units, "items": items, "useful_macs": self.metrics.verified_macs}

    # -- units queued -----------------------------------------------------------------------

    async def watch_queue(
        self,
        on_units_queued: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_units_queued`` (it must not block) whenever units are queued (and
        once at start if some are). Runs until cancelled."""

        async def queued_now() -> int:
            return (await self._call(self.queue.unit_counts)).get("queued", 0)

        await self.watch.run(on_units_queued, queued_now, task_status)

    # -- leases and jobs ------------------------------------------------------------------

    async def lease(
        self, session: str, miner: str | None = None, rate: float | None = None
    ) -> tuple[Lease, UnitWork] | None:
        """The session's lease and its unit's workload, or None when no unit is queued for
        it; ``miner`` (its holder key) and ``rate`` (MAC/s measured, None: not yet) choose
        the unit and its size (:class:`~pool.useful.affinity.Placement`)."""
        if not self.config.enabled:
            return None
        await self._expire()  # so that no ended lease goes unannounced
        choice = replace(
            self.placement.choice(session, miner, rate, self.queue.clock(), self.watch.queued),
            reserved=self.reservations.reserved_key(session),
            exclude=self.reservations.others(session),
        )
        got = await self._call(self.queue.lease_or_wait, session, choice)
        lease = self.placement.leased(session, got, self.queue.clock())
        if lease is None:
            self._expiry_poke.set()  # so that a unit held back is offered again in time
            self._current.pop(session, None)
            return None
        work = self._works.get(lease.unit.unit_id)
        if work is None:
            work = await self._call(UnitWork.load, self.blobs, lease.unit)
            self._works[lease.unit.unit_id] = work
            while len(self._works) > UNITWORK_CACHE:
                self._works.popitem(last=False)
        else:
            self._works.move_to_end(lease.unit.unit_id)
        if self._current.get(session) is None or self._current[session].id != lease.id:
            consumed = self.reservations.leased(lease)  # the reserved unit, or another
            if consumed is not None:
                self.serving.move(-consumed.id, lease.id)
            log.info(
                "unit %s… (item %s, unit %d, %d rows) leased to session %s until %.0f",
                lease.unit.unit_id.hex()[:16],
                lease.unit.item,
                lease.unit.plan.index,
                lease.unit.plan.rows,
                session,
                lease.deadline,
            )
        self._current[session] = lease
        self._expiry_poke.set()
        if self.data_url is not None:
            await self._reserve(session, lease, choice)
            nxt = self.reservations.of(session)
            token = self.reservations.token(lease.id)
            work = work.for_lease(self.data_url, token, nxt.next_unit() if nxt else None)
        return lease, work

    async def attach(self, lease: Lease, session: str, job_id: str) -> None:
        await self._call(self.queue.attach_job, lease.id, session, job_id)

    async def lease_of_job(self, session: str, job_id: str) -> Lease | None:
        return await self._call(self.queue.lease_of_job, session, job_id)

    async def hold(self, lease_id: int, record: ShareRecord) -> bool:
        """Hold a share of a useful job; False: the lease ended (the share is stale)."""
        held = await self._call(self.queue.hold_share, lease_id, record.to_json())
        if held:
            self.metrics.share_held(record.address, record.worker, record.difficulty)
        return held

    def current(self, session: str) -> Lease | None:
        return self._current.get(session)  # the lease of its newest job (None: synthetic)

    def _ended(self, ends: list[LeaseEnd]) -> None:
        for end in ends:
            self.desk.forget(end.lease.id)
            self._end_current(end.lease)
            self.reservations.lease_ended(end.lease.id)
            self._uploading.discard(end.lease.id)
            log.info(
                "lease %d of unit %s… ended (%s): %d held share(s) voided",
                end.lease.id,
                end.lease.unit.unit_id.hex()[:16],
                end.state,
                len(end.shares),
            )

    # -- operand blobs (either plane) and reservations ---------------------------------

    async def get_blob(self, session: str, msg: GetBlob) -> GetBlobResult:
        """Answer ``work.get_blob``; ``ProtocolError`` with the wire code when refused."""
        return await self.serving.get_blob(self._current.get(session), msg, self.queue.clock())

    @property
    def _served(self) -> dict[int, int]:  # the per-lease byte counts (benches clear them)
        return self.serving._served

    def note_served(self, lease: Lease, blob: bytes, nbytes: int, size: int) -> None:
        self.serving.served(lease, blob, nbytes, size)  # HTTP GET bytes that went out

    def charge_served(self, lease: Lease, nbytes: int) -> None:
        self.serving.charge(lease, nbytes)  # 27 (429 over HTTP) past the lease's budget

    async def token_lease(self, token: str, blob: bool = False) -> Lease | None:
        """The open lease a data-plane token names (or, for a blob ``GET``, the stand-in
        lease of a live reservation), else None (403)."""
        found = self.reservations.resolve(token)
        if isinstance(found, Reservation):
            return found.as_lease() if blob else None
        return None if found is None else await self.active_lease(found)

    async def upload_started(self, lease: Lease) -> None:
        """The first result ``PUT`` at 0 of an active lease: it mines no more and its
        session gets its next job at once (SPEC §12.7, overlap); ``LeaseError`` (409)
        while another result of the session is still uploading."""
        if lease.state != "active":
            return
        uploading = await self._call(self.queue.start_upload, lease.id)
        self._uploading.add(lease.id)
        self._end_current(uploading)
        if self.on_lease_end is not None:
            self.on_lease_end(LeaseEnd(uploading, "uploading", []))

    async def _reserve(self, session: str, lease: Lease, choice: LeaseChoice) -> None:
        """Reserve the session's next unit if it has none and one suits it now."""
        if not self.config.prefetch or self.data_url is None or self.reservations.of(session):
            return
        others = self.reservations.others(session) | {lease.unit.key}
        unit = await self._call(
            self.queue.reservable,
            session,
            replace(choice, reserved=None, exclude=others, take_excluded=False),
        )
        if unit is not None:
            self.reservations.reserve(session, unit)

    async def active_lease(self, lease_id: int) -> Lease | None:
        """Lease ``lease_id`` if it is active (or uploading) before its deadline, else None."""
        try:
            lease = await self._call(self.queue.get_lease, lease_id)
        except LeaseError:
            return None
        if lease.state not in ("active", "uploading") or lease.deadline < self.queue.clock():
            return None
        return lease

    # -- work.result ----------------------------------------------------------------------

    async def take_result(self, session: str, msg: WorkResult) -> WorkResultAck | Delivery:
        """Take one ``work.result`` chunk: the ack of a non-final one, or on the final one
        the :class:`Delivery` (the lease is now ``delivered``: its session no longer holds
        it, new shares of its jobs are stale); pass that to :meth:`judge`. Raises
        ``ProtocolError`` (wire code) for a chunk that is refused."""
        lease = await self.lease_of_job(session, msg.job_id)
        if lease is None:
            raise ProtocolError(
                f"work.result: job {msg.job_id!r:.70} is not a useful-work job of this session",
                code=ErrorCode.OTHER,
            )
        receipt = self.desk.receive(lease, session, msg.unit, msg.offset, msg.data, msg.final)
        if receipt.flush:  # spool and judge the chunks queued so far, in a thread
            await self._call(self.desk.pending(lease.id))
        if not receipt.complete:
            return WorkResultAck(accepted=True, received=receipt.received)
        self.metrics.data_bytes("in", "stratum", receipt.received)
        return await self.deliver(lease, self.desk.take_upload(lease.id))

    async def deliver(self, lease: Lease, result: ResultStream) -> Delivery:
        """Mark ``lease`` delivered with its whole result (spooled, judged); pass the
        :class:`Delivery` to :meth:`judge`. ``ProtocolError`` (21; result dropped) if it ended."""
        try:
            with trio.CancelScope(shield=True):  # delivered, the result is judged regardless
                lease = await self._call(self.queue.deliver, lease.id)
        except LeaseError as exc:  # it ended (deadline) while the last chunk came in
            result.close()
            raise ProtocolError(f"work.result: {exc}", code=ErrorCode.STALE) from None
        self._end_current(lease)
        self.reservations.lease_ended(lease.id)
        self.desk.forget(lease.id)  # a work.result upload of it on the other path, if any
        return Delivery(lease, lease.session, result, result.received)

    def rejected(self, verdict: Verdict) -> None:
        """Tell the session of a wrong result delivered over HTTP: it counts against it."""
        if not verdict.passed and self.on_lease_end is not None:
            self.on_lease_end(verdict.end)  # a failed check ends the lease "rejected"

    def announce(self, lease: Lease) -> None:
        """Tell ``lease``'s session its unit is delivered (over HTTP): it gets new work
        (unless it got it when the upload started)."""
        if lease.id in self._uploading:
            self._uploading.discard(lease.id)
        elif self.on_lease_end is not None:
            self.on_lease_end(LeaseEnd(lease, "delivered", []))

    async def judge(self, delivery: Delivery, credit: Credit) -> tuple[WorkResultAck, Verdict]:
        """Check a delivered result; on a pass, ``credit`` the held shares, then mark the
        unit done — in that order, shielded from cancellation (a session that closes now
        still has its result judged). Returns the final chunk's ack and the verdict;
        ``ProtocolError`` (21) if the lease ended meanwhile."""
        lease, session = delivery.lease, delivery.session
        short = lease.unit.unit_id.hex()[:16]
        with trio.CancelScope(shield=True):
            try:
                checked = await self._call(self.desk.check, lease.id, delivery.result)
                if isinstance(checked, Passed):
                    await self._credit(credit, checked.shares, session)
                    verdict = await self._call(self.desk.complete, checked)
                    credited = {s["digest"] for s in checked.shares}
                    await self._credit(
                        credit,
                        [s for s in verdict.end.shares if s["digest"] not in credited],
                        session,
                    )
                else:
                    verdict = checked
            except LeaseError as exc:  # released meanwhile: the unit is computed again
                raise ProtocolError(f"work.result: {exc}", code=ErrorCode.STALE) from None
        if verdict.passed:
            log.info(
                "unit %s… verified (session %s): %d held share(s) credited%s",
                short,
                session,
                len(verdict.end.shares),
                f"; item {lease.unit.item} delivered" if verdict.delivered else "",
            )
            return WorkResultAck(accepted=True, received=delivery.received, verified=True), verdict
        log.warning(
            "unit %s… result of session %s rejected (%s): %d held share(s) voided",
            short,
            session,
            verdict.reason,
            len(verdict.end.shares),
        )
        return WorkResultAck(
            accepted=False,
            received=delivery.received,
            verified=False,
            reason=(verdict.reason or verdict.outcome)[:256],
        ), verdict

    async def _credit(self, credit: Credit, shares: list[Any], session: str) -> None:
        if not shares:
            return
        try:
            await credit([ShareRecord.from_json(s) for s in shares])
        except Exception as exc:  # the unit's result stands; the shares could not be written
            log.error(
                "could not credit %d verified share(s) of session %s: %s", len(shares), session, exc
            )

    def _end_current(self, lease: Lease) -> None:
        self.serving.forget(lease.id)
        self.placement.holders.lease_ended(lease.id)
        self.placement.holders.busy(lease.session, False, self.queue.clock())
        current = self._current.get(lease.session)
        if current is not None and current.id == lease.id:
            del self._current[lease.session]

    # -- leases that end without a result -------------------------------------------------

    async def release_session(self, session: str) -> list[LeaseEnd]:
        """The session left: its lease ends, its unit goes back to the queue."""
        ends = await self._call(self.queue.release_session, session)
        self._ended(ends)
        self._current.pop(session, None)
        self.placement.holders.disconnect(session)
        self.reservations.drop_session(session)
        return ends

    async def _expire(self) -> None:
        ends = await self._call(self.queue.expire)
        self._ended(ends)
        if self.on_lease_end is not None:
            for end in ends:
                if end.lease.state != "uploading":  # its session got new work at the start
                    self.on_lease_end(end)

    async def run_expiry(
        self,
        on_lease_end: Callable[[LeaseEnd], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """End leases past their deadline (at the deadline, or within a second of it).

        ``on_lease_end`` hears of each (it must not block: it schedules new work).
        """
        self.on_lease_end = on_lease_end
        task_status.started()
        while True:
            deadline = await self._call(self.queue.next_deadline)
            retry = self.placement.retry_at
            if retry is not None:
                deadline = retry if deadline is None else min(deadline, retry)
            wait = (
                MAX_EXPIRY_SLEEP
                if deadline is None
                else min(MAX_EXPIRY_SLEEP, max(0.0, deadline - self.queue.clock()) + 0.01)
            )
            with trio.move_on_after(wait):
                await self._expiry_poke.wait()
            self._expiry_poke = trio.Event()
            await self._expire()
            if self.placement.due(self.queue.clock()):
                self.watch.poke()  # units held back for affinity: offer them to anyone
