"""Retention as a pool task: bounded disk over months.

Every ``interval`` seconds :func:`retention_round` deletes the shares older than
``share_history_seconds`` that ``Ledger.prune_shares`` finds outside every window a block
can still use: the window of a block at ``now - block_grace_seconds`` (a block found but
not recorded yet; later blocks' windows start no earlier) and of every block not yet
credited. Credited, confirmed and orphaned blocks keep their credits, not their shares.

With useful work on, :func:`useful_retention_round` forgets customers' items finished more
than ``useful_history_seconds`` ago (their results with them) and deletes the blobs no
remembered item needs, except those stored in the last ``blob_grace_seconds`` (an upload
whose item is not recorded yet). Each round exports the sizes: share rows, work items,
blob bytes and the SQLite files' bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pool.ledger.base import Ledger
from pool.metrics import PoolMetrics
from pool.rounds import RoundErrors

if TYPE_CHECKING:
    from pool.useful.service import UsefulWork

log = logging.getLogger("pool.retention")


def retention_round(
    ledger: Ledger, factor: float, history: float, grace: float, now: float | None = None
) -> int:
    """One pruning pass (synchronous: call it in the ledger thread); shares deleted."""
    now = time.time() if now is None else now
    return ledger.prune_shares(now - history, factor, blocks_after=now - max(grace, 0.0))


def useful_retention_round(
    useful: UsefulWork, history: float, blob_grace: float, now: float | None = None
) -> tuple[int, int]:
    """Forget old finished items, then collect unneeded blobs (synchronous: call it in a
    thread); returns (items forgotten, blobs deleted)."""
    now = time.time() if now is None else now
    items = useful.queue.prune_finished(now - history)
    blobs = useful.blobs.collect(useful.queue.referenced_blobs(), older_than=now - blob_grace)
    return items, blobs


def file_bytes(path: Path) -> int:
    """Bytes of a SQLite database and its WAL (0 for files that do not exist)."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def run_retention(
    ledger: Ledger,
    limiter: trio.CapacityLimiter,
    interval: float,
    factor: float,
    history: float,
    grace: float,
    metrics: PoolMetrics,
    *,
    useful: UsefulWork | None = None,
    useful_history: float = 604800.0,
    blob_grace: float = 3600.0,
    databases: dict[str, Path] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`retention_round` (and :func:`useful_retention_round`) every ``interval``
    seconds, forever (cancel to stop); ``databases`` names the SQLite files to measure."""
    if interval <= 0:
        raise ValueError(f"retention interval must be positive, got {interval}")
    metrics.retention_interval.set(interval)
    errors = RoundErrors(log, "retention round")
    task_status.started()
    while True:
        try:
            gone = await trio.to_thread.run_sync(
                retention_round, ledger, factor, history, grace, limiter=limiter
            )
            if gone:
                log.info("retention: pruned %d share(s)", gone)
            if useful is not None:
                items, blobs = await trio.to_thread.run_sync(
                    useful_retention_round,
                    useful,
                    useful_history,
                    blob_grace,
                    limiter=useful.limiter,
                )
                if items or blobs:
                    log.info(
                        "retention: forgot %d finished work item(s), deleted %d blob(s)",
                        items,
                        blobs,
                    )
            rows = await trio.to_thread.run_sync(ledger.share_count, limiter=limiter)
            metrics.share_rows.set(rows)
            if useful is not None:
                metrics.work_items.set(
                    await trio.to_thread.run_sync(useful.queue.item_count, limiter=useful.limiter)
                )
                metrics.blob_bytes.set(
                    await trio.to_thread.run_sync(useful.blobs.total_bytes, limiter=useful.limiter)
                )
            for name, path in (databases or {}).items():
                metrics.database_bytes.labels(database=name).set(file_bytes(path))
            metrics.retention_last_run.set(time.time())
        except Exception as exc:
            errors.failed(exc)
        else:
            errors.succeeded()
        await trio.sleep(interval)
