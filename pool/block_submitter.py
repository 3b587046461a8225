"""Found blocks are never lost to a node hiccup (SPEC §12.11).

A block is recorded in the ledger with its encoded :class:`BlockSubmission` ("submitting")
before it is first submitted. When the node does not answer, the block stays so, across
restarts too, and :class:`BlockSubmitter` tries it again every ``interval`` seconds until
the node answers or the chain has moved past it:

- accepted (or "duplicate": the node already has it, the answer to an earlier try was
  lost) → "found", credited by PPLNS at once (:func:`credit_accepted_block`, the same step
  ``ShareChecker`` takes on acceptance);
- refused ("stale", invalid) → "rejected" with the node's reason;
- the chain's tip at or past the block's height, the node not knowing the block →
  "rejected" as stale without another try (its parent is no longer the tip);
- no answer → kept, tried again next round.

It talks to the rest of the pool only through the ledger and the chain adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from pool.chain.base import ChainAdapter
from pool.ledger.base import BlockRecord, Ledger, LedgerError, PendingSubmission
from pool.metrics import PoolMetrics
from pool.pplns import PplnsPolicy
from protocol.chain import BlockSubmission, ChainError, ChainUnavailable, SubmitResult
from protocol.header import coins

log = logging.getLogger("pool.blocks")

LedgerRun = Callable[..., Awaitable[Any]]  # run(fn, *args): a ledger call in its thread


def encode_submission(sub: BlockSubmission) -> bytes:
    """What the ledger keeps of a block's submission: its RPC map as msgpack."""
    return bytes(msgpack.packb(sub.to_wire(), use_bin_type=True))


def decode_submission(raw: bytes) -> BlockSubmission:
    return BlockSubmission.from_wire(msgpack.unpackb(raw, raw=False))


def node_verdict(result: SubmitResult) -> tuple[bool, str]:
    """(accepted, reason) of the node's answer; "duplicate" means the node has the block."""
    return result.accepted or result.reason == "duplicate", result.reason


def unanswered(exc: BaseException) -> bool:
    """Whether a failed submit got no answer (try again) rather than a refusal."""
    return isinstance(exc, ChainUnavailable | OSError) or not isinstance(exc, ChainError)


async def credit_accepted_block(
    run: LedgerRun, ledger: Ledger, block_id: int, policy: PplnsPolicy
) -> tuple[bool, BlockRecord | None]:
    """The node accepted block ``block_id``: mark it found and credit it by PPLNS.

    Returns (whether this call moved it from "submitting", the credited block). A ledger
    failure is logged and gives None: a block left "submitting" is tried again (the node
    answers "duplicate"), one left "found" is credited by the unlocker.
    """
    moved = False
    try:
        moved = bool(await run(ledger.block_submitted, block_id))
        credited: BlockRecord = await run(
            ledger.credit_block, block_id, policy.factor, policy.fee_bps, policy.fee_address
        )
        credits: dict[str, int] = await run(ledger.block_credits, block_id)
    except Exception as exc:
        log.error(
            "block %d accepted, but the ledger could not credit it yet (retried later): %s",
            block_id,
            exc,
        )
        return moved, None
    log.info(
        "block %d credited by PPLNS: %s to %d address(es) over %s shares, fee %s",
        credited.height,
        coins(sum(credits.values())),
        len(credits),
        credited.shares_used,
        coins(credited.fee or 0),
    )
    return moved, credited


@dataclass
class ResubmitReport:
    """What one round did, by block id."""

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)


class BlockSubmitter:
    """Resubmits the ledger's pending blocks every ``interval`` seconds (cancel to stop).

    ``grace``: a block never tried yet (attempts 0) is left alone this many seconds after
    it was recorded, its first submission being still in flight in the share checker.
    """

    def __init__(
        self,
        ledger: Ledger,
        chain: ChainAdapter,
        limiter: trio.CapacityLimiter,
        metrics: PoolMetrics,
        policy: PplnsPolicy,
        *,
        interval: float,
        grace: float,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"resubmit interval must be positive, got {interval}")
        self.ledger = ledger
        self.chain = chain
        self.limiter = limiter
        self.metrics = metrics
        self.policy = policy
        self.interval = interval
        self.grace = grace

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.round()
            except LedgerError as exc:  # reported by the ledger's health; tried next round
                log.debug("block resubmission round: ledger unavailable: %s", exc)
            except Exception:
                log.exception("block resubmission round failed")
            await trio.sleep(self.interval)

    async def round(self) -> ResubmitReport:
        """Try every pending block once (see the module doc)."""
        report = ResubmitReport()
        pending: list[PendingSubmission] = await self._run(self.ledger.pending_submissions)
        self.metrics.block_submissions_pending.set(len(pending))
        due = []
        for p in pending:
            if p.attempts == 0 and time.time() - p.block.time < self.grace:
                report.pending.append(p.block.id)  # its first try may still be running
            else:
                due.append(p)
        if not due:
            return report
        try:
            tip_height, _ = await self.chain.tip()
        except Exception as exc:
            log.debug("chain did not answer node.tip; %d block(s) stay pending: %s", len(due), exc)
            report.pending += [p.block.id for p in due]
            return report
        for p in due:
            try:
                await self._one(p, tip_height, report)
            except Exception as exc:  # the ledger, say: the block stays pending
                report.pending.append(p.block.id)
                log.warning(
                    "block %d at height %d: resubmission not settled, tried again next round: %s",
                    p.block.id,
                    p.block.height,
                    exc,
                )
        left = len(pending) - len(report.accepted) - len(report.rejected)
        self.metrics.block_submissions_pending.set(left)
        return report

    async def _one(self, p: PendingSubmission, tip_height: int, report: ResubmitReport) -> None:
        block = p.block
        try:
            if tip_height >= block.height:  # the chain is past it: on chain, or stale
                status = await self.chain.block_status(block.hash)
                if status.state == "unknown":
                    accepted, reason = (
                        False,
                        (f"stale: the chain reached height {tip_height} without it"),
                    )
                else:
                    accepted, reason = True, status.state
            else:
                accepted, reason = node_verdict(
                    await self.chain.submit_block(decode_submission(p.submission))
                )
        except Exception as exc:
            if not unanswered(exc):
                await self._rejected(block, f"error: {exc}", report)
                return
            report.pending.append(block.id)
            if await self._run(self.ledger.submission_failed, block.id, str(exc)) == 1:
                self.metrics.block("submit_failed")  # first try after a crash before it
            log.debug(
                "block %d at height %d: still no answer from the chain: %s",
                block.id,
                block.height,
                exc,
            )
            return
        if not accepted:
            await self._rejected(block, reason, report)
            return
        moved, _ = await credit_accepted_block(self._run, self.ledger, block.id, self.policy)
        if moved:
            self.metrics.block("found")
        report.accepted.append(block.id)
        log.info(
            "block %d at height %d (hash %s) resubmitted after %d unanswered tr%s: accepted",
            block.id,
            block.height,
            block.hash.hex()[:16],
            p.attempts,
            "y" if p.attempts == 1 else "ies",
        )

    async def _rejected(self, block: BlockRecord, reason: str, report: ResubmitReport) -> None:
        await self._run(self.ledger.reject_block, block.id, reason)
        self.metrics.block("rejected")
        report.rejected[block.id] = reason
        log.warning(
            "block %d at height %d (hash %s) rejected: %s",
            block.id,
            block.height,
            block.hash.hex()[:16],
            reason,
        )
