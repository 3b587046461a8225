"""The stalled-device watchdog: a device whose scan shows no sign of life is restarted.

A scan shows life when it starts, when it ends, and every time the backend polls its
``should_stop`` (backends poll between slabs or chunks). A device idle for want of a
job is not stalled. A stalled device is reported in the log and the stats, its scan is
abandoned (the stop flag is set; the thread is left to finish on its own) and its
backend is reopened by the miner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .miner import Miner
from .stats import WorkerStats

log = logging.getLogger(__name__)


class Watchdog:
    """Checks every device of ``miner`` a few times per ``stall_timeout``."""

    def __init__(
        self,
        miner: Miner,
        stats: WorkerStats,
        stall_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        self.miner = miner
        self.stats = stats
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.restarts = 0

    def stalled(self) -> list[tuple[int, float]]:
        """(device index, seconds without progress) of every stalled device."""
        now = self.clock()
        found = []
        for slot in self.miner.slots:
            progress = slot.last_progress()
            if progress is not None and now - progress > self.stall_timeout:
                found.append((slot.index, now - progress))
        return found

    def check(self) -> int:
        """One round: restart every stalled device; returns how many."""
        stalled = self.stalled()
        for index, idle in stalled:
            slot = self.miner.slots[index]
            log.error("device %s stalled: no progress for %.1fs; restarting it", slot.name, idle)
            self.stats.device(slot.name).stalled = True
            self.restarts += 1
            self.miner.restart(index)
        return len(stalled)

    async def run(self) -> None:
        period = max(0.05, self.stall_timeout / 4)
        while True:
            await trio.sleep(period)
            self.check()
