"""The miner's jobs: the current one (``JobFeed``), each checked against its commitments
with its workload (``MinableJob``, which builds the headers), and the synthetic workloads
built for them (``WorkloadCache``).

``JobFeed.generation`` moves whenever earlier work must be abandoned (a clean job, a new
session, no session): a scan of an older generation is worthless.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from protocol.header import MAX_TIME_ROLL, Header, assemble_coinbase, coinbase_hash
from protocol.workload import Shape, Workload

from .client import Job


class JobFeed:
    """The current job; ``generation`` moves whenever earlier work must be abandoned."""

    def __init__(self) -> None:
        self.job: Job | None = None
        self.generation = 0
        self.version = 0
        self._changed = trio.Event()

    def publish(self, job: Job) -> None:
        old = self.job
        if old is None or job.notify.clean or job.client is not old.client:
            self.generation += 1
        self.job = job
        self._bump()

    def is_stale(self, generation: int) -> bool:
        """Whether work of ``generation`` has been abandoned since."""
        return self.generation != generation

    def withdraw(self) -> None:
        """No session: stop all work until the next job."""
        if self.job is not None:
            self.job = None
            self.generation += 1
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self, version: int) -> None:
        """Return once ``version`` is no longer current."""
        while self.version == version:
            await self._changed.wait()


@dataclass(frozen=True)
class MinableJob:
    """A job checked against its commitments, with its workload and targets."""

    job: Job
    workload: Workload
    share_target: int
    network_target: int

    def header(self, extranonce2: bytes, time_: int) -> bytes:
        n = self.job.notify
        coinbase = assemble_coinbase(n.coinbase1, self.job.extranonce1, extranonce2, n.coinbase2)
        return Header(
            n.version,
            n.height,
            n.prev_hash,
            coinbase_hash(coinbase),
            self.workload.work_root,
            time_,
            n.bits,
        ).encode()

    def header_time(self, now: float, roll: bool) -> int:
        """The job's time, rolled forward by the seconds since it arrived (≤ 600)."""
        base = self.job.notify.time
        if not roll:
            return base
        return base + max(0, min(MAX_TIME_ROLL, int(now - self.job.received)))


class WorkloadCache:
    """Synthetic workloads by (seed, shape), checked against the job's roots; keeps a few."""

    def __init__(self, size: int = 2) -> None:
        self._size = size
        self._items: dict[tuple[bytes, Shape], Workload] = {}
        self._lock = trio.Lock()

    async def get(self, seed: bytes, shape: Shape) -> Workload:
        async with self._lock:
            key = (seed, shape)
            workload = self._items.get(key)
            if workload is None:
                workload = await trio.to_thread.run_sync(_build_workload, seed, shape)
                self._items[key] = workload
                while len(self._items) > self._size:
                    self._items.pop(next(iter(self._items)))
            return workload


def _build_workload(seed: bytes, shape: Shape) -> Workload:
    workload = Workload.synthetic(seed, shape)
    _ = workload.work_root  # hash the rows here, off the trio thread
    return workload
