"""Batched, durable share commits: an acknowledged share is never lost (SPEC §12.8).

Submits call :meth:`ShareLog.commit` with their :class:`ShareRecord`; it returns only once
the share is in the ledger (``store_shares`` is durable on return), and says whether the
ledger took it as this share: False when its ticket digest is already stored for another
share (a duplicate, which must not be acknowledged). One writer task
collects what arrived within ``interval`` seconds (or ``max_batch`` shares, whichever comes
first) and commits the batch in a worker thread, so many submits share one fsync.

If a commit fails, every submit of that batch gets :class:`ShareLogError` (the pool then
answers the miner with an error instead of an ack) and the writer carries on. At most
``max_pending`` shares wait at a time; further submits wait for room (backpressure).
On shutdown ``run`` commits whatever is still queued before it returns.

:meth:`ShareLog.enqueue` is the same commit without a waiting task (the submit pipeline):
the record joins the batch at once and a callback gets the outcome when the batch is done;
it takes a record only when :meth:`commit` would not wait (the ledger up, room free).

A failed commit also means the ledger is unavailable (reported once to
:class:`~pool.health.DependencyHealth`): the writer checks it with a read when the next
submit arrives (or after ``retry_interval`` seconds), then, while the checks fail, every
``retry_interval`` seconds. Submits that arrive during a check wait for it, at most
``check_wait`` seconds (a check of a hung server can take the ledger's whole connect
timeout); otherwise, and between checks, they are refused at once (``ShareLogError``;
nothing is buffered). When a check answers, shares are committed again, and the ledger is
reported up by the first commit that succeeds (so a ledger that reads but cannot write
does not flap). A share that was acknowledged was committed; nothing else is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from pool.health import LEDGER, DependencyHealth
from pool.ledger.base import Ledger, ShareRecord

log = logging.getLogger("pool.sharelog")


class ShareLogError(Exception):
    """A share could not be committed; it was not acknowledged."""


Committed = Callable[[bool | ShareLogError], None]
"""Told a queued record's outcome: whether the ledger holds it as this share, or why not."""


class _Batch:
    """Shares waiting for the same commit, the event their submits wait on and the
    callbacks of the records queued without a task (index, callback)."""

    def __init__(self) -> None:
        self.records: list[ShareRecord] = []
        self.stored: list[bool] = []
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.callbacks: list[tuple[int, Committed]] = []

    def outcome(self, index: int) -> bool:
        """Whether record ``index`` is stored as new (raises ``ShareLogError`` if not stored)."""
        if self.error is not None:
            raise ShareLogError(f"share not stored: {self.error}") from self.error
        if index >= len(self.stored):
            raise ShareLogError("share not stored: the commit did not finish")
        return self.stored[index]

    def finish(self, room: trio.Semaphore) -> None:
        """Wake the waiting submits and tell each callback its record's outcome."""
        self.done.set()
        callbacks, self.callbacks = self.callbacks, []
        for index, callback in callbacks:
            room.release()
            try:
                stored: bool | ShareLogError = self.outcome(index)
            except ShareLogError as exc:
                stored = exc
            try:
                callback(stored)
            except Exception:  # a bug in the callback: the rest still get theirs
                log.exception("a committed share's callback failed")


