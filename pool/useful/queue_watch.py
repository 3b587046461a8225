"""Telling the pool's sessions that units are queued (submitted, or back from an ended lease
or a rejected result), so idle capable sessions lease one at once.

The queue reports its unit counts from any thread (:meth:`QueueWatch.units_changed`);
:meth:`QueueWatch.run` turns them, on the event loop, into calls of the pool's
``on_units_queued`` (several changes close together make one call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from pool.useful import UsefulMetrics


class QueueWatch:
    """Unit counts → metrics, and a wake-up of :meth:`run` while units are queued."""

    def __init__(self, metrics: UsefulMetrics) -> None:
        self.metrics = metrics
        self._token: trio.lowlevel.TrioToken | None = None  # set while run() runs
        self._queued = trio.Event()
        self.queued = 0  # units queued, as last reported

    def units_changed(self, counts: dict[str, int]) -> None:
        """The queue's unit counts changed (any thread): metrics, and wake :meth:`run`."""
        self.metrics.set_unit_counts(counts)
        self.queued = counts.get("queued", 0)
        token = self._token
        if token is not None and counts.get("queued", 0) > 0:
            with contextlib.suppress(trio.RunFinishedError):  # the pool is stopping
                token.run_sync_soon(self.poke)

    def poke(self) -> None:
        """Offer the queued units again (event loop only)."""
        self._queued.set()

    async def run(
        self,
        on_units_queued: Callable[[], None],
        queued_now: Callable[[], Awaitable[int]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_units_queued`` (it must not block) whenever units are queued, and once
        at start if ``queued_now()`` says some are. Runs until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            if await queued_now() > 0:
                on_units_queued()
            while True:
                await self._queued.wait()
                self._queued = trio.Event()
                on_units_queued()
        finally:
            self._token = None
