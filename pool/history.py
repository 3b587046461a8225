"""Bounded hashrate history for the dashboard: one sample per interval, pool-wide and per miner.

:class:`HashrateHistory` keeps the newest ``capacity`` samples (e.g. one a minute for 24 h)
of the pool's hashrate and of each miner's, in ring buffers. Memory is bounded whatever the
number of miners: at most ``max_miners`` miners are tracked; when a new one would exceed
that, the miner with the oldest last non-zero sample is dropped. :func:`run_sampler` records
a sample from the pool's live snapshot every ``interval`` seconds until cancelled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

import trio

from pool.api_data import PoolSnapshot

WINDOW = "1m"
"""The hashrate window sampled (the shortest EWMA, so the chart follows changes)."""


class HashrateHistory:
    """Ring buffers of ``(unix_time, MAC/s)`` samples, pool-wide and per miner address."""

    def __init__(self, capacity: int = 1440, max_miners: int = 1000) -> None:
        if capacity < 1 or max_miners < 0:
            raise ValueError("history capacity must be >= 1 and max_miners >= 0")
        self.capacity = capacity
        self.max_miners = max_miners
        self.pool: deque[tuple[float, float]] = deque(maxlen=capacity)
        self._miners: dict[str, deque[tuple[float, float]]] = {}
        self._last_active: dict[str, float] = {}

    def record(self, now: float, pool_rate: float, miner_rates: Mapping[str, float]) -> None:
        """Add one sample at ``now``: the pool's rate and each live miner's (others get 0)."""
        self.pool.append((now, pool_rate))
        for address in miner_rates:
            if address not in self._miners:
                if len(self._miners) >= self.max_miners:
                    if not self._miners:
                        continue
                    oldest = min(self._last_active, key=self._last_active.__getitem__)
                    del self._miners[oldest], self._last_active[oldest]
                self._miners[address] = deque(maxlen=self.capacity)
        for address, series in list(self._miners.items()):
            rate = miner_rates.get(address, 0.0)
            series.append((now, rate))
            if rate > 0:
                self._last_active[address] = now
            else:
                self._last_active.setdefault(address, now)
            if not any(r > 0 for _, r in series):
                del self._miners[address], self._last_active[address]

    def pool_series(self) -> list[list[float]]:
        """The pool's samples, oldest first, as ``[time, MAC/s]`` pairs."""
        return [[t, r] for t, r in self.pool]

    def miner_series(self, address: str) -> list[list[float]] | None:
        """One miner's samples, oldest first; None if the miner is not tracked."""
        series = self._miners.get(address)
        return None if series is None else [[t, r] for t, r in series]

    def sample(self, live: PoolSnapshot, now: float | None = None) -> None:
        """Record one sample from the pool's live snapshot."""
        rates = {
            address: sum(w.hashrate.get(WINDOW, 0.0) for w in workers)
            for address, workers in live.miners.items()
        }
        self.record(time.time() if now is None else now, live.hashrate.get(WINDOW, 0.0), rates)


async def run_sampler(
    history: HashrateHistory,
    snapshot: Callable[[], PoolSnapshot],
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample ``snapshot()`` into ``history`` now and every ``interval`` s until cancelled."""
    task_status.started()
    while True:
        history.sample(snapshot())
        await trio.sleep(interval)