class ShareLog:
    """Queue of accepted shares in front of the ledger; see the module doc."""

    def __init__(
        self,
        ledger: Ledger,
        ledger_limiter: trio.CapacityLimiter,
        *,
        interval: float = 0.005,
        max_batch: int = 256,
        max_pending: int = 10000,
        observe_commit: Callable[[float], None] | None = None,
        health: DependencyHealth | None = None,
        retry_interval: float = 1.0,
        check_wait: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.limiter = ledger_limiter
        self.interval = interval
        self.max_batch = max_batch
        self._room = trio.Semaphore(max_pending)
        self._batch = _Batch()
        self._wakeup = trio.Event()
        self._full = trio.Event()
        self._closed = False
        self._observe = observe_commit
        self.health = health if health is not None else DependencyHealth()
        self.retry_interval = retry_interval
        self.check_wait = check_wait
        self._unavailable: str | None = None  # why the ledger cannot commit, while it cannot
        self._checking = False  # a check of the ledger is running
        self._on_demand = False  # the next submit starts a check (first one after a failure)
        self._wanted = trio.Event()  # a submit asks for a check
        self._checked = trio.Event()  # set when the next (or running) check ends
        self.committed = 0
        self.refused = 0  # submits refused at once while the ledger was unavailable

    @property
    def available(self) -> bool:
        """False from a failed commit until the ledger answers again."""
        return self._unavailable is None

    async def commit(self, record: ShareRecord) -> bool:
        """Queue ``record``; once durable, return whether the ledger holds it as this share
        (False: a duplicate of a stored one). Raise ``ShareLogError`` if not stored."""
        if self._closed:
            raise ShareLogError("the share log is shut down")
        if self._unavailable is not None and (self._checking or self._on_demand):
            checked = self._checked
            self._wanted.set()
            with trio.move_on_after(self.check_wait):
                await checked.wait()
        if self._unavailable is not None:
            self.refused += 1
            raise ShareLogError(f"ledger unavailable: {self._unavailable}")
        try:
            self._room.acquire_nowait()  # the usual case: room at once, no extra checkpoint
        except trio.WouldBlock:
            await self._room.acquire()
        try:
            batch, index = self._append(record)
            await batch.done.wait()
        finally:
            self._room.release()
        return batch.outcome(index)

    def enqueue(self, record: ShareRecord, committed: Committed) -> bool:
        """Queue ``record`` without waiting; ``committed`` gets its outcome once the batch
        is done. False (nothing queued) when :meth:`commit` would wait or refuse: shut
        down, the ledger unavailable, or no room."""
        if self._closed or self._unavailable is not None:
            return False
        try:
            self._room.acquire_nowait()
        except trio.WouldBlock:
            return False
        batch, index = self._append(record)
        batch.callbacks.append((index, committed))
        return True

    def _append(self, record: ShareRecord) -> tuple[_Batch, int]:
        """Add ``record`` to the next batch (its room taken) and wake the writer."""
        batch = self._batch
        batch.records.append(record)
        self._wakeup.set()
        if len(batch.records) >= self.max_batch:
            self._full.set()
        return batch, len(batch.records) - 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task. Cancelling it commits the queued shares first."""
        task_status.started()
        try:
            while True:
                if self._unavailable is not None:
                    await self._wait_for_ledger()
                    continue
                await self._wakeup.wait()
                with trio.move_on_after(self.interval):
                    await self._full.wait()
                await self._flush()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                while self._batch.records:
                    await self._flush()

    async def _wait_for_ledger(self) -> None:
        with trio.move_on_after(self.retry_interval):
            await self._wanted.wait()
        self._wanted = trio.Event()
        self._checking = True
        try:
            await trio.to_thread.run_sync(self.ledger.schema_version, limiter=self.limiter)
        except Exception as exc:
            log.debug("ledger still unavailable: %s", exc)
            self._on_demand = False  # refuse at once until the next timed check
        else:
            self._unavailable = None  # try commits again; the first that succeeds reports up
        finally:
            self._checking = False
            checked, self._checked = self._checked, trio.Event()
            checked.set()

    def _fail_queued(self, reason: str) -> None:
        """The ledger just failed: the shares queued behind the failed batch fail too."""
        batch = self._batch
        self._batch = _Batch()
        batch.error = ShareLogError(f"ledger unavailable: {reason}")
        batch.finish(self._room)

    async def _flush(self) -> None:
        batch = self._batch
        self._batch = _Batch()
        self._wakeup = trio.Event()
        self._full = trio.Event()
        if not batch.records:
            batch.finish(self._room)
            return
        started = time.perf_counter()
        try:
            with trio.CancelScope(shield=True):  # a batch taken is committed (or fails)
                stored = await trio.to_thread.run_sync(
                    self.ledger.store_shares, batch.records, limiter=self.limiter
                )
            if len(stored) != len(batch.records):
                raise RuntimeError(
                    f"the ledger answered {len(stored)} of {len(batch.records)} shares"
                )
            batch.stored = stored
        except Exception as exc:  # the ledger's own error, disk full, ...
            log.debug("could not store %d shares: %s", len(batch.records), exc)
            batch.error = exc
            if self._unavailable is None and not self._closed:
                self._unavailable = str(exc) or type(exc).__name__
                # Reported once per outage: a no-op while it is reported down.
                self.health.down(
                    LEDGER,
                    f"{self._unavailable} ({len(batch.records)} shares "
                    "not stored; submits answered 20 until it is back)",
                )
                self._on_demand = True
                self._fail_queued(self._unavailable)
        else:
            self.committed += sum(batch.stored)
            self.health.up(LEDGER)
            if self._observe is not None:
                self._observe(time.perf_counter() - started)
        finally:
            batch.finish(self._room)
