"""Jobs → headers → backends → checked shares.

Each device runs its own loop: take the current job, build a header with a fresh
extranonce2 (top byte = device index, 7-byte counter below, kept per extranonce1 across
jobs and resumed sessions, so no header is ever mined twice), roll ``time`` with the
clock up to 600 s past the job's time, and scan it in a worker thread. ``should_stop``
turns true as soon as a clean job (or a new session, or no session) makes the work
worthless, so the backend drops the scan at its next check. Winners are re-checked on
the CPU and only then submitted.

A device that fails is restarted with a growing delay (1 s, 2 s, 4 s … at most a minute)
and retired after ``MAX_FAILURES`` failures in a row without a completed scan; a device
that is unusable (``DeviceUnusable``: kernels that do not build, wrong results) is retired
at once with one warning. The others mine on; ``Miner.run`` returns when none is left.

Every scan's MACs are counted by kind: ``useful`` while the scan is of a unit whose
product is not taken yet (it asks for the product), ``synthetic`` for everything else
(synthetic jobs, and a unit's headers after its product was handed to the background
delivery, mined only until the pool's next job arrives).

The jobs and their workloads are ``jobfeed.py``; one device's state is ``device_slot.py``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
import trio

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import SyntheticSource
from protocol.model_messages import ModelSource
from protocol.target import meets_target, target_from_bits, target_from_difficulty
from protocol.workload import Workload, work_root

from .backends.base import DeviceUnusable
from .blobcache import BlobRejected
from .checker import Checker
from .client import Job
from .device_slot import DeviceSlot, StopFlag
from .jobfeed import JobFeed, MinableJob, WorkloadCache
from .model_work import ModelWork
from .outcomes import RequestFailed, SubmitOutcome
from .stats import WorkerStats
from .useful import UsefulWork

log = logging.getLogger(__name__)

MAX_DEVICES = 256
MAX_FAILURES = 5  # failures in a row (no completed scan between) before a device is retired
RESTART_DELAY = 1.0  # first restart delay; doubles per failure in a row
MAX_RESTART_DELAY = 60.0

Submitter = Callable[[Job, bytes, int, tuple[int, int]], Awaitable[SubmitOutcome]]


class Miner:
    """Feeds every device from the ``JobFeed`` and submits checked shares."""

    def __init__(
        self,
        slots: list[DeviceSlot],
        feed: JobFeed,
        submit: Submitter,
        checker: Checker,
        stats: WorkerStats,
        *,
        roll_time: bool = True,
        useful: UsefulWork | None = None,
        models: ModelWork | None = None,
    ) -> None:
        if not slots:
            raise ValueError("no devices to mine with")
        if len(slots) > MAX_DEVICES:
            raise ValueError(f"at most {MAX_DEVICES} devices (one extranonce2 byte)")
        self.slots = slots
        self.feed = feed
        self._submit = submit
        self._checker = checker
        self._stats = stats
        self._roll = roll_time
        self._useful = useful
        self._models = models  # model jobs (worker.model_work), None: not taken
        self._workloads = WorkloadCache()
        self._minable: tuple[int, MinableJob | None] = (-1, None)
        self._prepare_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.recent_shares: deque[tuple[str, tuple[int, int], SubmitOutcome]] = deque(maxlen=100)
        for slot in slots:
            stats.device(slot.name)

    async def run(self) -> None:
        """Mine on every device; returns only when every device has been retired."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot in self.slots:
                nursery.start_soon(self._supervise_until_retired, slot)

    async def _supervise_until_retired(self, slot: DeviceSlot) -> None:
        await self._supervise(slot)
        if all(s.retired is not None for s in self.slots):
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()  # pending share checks go with the devices

    def retired(self) -> dict[str, str]:
        """Name → reason of every device that no longer mines."""
        return {s.name: s.retired for s in self.slots if s.retired is not None}

    def restart(self, index: int) -> None:
        """Stop device ``index``'s current work and reopen its backend (watchdog)."""
        slot = self.slots[index]
        slot.restart_requested = True
        if slot.flag is not None:
            slot.flag.set()
        if slot.scope is not None:
            slot.scope.cancel()

    # --- per device ---------------------------------------------------------------------

    async def _supervise(self, slot: DeviceSlot) -> None:
        """Run one device's loop, restarting it after failures; returns once retired."""
        while slot.retired is None:
            with trio.CancelScope() as scope:
                slot.scope = scope
                try:
                    await self._device_loop(slot)
                except DeviceUnusable as exc:
                    self._retire(slot, exc.reason)
                except Exception as exc:
                    slot.failures += 1
                    if slot.failures >= MAX_FAILURES:
                        self._retire(slot, f"failed {slot.failures} times in a row, last: {exc}")
                    else:
                        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (slot.failures - 1))
                        log.error(
                            "device %s failed: %s; restarting it in %gs",
                            slot.name,
                            exc,
                            delay,
                            exc_info=log.isEnabledFor(logging.DEBUG),
                        )
                        slot.restart_requested = True
                        await trio.sleep(delay)
            slot.scan_started = None
            slot.flag = None
            if slot.restart_requested and slot.retired is None:
                slot.restart_requested = False
                await self._reopen(slot)

    def _retire(self, slot: DeviceSlot, reason: str) -> None:
        slot.retired = reason
        left = [s.name for s in self.slots if s.retired is None]
        log.warning(
            "device %s skipped: %s; %s",
            slot.name,
            reason,
            f"mining goes on with {', '.join(left)}" if left else "no device is left",
        )

    async def _reopen(self, slot: DeviceSlot) -> None:
        stats = self._stats.device(slot.name)
        stats.restarts += 1
        slot.limiter = trio.CapacityLimiter(1)  # an abandoned scan may still hold the old one
        slot.prepared_root = None
        if slot.reopen is None:
            return
        try:
            backend = await trio.to_thread.run_sync(slot.reopen, abandon_on_cancel=True)
        except DeviceUnusable as exc:
            self._retire(slot, exc.reason)
            return
        except Exception as exc:
            log.error("reopening %s failed: %s; keeping the old backend", slot.name, exc)
            return
        old = slot.name
        slot.backend = backend
        stats.stalled = False
        log.warning("device %s reopened as %s", old, slot.name)
        self._stats.device(slot.name)

    async def _minable_job(self) -> MinableJob:
        """The current job, checked and with its workload built; waits while there is none."""
        while True:
            version = self.feed.version
            job = self.feed.job
            if job is not None:
                cached_version, minable = self._minable
                if cached_version == version and minable is not None:
                    return minable
                async with self._prepare_lock:
                    if self._minable[0] != version:
                        self._minable = (version, await self._check_job(job))
                if self._minable[0] == version and self._minable[1] is not None:
                    return self._minable[1]
            await self.feed.wait_change(version)

    async def _check_job(self, job: Job) -> MinableJob | None:
        n = job.notify
        work = n.work
        if self._models is not None and isinstance(work.source, ModelSource):
            assert self._nursery is not None
            # in the background; its layers' MACs count as useful scans of the device
            self._models.take(job, self.slots[0], self._nursery, self._stats)
            return None
        try:
            shape = work.shape
            workload: Workload | None
            if isinstance(work.source, SyntheticSource):
                workload = await self._workloads.get(work.source.seed, shape)
                if (workload.a_root, workload.b_root) != (work.a_root, work.b_root):
                    raise ProtocolError("the synthetic rows do not match the job's a_root/b_root")
            else:
                workload = await self._blob_workload(job)
                if workload is None:
                    return None
            if workload.work_root != work_root(shape, work.a_root, work.b_root):
                raise ProtocolError("work_root does not match")  # pragma: no cover
            share_target = target_from_difficulty(n.difficulty)
            network_target = target_from_bits(n.bits)
        except ProtocolError as exc:
            log.error(
                "job %s from %s cannot be mined: %s", n.job_id, job.client.endpoint.label, exc
            )
            return None
        self._stats.job_id = n.job_id
        self._stats.job_difficulty = n.difficulty
        return MinableJob(job, workload, share_target, network_target)

    async def _blob_workload(self, job: Job) -> Workload | None:
        """The verified operands of a blob job; None (job dropped) if they cannot be had."""
        n = job.notify
        if self._useful is None:
            log.error(
                "job %s: blob workloads are switched off in this worker; idle until the next job",
                n.job_id,
            )
            return None
        try:
            return await self._useful.workload(job)
        except BlobRejected as exc:
            self._stats.blobs_rejected += 1
            log.error(
                "job %s from %s: operand rejected, not mining it: %s; reconnecting",
                n.job_id,
                job.client.endpoint.label,
                exc,
            )
            job.client.close()  # the lease goes back to the pool's queue
        except RequestFailed as exc:
            if exc.code == ErrorCode.STALE:
                log.info(
                    "job %s: its unit is no longer this session's (%s); waiting for the next job",
                    n.job_id,
                    exc,
                )
            else:
                log.error(
                    "job %s from %s: cannot get its operands: %s; reconnecting",
                    n.job_id,
                    job.client.endpoint.label,
                    exc,
                )
                job.client.close()
        return None

    async def _keep_product(self, slot: DeviceSlot, minable: MinableJob, header: bytes) -> None:
        """Fallback for a backend whose scan gave no product: compute ``header``'s noisy
        product on ``slot`` in a second pass and hand it to the useful task."""
        assert self._useful is not None
        try:
            noisy = await trio.to_thread.run_sync(
                slot.backend.product, header, limiter=slot.limiter, abandon_on_cancel=True
            )
        except BaseException:
            self._useful.unclaim(minable.job)
            raise
        self._deliver(minable, header, noisy)

    def _deliver(self, minable: MinableJob, header: bytes, noisy: np.ndarray) -> None:
        """Start the useful task on ``header``'s noisy product, unless its unit has ended."""
        assert self._useful is not None
        job = minable.job
        current = self.feed.job
        if (
            current is None
            or current.client is not job.client
            or current.notify.work.work_root != minable.workload.work_root
        ):
            log.info(
                "unit %s… ended before its result was ready; dropped",
                minable.workload.work_root.hex()[:16],
            )
            return
        self._useful.hand_over(job, minable.workload, header, noisy)

    async def _waited_after_product(self, job: Job, generation: int) -> bool:
        """Once a unit's product is taken, the pool ends its mining as the result upload
        starts (SPEC §12.7) and sends the next job: wait for it (at most
        ``wait_after_product`` seconds) rather than scan the unit again. True if a new job
        came (look again); False to mine the unit on (an old pool, a slow upload start)."""
        useful = self._useful
        if useful is None or useful.wait_after_product <= 0 or not useful.product_taken(job):
            return False
        version = self.feed.version
        with trio.move_on_after(useful.wait_after_product):
            await self.feed.wait_change(version)
        return self.feed.version != version or self.feed.generation != generation

    async def _device_loop(self, slot: DeviceSlot) -> None:
        while True:
            minable = await self._minable_job()
            job = minable.job
            generation = self.feed.generation
            slot.use_extranonce1(job.extranonce1)
            if slot.prepared_root != minable.workload.work_root:
                await trio.to_thread.run_sync(
                    slot.backend.prepare,
                    minable.workload,
                    limiter=slot.limiter,
                    abandon_on_cancel=True,
                )
                slot.prepared_root = minable.workload.work_root
                self._stats.device(slot.name).kernel = str(getattr(slot.backend, "kernel", ""))
                if self.feed.generation != generation:
                    continue
            if await self._waited_after_product(job, generation):
                continue
            extranonce2 = slot.next_extranonce2()
            header_time = minable.header_time(trio.current_time(), self._roll)
            header = minable.header(extranonce2, header_time)
            flag = StopFlag(partial(self.feed.is_stale, generation))
            slot.flag = flag
            slot.scan_started = time.monotonic()
            want = self._useful is not None and self._useful.wants_product(job)
            try:
                result = await trio.to_thread.run_sync(
                    slot.backend.scan,
                    header,
                    minable.share_target,
                    flag,
                    want,
                    limiter=slot.limiter,
                    abandon_on_cancel=True,
                )
            finally:
                flag.set()
                slot.scan_started = None
            # useful: a header of a unit whose product is not taken yet; else synthetic
            kind = "useful" if want else "synthetic"
            self._stats.add_scan(slot.name, result.macs, result.complete, kind)
            if result.complete:
                slot.failures = 0
            if self.feed.generation != generation:
                log.debug("%s: scan of job %s abandoned for a clean job", slot.name, job.job_id)
                continue
            for ti, tj, digest in result.winners:
                assert self._nursery is not None
                self._nursery.start_soon(
                    self._share,
                    slot.name,
                    minable,
                    header,
                    extranonce2,
                    header_time,
                    (ti, tj),
                    digest,
                )
            if result.complete and self._useful is not None and self._useful.claim(job):
                noisy = getattr(result, "product", None)
                if noisy is not None:  # computed by the scan itself: no second pass
                    self._deliver(minable, header, noisy)
                else:
                    await self._keep_product(slot, minable, header)

    async def _share(
        self,
        device: str,
        minable: MinableJob,
        header: bytes,
        extranonce2: bytes,
        header_time: int,
        tile: tuple[int, int],
        digest: bytes,
    ) -> None:
        check = await self._checker.check(
            device, minable.workload, header, tile, digest, minable.share_target
        )
        if not check.ok:
            return
        job = minable.job
        if meets_target(digest, minable.network_target, minable.workload.shape.k):
            log.info("block candidate from %s on job %s tile %s", device, job.job_id, tile)
        sent = time.monotonic()
        outcome = await self._submit(job, extranonce2, header_time, tile)
        latency = time.monotonic() - sent
        self.recent_shares.append((device, tile, outcome))
        self._stats.add_share(
            outcome.result,
            outcome.difficulty,
            outcome.code,
            outcome.block is not None,
            device=device,
            latency=latency,
        )
        if outcome.result == "accepted":
            s = self._stats.shares
            log.info(
                "share accepted (%d/%d): %s job %s tile %s difficulty %g (%.0f ms)%s",
                s["accepted"],
                s["rejected"] + s["stale"],
                device,
                job.job_id,
                tile,
                outcome.difficulty,
                latency * 1000,
                f" — BLOCK {outcome.block.hex()}" if outcome.block else "",
            )
        elif outcome.result == "lost":
            log.warning("share from %s not delivered: %s", device, outcome.message)
        else:
            log.warning(
                "share %s: %s job %s tile %s: %s %s",
                outcome.result,
                device,
                job.job_id,
                tile,
                outcome.code,
                outcome.message,
            )
