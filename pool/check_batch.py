"""Share checks in batches: many submits, one worker-thread call, one vectorised pass.

A check thread that takes one share at a time spends most of its time in short numpy
calls, each a trip for the GIL against the event loop's thread, so two check threads
barely beat one. :class:`CheckBatcher` queues the submits (in arrival order); while fewer
than ``check_threads`` leaders run, a waiting submit's task **leads**: it takes up to
``batches_per_call`` batches of ``max_batch`` queued submits, checks them batch by batch
in one ``trio.to_thread.run_sync`` (behind the check limiter; one thread round trip for
several batches, the arrays of one batch at a time) with
:func:`pool.share_rules.check_tickets`, wakes their tasks, and goes on until its own
submit is done; then the next waiting submit leads. A leader finishes
its batches even if its own session is cancelled (shielded, bounded by the queue ahead of
it); a submit cancelled while it waits leaves the queue. Batches are smaller for large
``k`` (at most ``BATCH_K // k`` tickets: a batch's arrays stay a few MiB).

With ``processes`` (:class:`pool.check_procs.CheckProcesses`, ``[pool] check_processes``
> 0) a leader's batches go to a check process instead, in one round trip; the limiter
then bounds the processes busy at once.

The session's submit pipeline (:meth:`CheckBatcher.enqueue`) queues a submit with a
callback instead of a waiting task: :meth:`CheckBatcher.run`'s stage workers (one per
check thread or process) lead for those, and each answer is handed to its callback in the
event loop, one wake per batch instead of one per submit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from pool.check_procs import CheckProcesses
from pool.jobs import Job
from pool.share_rules import CheckedTicket, TicketRequest, check_tickets
from protocol.ticket import PassArrays

log = logging.getLogger("pool.shares")

BATCH_K = 8 * 4096
"""A batch holds at most this many columns of k in all (about 224 bytes of arrays each)."""


Answer = CheckedTicket | Exception
"""What a check gives one submit: its checked ticket, or the exception that rejects it."""


@dataclass(eq=False, slots=True)
class _Pending:
    """One queued submit, the answer once checked, and the event its task waits on (or,
    queued by :meth:`CheckBatcher.enqueue`, the callback that takes the answer)."""

    request: TicketRequest
    taken: bool = False
    answer: Answer | None = None
    wake: trio.Event | None = None  # made by the task when it waits
    done: Callable[[Answer], None] | None = None

    def settle(self) -> None:
        """Hand the answer on: wake the waiting task, or call the callback."""
        if self.done is None:
            if self.wake is not None:
                self.wake.set()
            return
        assert self.answer is not None
        try:
            self.done(self.answer)
        except Exception:  # a bug in the callback: the other submits still get theirs
            log.exception("a checked share's callback failed")


class CheckBatcher:
    """Checks submits in batches on at most ``limiter.total_tokens`` threads (or check
    processes) at once."""

    def __init__(
        self,
        limiter: trio.CapacityLimiter,
        *,
        max_batch: int = 8,
        batches_per_call: int = 4,
        observe: Callable[[float], None] | None = None,
        processes: CheckProcesses | None = None,
    ) -> None:
        self.limiter = limiter
        self.processes = processes
        self.max_batch = max_batch
        self.batches_per_call = batches_per_call  # one thread round trip for this many
        self.observe = observe  # seconds per share of each batch (timed in the thread)
        self._queue: deque[_Pending] = deque()
        self._arrays: deque[PassArrays] = deque()  # working arrays, one per check thread
        self._leaders = 0
        self._stage_wake = trio.Event()  # set when a stage worker could lead
        self.staged = False  # stage workers run (:meth:`run`): :meth:`enqueue` may be used

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The stage workers that lead for :meth:`enqueue`'s submits, one per token of the
        limiter; cancelled, they finish the batches they took."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(int(self.limiter.total_tokens)):
                    nursery.start_soon(self._stage)
                self.staged = True
                task_status.started()
        finally:
            self.staged = False

    async def _stage(self) -> None:
        while True:
            if self._queue and self._leaders < self.limiter.total_tokens:
                await self._lead(None)
            else:
                self._stage_wake = trio.Event()
                await self._stage_wake.wait()

    def enqueue(
        self,
        job: Job,
        coinbase: bytes,
        header: bytes,
        tile: tuple[int, int],
        done: Callable[[Answer], None],
    ) -> None:
        """Queue one submit without a task: ``done`` gets its answer once checked (in the
        event loop, from a stage worker). Only while :attr:`staged`."""
        assert self.staged, "enqueue needs the stage workers (CheckBatcher.run)"
        self._queue.append(_Pending((job, coinbase, header, tile), done=done))
        self._wake_next()

    async def check(
        self, job: Job, coinbase: bytes, header: bytes, tile: tuple[int, int]
    ) -> CheckedTicket:
        """The checked ticket of one submit; raises the exception that rejects it."""
        pending = _Pending((job, coinbase, header, tile))
        self._queue.append(pending)
        try:
            while pending.answer is None:
                if not pending.taken and self._leaders < self.limiter.total_tokens:
                    await self._lead(pending)
                else:
                    pending.wake = wake = trio.Event()
                    await wake.wait()
        finally:
            if not pending.taken:  # cancelled while queued: drop it, let the next lead
                with contextlib.suppress(ValueError):
                    self._queue.remove(pending)
                self._wake_next()
        if isinstance(pending.answer, Exception):
            raise pending.answer
        return pending.answer

    async def _lead(self, own: _Pending | None) -> None:
        """Check batches until ``own`` is taken (a stage worker: until the queue is empty)."""
        self._leaders += 1
        try:
            with trio.CancelScope(shield=True):
                while (own is None or not own.taken) and self._queue:
                    batch = self._take()
                    if self.processes is None:
                        await trio.to_thread.run_sync(self._run, batch, limiter=self.limiter)
                    else:
                        await self._run_in_process(batch)
                    for pending in batch:
                        pending.settle()
        finally:
            self._leaders -= 1
            self._wake_next()

    def _batch_size(self, k: int) -> int:
        return max(1, min(self.max_batch, BATCH_K // k))

    def _take(self) -> list[_Pending]:
        """Up to ``batches_per_call`` batches of the queue's head (checked one by one)."""
        size = self._batch_size(self._queue[0].request[0].work.shape.k)
        count = min(size * self.batches_per_call, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        for pending in batch:
            pending.taken = True
        return batch

    def _wake_next(self) -> None:
        """Ask the oldest waiting submit to lead when a batch could start."""
        if self._queue and self._leaders < self.limiter.total_tokens:
            wake = self._queue[0].wake
            if wake is not None:
                wake.set()
            self._stage_wake.set()

    def _split(self, taken: list[_Pending]) -> list[list[_Pending]]:
        """What was taken as batches of at most :meth:`_batch_size` (checked one by one)."""
        batches: list[list[_Pending]] = []
        start = 0
        while start < len(taken):
            size = self._batch_size(taken[start].request[0].work.shape.k)
            batches.append(taken[start : start + size])
            start += size
        return batches

    async def _run_in_process(self, taken: list[_Pending]) -> None:
        """Check what was taken in a check process (one round trip for all its batches)."""
        assert self.processes is not None
        batches = self._split(taken)
        try:
            answers = await self.processes.check([[p.request for p in b] for b in batches])
        except Exception as exc:  # a bug: every submit taken is rejected with it
            answers = [[exc] * len(b) for b in batches]
        for batch, batch_answers in zip(batches, answers, strict=True):
            for pending, answer in zip(batch, batch_answers, strict=True):
                pending.answer = answer

    def _run(self, taken: list[_Pending]) -> None:
        """In a worker thread: check what was taken, a batch at a time (its arrays stay
        small), and give each submit its answer."""
        try:  # working arrays of a thread that is done (deque pop/append are atomic)
            arrays = self._arrays.pop()
        except IndexError:
            arrays = PassArrays()
        try:
            self._check(taken, arrays)
        finally:
            self._arrays.append(arrays)

    def _check(self, taken: list[_Pending], arrays: PassArrays) -> None:
        for batch in self._split(taken):
            started = time.perf_counter()
            try:
                answers = check_tickets([p.request for p in batch], arrays)
            except Exception as exc:  # a bug: every submit of the batch is rejected with it
                answers = [exc] * len(batch)
            for pending, answer in zip(batch, answers, strict=True):
                pending.answer = answer
            if self.observe is not None:
                each = (time.perf_counter() - started) / len(batch)
                for _ in batch:
                    self.observe(each)
