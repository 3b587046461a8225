"""Share checks in worker processes (``[pool] check_processes`` > 0), through trio-parallel.

A check thread shares the GIL with the event loop, so its numpy calls and the loop's
Python wait on each other. :class:`CheckProcesses` runs the checks of a taken batch in one
of ``check_processes`` processes instead (``trio_parallel``, its own worker context per
pool, opened in the app's nursery): one round trip per call, however many batches it
holds. What crosses is small: per share the job's row source (its workload seed, or the
files of a unit's blobs), shape, tile and header, about 250 bytes; back comes the digest.
Each process derives or reads a job's rows once and keeps them and the headers' index
pairs in its own byte-bounded caches (:mod:`pool.check_worker`), and decides from the job's
difficulty and bits whether a digest meets the share and network targets (the target math
off the event loop too).

A check process that dies (killed, out of memory) loses nothing: the call is tried again
once on a fresh process; if that one dies too, every share of the call is answered 20
(``OTHER``, a pool fault: not stored, so the miner may submit it again; SPEC §12.5), and
the next call starts a fresh process. A job whose rows cannot be named to a process (a
workload kind it does not know) is checked in a thread, as with ``check_processes = 0``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio_parallel

from pool.check_worker import ProcAnswer, ProcRequest, RowsRef, check_batches, process_id, ready
from pool.jobs import Job
from pool.share_rules import CheckedTicket, ShareRejected, TicketRequest, check_tickets
from pool.useful.unitwork import UnitWork
from pool.workloads import PreparedWork
from protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger("pool.shares")

IDLE_SECONDS = 86_400.0
"""A check process idle this long exits (its caches go with it; the next call starts one)."""
GRACE_SECONDS = 5.0
"""When the pool stops, a check process gets this long to finish before it is killed."""

Answer = CheckedTicket | Exception
BatchFn = Callable[[Sequence[Sequence[ProcRequest]]], tuple[list[ProcAnswer], float]]


class CheckProcesses:
    """Checks taken batches in at most ``limiter.total_tokens`` processes at once."""

    def __init__(
        self,
        context: trio_parallel.WorkerContext,
        limiter: trio.CapacityLimiter,
        thread_limiter: trio.CapacityLimiter,
        *,
        blob_path: Callable[[bytes], Path] | None = None,
        observe: Callable[[float], None] | None = None,
        batch_fn: BatchFn = check_batches,
    ) -> None:
        self.context = context
        self.limiter = limiter
        self.thread_limiter = thread_limiter  # for jobs a process cannot be told about
        self.blob_path = blob_path  # a blob id's file in the pool's blob store
        self.observe = observe  # seconds per share (timed in the process)
        self.batch_fn = batch_fn
        self.broken = 0  # calls whose process died (counted, logged)
        self.in_threads = 0  # requests no process could be told about (checked in a thread)

    def rows_ref(self, job: Job) -> RowsRef | None:
        """Where a process finds ``job``'s rows, or None (checked in a thread then)."""
        work = job.work
        if isinstance(work, PreparedWork):
            return ("seed", work.seed)
        if isinstance(work, UnitWork) and self.blob_path is not None:
            unit = work.unit
            return ("blob", str(self.blob_path(unit.a_blob)), str(self.blob_path(unit.b_blob)))
        return None

    async def check(self, batches: Sequence[Sequence[TicketRequest]]) -> list[list[Answer]]:
        """The answer of every request of ``batches`` (one process call for all of them;
        requests no process can check go to a thread)."""
        sent: list[list[ProcRequest]] = []
        where: list[tuple[int, int]] = []  # (batch, index) of each request sent
        local: list[tuple[int, int]] = []
        for b, batch in enumerate(batches):
            sent.append([])
            for i, (job, _, header, tile) in enumerate(batch):
                ref = self.rows_ref(job)
                if ref is None:
                    local.append((b, i))
                    continue
                s = job.work.shape
                bits = job.template.block.bits
                sent[b].append((ref, (s.m, s.n, s.k, s.r), tile, header, job.difficulty, bits))
                where.append((b, i))
        answers: list[list[Answer]] = [[ValueError("not checked")] * len(b) for b in batches]
        if where:
            digests = await self._call([batch for batch in sent if batch])
            for (b, i), digest in zip(where, digests, strict=True):
                answers[b][i] = _answer(batches[b][i], digest)
        if local:
            self.in_threads += len(local)
            requests = [batches[b][i] for b, i in local]
            checked = await trio.to_thread.run_sync(
                check_tickets, requests, limiter=self.thread_limiter
            )
            for (b, i), answer in zip(local, checked, strict=True):
                answers[b][i] = answer
        return answers

    async def _call(self, sent: list[list[ProcRequest]]) -> list[ProcAnswer | Exception]:
        """One process round trip, tried again once on a fresh process if it died."""
        count = sum(len(batch) for batch in sent)
        for attempt in (1, 2):
            try:
                digests, seconds = await self.context.run_sync(
                    self.batch_fn, sent, limiter=self.limiter
                )
            except trio_parallel.BrokenWorkerError as exc:
                self.broken += 1
                log.warning(
                    "a share check process died (%s) with %d shares; %s",
                    exc.args[0] if exc.args else exc,
                    count,
                    "trying them again on a fresh one" if attempt == 1 else "answering them 20",
                )
                continue
            if self.observe is not None:
                observe, each = self.observe, seconds / max(1, count)
                for _ in range(count):
                    observe(each)
            return list(digests)
        fault = ShareRejected(
            "share not checked: the pool's check process failed; please submit it again",
            ErrorCode.OTHER,
            pool_fault=True,
        )
        return [fault] * count

    async def next_pid(self) -> int:
        """The pid of the process that answers the next call (a fresh one if none idles)."""
        return await self.context.run_sync(process_id, limiter=self.limiter)

    async def warm(self) -> None:
        """Start every check process now, so that the first shares do not wait for one."""
        async with trio.open_nursery() as nursery:
            for _ in range(int(self.limiter.total_tokens)):
                nursery.start_soon(self._warm_one)

    async def _warm_one(self) -> None:
        try:
            await self.context.run_sync(ready, limiter=self.limiter)
        except trio_parallel.BrokenWorkerError as exc:  # the first share starts another
            log.warning("a share check process could not start: %s", exc)


