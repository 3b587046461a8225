"""Idempotent payouts: pay confirmed balances with ``send_many``, never twice.

One round:

1. Reconcile every pending batch (written, maybe sent, not marked done — the trace of
   a crash or of a failed send): if the node knows its key (``chain.payment``), mark it
   completed with that txid; otherwise send it again under the same key
   (``send_many`` is idempotent by key on the node) and mark it completed.
2. If nothing is left unresolved, write a new batch of the payable balances (debiting
   them, key = uuid4 hex) *before* sending, send it, and mark it completed.

A crash between any two steps leaves a pending batch with its key, which step 1 of the
next round settles: a balance is debited exactly once, and the node pays a key once.
A batch whose send fails stays pending (its balances debited) and is retried next round;
no new batch is written while an old one is unresolved, so failures do not pile up.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import trio

from protocol.chain import ChainError
from protocol.header import coins

from .chain.base import ChainAdapter
from .ledger.base import Ledger, PaymentBatch
from .metrics import PoolMetrics
from .rounds import RoundErrors

log = logging.getLogger(__name__)

# Errors of one send that leave the batch pending for the next round.
SEND_ERRORS = (ChainError, OSError)


@dataclass
class PayoutReport:
    """What one payout round did."""

    reconciled: list[str] = field(default_factory=list)  # node had the key: completed
    resent: list[str] = field(default_factory=list)  # node lacked it: sent again, completed
    failed: dict[str, str] = field(default_factory=dict)  # key -> error; still pending
    batch: PaymentBatch | None = None  # the new batch of this round, if any
    paid: int = 0  # base units completed this round (all batches)


async def _settle(
    ledger: Ledger,
    chain: ChainAdapter,
    batch: PaymentBatch,
    limiter: trio.CapacityLimiter,
    txid: str | None,
) -> PaymentBatch:
    """Send ``batch`` unless ``txid`` says the node has it; mark it completed."""
    if txid is None:
        txid = await chain.send_many(batch.key, dict(batch.outputs))
    return await trio.to_thread.run_sync(
        ledger.complete_payment_batch, batch.key, txid, limiter=limiter
    )


async def payout_round(
    ledger: Ledger, chain: ChainAdapter, min_payout: int, limiter: trio.CapacityLimiter
) -> PayoutReport:
    """Reconcile pending batches, then pay every balance of at least ``min_payout``."""
    report = PayoutReport()
    pending = await trio.to_thread.run_sync(ledger.pending_payment_batches, limiter=limiter)
    for batch in pending:
        try:
            txid = await chain.payment(batch.key)
            done = await _settle(ledger, chain, batch, limiter, txid)
        except SEND_ERRORS as exc:
            log.warning("payment batch %s still pending: %s", batch.key, exc)
            report.failed[batch.key] = str(exc)
            continue
        (report.reconciled if txid is not None else report.resent).append(batch.key)
        report.paid += done.total
        log.info("payment batch %s settled after restart: txid %s", batch.key, done.txid)
    if report.failed:
        return report

    outputs = await trio.to_thread.run_sync(ledger.payable, min_payout, limiter=limiter)
    if not outputs:
        return report
    key = uuid.uuid4().hex
    batch = await trio.to_thread.run_sync(
        ledger.create_payment_batch, key, outputs, limiter=limiter
    )
    report.batch = batch
    try:
        done = await _settle(ledger, chain, batch, limiter, None)
    except SEND_ERRORS as exc:
        log.warning("payment batch %s not sent, will retry: %s", key, exc)
        report.failed[key] = str(exc)
        return report
    report.batch = done
    report.paid += done.total
    log.info("paid %s coins to %d addresses, txid %s", coins(done.total), len(outputs), done.txid)
    return report


async def update_payout_metrics(
    ledger: Ledger, min_payout: int, limiter: trio.CapacityLimiter, metrics: PoolMetrics
) -> None:
    """Set the pending-payout and payout-lag gauges from the ledger."""
    owed = await trio.to_thread.run_sync(ledger.pending_payout_total, limiter=limiter)
    since = await trio.to_thread.run_sync(ledger.oldest_payable_since, min_payout, limiter=limiter)
    metrics.pending_payout.set(owed)
    metrics.payout_lag_seconds.set(0.0 if since is None else max(0.0, time.time() - since))


async def run_payouts(
    ledger: Ledger,
    chain: ChainAdapter,
    interval: float,
    min_payout: int,
    limiter: trio.CapacityLimiter,
    metrics: PoolMetrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`payout_round` every ``interval`` seconds, forever (cancel to stop).

    The first round runs at once (it settles what a crash left pending). A round that
    fails on a ledger or chain error is logged and retried next interval.
    """
    if interval <= 0:
        raise ValueError(f"payout interval must be positive, got {interval}")
    errors = RoundErrors(log, "payout round")
    task_status.started()
    while True:
        try:
            report = await payout_round(ledger, chain, min_payout, limiter)
            await update_payout_metrics(ledger, min_payout, limiter, metrics)
            metrics.paid.inc(report.paid)
        except Exception as exc:
            errors.failed(exc)
        else:
            errors.succeeded()
        await trio.sleep(interval)
