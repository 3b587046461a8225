"""The block unlocker: settle found blocks once the chain has decided on them.

For every block still found/credited, ask the node (``chain.block_status``):

- "confirmed" (the node counts enough confirmations for coinbase maturity) →
  ``confirm_block``: its credits become payable balances;
- "orphaned" → ``orphan_block``: its credits are void;
- "pending" → remember the confirmation count and wait;
- "unknown" (the node never accepted it, e.g. a wiped devnet) → orphaned once the block
  is older than ``unknown_grace`` seconds, pending before that.

Given a ``PplnsPolicy``, a block still "found" (the pool stopped between recording and
crediting it) is credited first, so a crash there loses nobody's reward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from protocol.chain import ChainError

from .chain.base import ChainAdapter
from .ledger.base import CONFIRMED, FOUND, ORPHANED, BlockRecord, Ledger
from .metrics import PoolMetrics
from .pplns import PplnsPolicy
from .rounds import RoundErrors

log = logging.getLogger(__name__)

DEFAULT_UNKNOWN_GRACE = 3600.0
T = TypeVar("T")


@dataclass
class UnlockReport:
    """What one unlock round did, by block id."""

    credited: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    orphaned: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


async def _unlock_one(
    ledger: Ledger,
    chain: ChainAdapter,
    block: BlockRecord,
    limiter: trio.CapacityLimiter,
    policy: PplnsPolicy | None,
    unknown_grace: float,
    report: UnlockReport,
) -> None:
    async def ledger_call(fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    status = await chain.block_status(block.hash)
    orphan = status.state == "orphaned" or (
        status.state == "unknown" and time.time() - block.time > unknown_grace
    )
    if orphan:
        await ledger_call(ledger.orphan_block, block.id)
        report.orphaned.append(block.id)
        log.info("block %d at height %d orphaned (%s)", block.id, block.height, status.state)
        return
    if block.status == FOUND and policy is not None:
        block = await ledger_call(
            ledger.credit_block, block.id, policy.factor, policy.fee_bps, policy.fee_address
        )
        report.credited.append(block.id)
    if status.state in ("pending", "confirmed") and status.confirmations != block.confirmations:
        await ledger_call(ledger.set_block_confirmations, block.id, status.confirmations)
    if status.state == "confirmed":
        if block.status == FOUND:
            log.warning("block %d is mature but not credited; no PPLNS policy given", block.id)
            report.pending.append(block.id)
            return
        await ledger_call(ledger.confirm_block, block.id)
        report.confirmed.append(block.id)
        log.info("block %d at height %d confirmed", block.id, block.height)
        return
    report.pending.append(block.id)


async def unlock_round(
    ledger: Ledger,
    chain: ChainAdapter,
    limiter: trio.CapacityLimiter,
    *,
    policy: PplnsPolicy | None = None,
    unknown_grace: float = DEFAULT_UNKNOWN_GRACE,
) -> UnlockReport:
    """Settle every found/credited block the chain has decided on (see module doc)."""
    report = UnlockReport()
    blocks = await trio.to_thread.run_sync(ledger.unlockable_blocks, limiter=limiter)
    for block in blocks:
        try:
            await _unlock_one(ledger, chain, block, limiter, policy, unknown_grace, report)
        except (ChainError, OSError) as exc:
            log.warning("block %d: chain error, will retry: %s", block.id, exc)
            report.failed[block.id] = str(exc)
    return report


async def run_unlocker(
    ledger: Ledger,
    chain: ChainAdapter,
    interval: float,
    limiter: trio.CapacityLimiter,
    metrics: PoolMetrics,
    *,
    policy: PplnsPolicy | None = None,
    unknown_grace: float = DEFAULT_UNKNOWN_GRACE,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`unlock_round` every ``interval`` seconds, forever (cancel to stop)."""
    if interval <= 0:
        raise ValueError(f"unlock interval must be positive, got {interval}")
    errors = RoundErrors(log, "unlock round")
    task_status.started()
    while True:
        try:
            report = await unlock_round(
                ledger, chain, limiter, policy=policy, unknown_grace=unknown_grace
            )
            for _ in report.confirmed:
                metrics.block(CONFIRMED)
            for _ in report.orphaned:
                metrics.block(ORPHANED)
        except Exception as exc:
            errors.failed(exc)
        else:
            errors.succeeded()
        await trio.sleep(interval)