def _answer(request: TicketRequest, digest: ProcAnswer | Exception) -> Answer:
    """A process's answer as the thread path gives it: the checked ticket or the error."""
    _, coinbase, header, _ = request
    if isinstance(digest, Exception):
        return digest
    if len(digest) == 3:
        value, meets_share, meets_network = digest
        assert isinstance(value, bytes)
        return CheckedTicket(value, header, coinbase, bool(meets_share), bool(meets_network))
    message, code = digest
    assert isinstance(message, str) and isinstance(code, int)
    if code < 0:  # a fault in the check, not a broken rule (logged as a bug upstream)
        return RuntimeError(message)
    return ProtocolError(message, code)


@asynccontextmanager
async def open_check_processes(
    count: int,
    thread_limiter: trio.CapacityLimiter,
    *,
    blob_path: Callable[[bytes], Path] | None = None,
    observe: Callable[[float], None] | None = None,
) -> AsyncIterator[CheckProcesses | None]:
    """``count`` check processes for as long as the block runs (None when ``count`` is 0:
    checks stay in threads); they start on the first call (:meth:`CheckProcesses.warm`)
    and are stopped when the block ends."""
    if count <= 0:
        yield None
        return
    async with trio_parallel.open_worker_context(
        idle_timeout=IDLE_SECONDS, grace_period=GRACE_SECONDS
    ) as context:
        yield CheckProcesses(
            context,
            trio.CapacityLimiter(count),
            thread_limiter,
            blob_path=blob_path,
            observe=observe,
        )
