"""Batched, durable share commits: an acknowledged share is never lost (DESIGN §4).

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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from pool.ledger.base import Ledger, ShareRecord

log = logging.getLogger("pool.sharelog")


class ShareLogError(Exception):
    """A share could not be committed; it was not acknowledged."""


class _Batch:
    """Shares waiting for the same commit, and the event their submits wait on."""

    def __init__(self) -> None:
        self.records: list[ShareRecord] = []
        self.stored: list[bool] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


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
        self.committed = 0

    async def commit(self, record: ShareRecord) -> bool:
        """Queue ``record``; once durable, return whether the ledger holds it as this share
        (False: a duplicate of a stored one). Raise ``ShareLogError`` if not stored."""
        if self._closed:
            raise ShareLogError("the share log is shut down")
        async with self._room:
            batch = self._batch
            index = len(batch.records)
            batch.records.append(record)
            self._wakeup.set()
            if len(batch.records) >= self.max_batch:
                self._full.set()
            await batch.done.wait()
        if batch.error is not None:
            raise ShareLogError(f"share not stored: {batch.error}") from batch.error
        return batch.stored[index]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer task. Cancelling it commits the queued shares first."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                with trio.move_on_after(self.interval):
                    await self._full.wait()
                await self._flush()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                while self._batch.records:
                    await self._flush()

    async def _flush(self) -> None:
        batch = self._batch
        self._batch = _Batch()
        self._wakeup = trio.Event()
        self._full = trio.Event()
        if not batch.records:
            batch.done.set()
            return
        started = time.perf_counter()
        try:
            stored = await trio.to_thread.run_sync(self.ledger.store_shares, batch.records,
                                                   limiter=self.limiter)
            if len(stored) != len(batch.records):
                raise RuntimeError(f"the ledger answered {len(stored)} of "
                                   f"{len(batch.records)} shares")
            batch.stored = stored
        except Exception as exc:  # the ledger's own error, disk full, ...
            log.error("could not store %d shares: %s", len(batch.records), exc)
            batch.error = exc
        else:
            self.committed += sum(batch.stored)
            if self._observe is not None:
                self._observe(time.perf_counter() - started)
        finally:
            batch.done.set()
