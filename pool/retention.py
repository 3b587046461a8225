"""Retention as a pool task: prune shares that no PPLNS window can still need.

Every ``interval`` seconds :func:`retention_round` deletes the shares older than
``share_history_seconds`` that ``Ledger.prune_shares`` finds outside every window a block
can still use: the window of a block at ``now - block_grace_seconds`` (a block found but
not recorded yet; later blocks' windows start no earlier) and of every block not yet
credited. Credited, confirmed and orphaned blocks keep their credits, not their shares.
"""

from __future__ import annotations

import logging
import time

import trio

from pool.ledger.base import Ledger
from pool.metrics import PoolMetrics

log = logging.getLogger("pool.retention")


def retention_round(ledger: Ledger, factor: float, history: float, grace: float,
                    now: float | None = None) -> int:
    """One pruning pass (synchronous: call it in the ledger thread); shares deleted."""
    now = time.time() if now is None else now
    return ledger.prune_shares(now - history, factor, blocks_after=now - max(grace, 0.0))


async def run_retention(ledger: Ledger, limiter: trio.CapacityLimiter, interval: float,
                        factor: float, history: float, grace: float,
                        metrics: PoolMetrics | None = None, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run :func:`retention_round` every ``interval`` seconds, forever (cancel to stop)."""
    if interval <= 0:
        raise ValueError(f"retention interval must be positive, got {interval}")
    if metrics is not None:
        metrics.retention_interval.set(interval)
    task_status.started()
    while True:
        try:
            gone = await trio.to_thread.run_sync(retention_round, ledger, factor, history,
                                                 grace, limiter=limiter)
            if gone:
                log.info("retention: pruned %d share(s)", gone)
            if metrics is not None:
                rows = await trio.to_thread.run_sync(ledger.share_count, limiter=limiter)
                metrics.share_rows.set(rows)
                metrics.retention_last_run.set(time.time())
        except Exception:
            log.exception("retention round failed")
        await trio.sleep(interval)
