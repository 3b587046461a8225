"""What the HTTP API shows: the ledger (durable) joined with a live snapshot of the pool.

:class:`PoolData` answers each route with plain JSON-ready dicts. Ledger calls are
synchronous, so they run in a worker thread under the ``CapacityLimiter`` passed in (the
same one the pool uses for that ledger, so API reads never race its writes). The live part
comes from a ``snapshot`` callable that the running pool provides; the API never reaches
into sessions itself.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from pool.ledger.base import BlockRecord, Ledger, PaymentBatch
from pool.metrics import WORK_FIELDS, useful_fraction
from protocol.address import validate_address
from protocol.errors import ProtocolError

T = TypeVar("T")
EFFORT_BLOCKS = 50  # /api/pool's average effort is over this many newest blocks


def average_effort(blocks: list[BlockRecord]) -> tuple[float | None, int]:
    """The mean effort of the ``blocks`` that have one (None if none), and how many."""
    efforts = [b.effort for b in blocks if b.effort is not None]
    return (sum(efforts) / len(efforts) if efforts else None), len(efforts)


@dataclass(frozen=True)
class WorkerSnapshot:
    """One live (connected, authorized) worker."""

    name: str
    hashrate: Mapping[str, float] = field(default_factory=dict)  # window -> MAC/s
    last_share: float | None = None  # unix seconds
    difficulty: float | None = None  # current share difficulty


@dataclass(frozen=True)
class PoolSnapshot:
    """The pool's live state, built by the pool on demand (cheap, no I/O)."""

    connections: int = 0
    workers: int = 0
    hashrate: Mapping[str, float] = field(default_factory=dict)  # window -> MAC/s
    network_difficulty: float = 0.0
    height: int = 0
    miners: Mapping[str, list[WorkerSnapshot]] = field(default_factory=dict)  # address -> live
    started: float | None = None  # unix seconds the pool started


def miner_work(workers: Iterable[dict[str, float | None]]) -> dict[str, float | None]:
    """A miner's work since start, its workers' summed (``pool.metrics.WORK_FIELDS``), with
    its ``useful_fraction``: verified useful MACs over the work its accepted shares prove."""
    total = {name: 0.0 for name in WORK_FIELDS}
    for row in workers:
        for name in WORK_FIELDS:
            total[name] += row.get(name) or 0.0
    return {**total, "useful_fraction": useful_fraction(total)}


class UnknownMiner(LookupError):
    """The address is malformed, or the pool has never heard of it."""


def block_json(block: BlockRecord) -> dict[str, Any]:
    """One block; ``status`` is the ledger's state, in the words of the blocks metric:
    "submitting" (waiting for the node's answer: the pending-submissions gauge), "found"
    and "credited" (accepted: counted ``found``), "confirmed", "orphaned", "rejected"
    (the node said no or the chain moved past it; ``reason`` says which). ``effort``: its
    round's share difficulty over its network difficulty (1.0 = as much work as expected,
    under 1 is lucky), None for blocks recorded before the ledger kept it."""
    return {
        "height": block.height,
        "hash": block.hash.hex(),
        "reward": block.reward,
        "time": block.time,
        "status": block.status,
        "confirmations": block.confirmations,
        "finder": block.address,
        "worker": block.worker,
        "network_difficulty": block.network_difficulty,
        "fee": block.fee,
        "shares_used": block.shares_used,
        "reason": block.reason,
        "effort": block.effort,
    }


def payment_json(batch: PaymentBatch) -> dict[str, Any]:
    return {
        "key": batch.key,
        "status": batch.status,
        "txid": batch.txid,
        "created": batch.created,
        "completed": batch.completed,
        "total": batch.total,
        "recipients": len(batch.outputs),
        "outputs": dict(batch.outputs),
    }


class PoolData:
    """Answers the API's questions from ``ledger`` and the live ``snapshot()``.

    ``fee_bps`` (basis points) and ``min_payout`` (base units) are the pool's published
    terms; ``limiter`` guards the ledger's worker thread. ``accepted_work()``: MACs proven
    by accepted shares since start; ``useful()``: useful work's stats (units, items,
    ``useful_macs``), None when useful work is off; ``work_of(address)``: its workers' work
    since start (``pool.metrics.WorkOfMiners.of``).
    """

    def __init__(
        self,
        ledger: Ledger,
        snapshot: Callable[[], PoolSnapshot],
        limiter: trio.CapacityLimiter,
        *,
        fee_bps: int,
        min_payout: int,
        accepted_work: Callable[[], float] | None = None,
        useful: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        work_of: Callable[[str], dict[str, dict[str, float | None]]] | None = None,
    ) -> None:
        self.accepted_work = accepted_work
        self.useful = useful
        self.work_of = work_of
        self.ledger = ledger
        self.snapshot = snapshot
        self.limiter = limiter
        self.fee_bps = fee_bps
        self.min_payout = min_payout

    async def _ledger(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    async def pool(self) -> dict[str, Any]:
        """Pool-wide stats: live hashrate and connections, chain, blocks, money; the current
        round's effort and the mean effort of the newest blocks; useful work (None when off).
        The round is the shares after the newest block (its own share is its block's)."""
        live = self.snapshot()

        def read() -> tuple[Any, list[BlockRecord], int, float]:
            recent = self.ledger.blocks(EFFORT_BLOCKS)
            since = math.nextafter(recent[0].time, math.inf) if recent else 0.0
            return (
                self.ledger.pool_totals(),
                recent,
                self.ledger.pending_payout_total(),
                sum(stat.difficulty for stat in self.ledger.share_stats(since)),
            )

        totals, last, pending, round_difficulty = await self._ledger(read)
        mean_effort, effort_blocks = average_effort(last)
        nd = live.network_difficulty
        answer = {
            "hashrate": dict(live.hashrate),
            "connections": live.connections,
            "workers": live.workers,
            "miners_online": len(live.miners),
            "network_difficulty": nd,
            "height": live.height,
            "blocks_found": totals.blocks_found,
            "blocks_pending": totals.blocks_pending,
            "blocks_confirmed": totals.blocks_confirmed,
            "blocks_orphaned": totals.blocks_orphaned,
            "blocks_rejected": totals.blocks_rejected,
            "blocks_submitting": totals.blocks_submitting,
            "last_block_time": last[0].time if last else None,
            "fee_bps": self.fee_bps,
            "fee_percent": self.fee_bps / 100,
            "min_payout": self.min_payout,
            "total_paid": totals.paid,
            "pending_payout": pending,
            "miners": totals.miners,
            "started": live.started,
            "round_share_difficulty": round_difficulty,
            "effort": round_difficulty / nd if nd > 0 else None,
            "average_effort": mean_effort,
            "average_effort_blocks": effort_blocks,
        }
        accepted = self.accepted_work() if self.accepted_work is not None else None
        answer["accepted_work_macs"] = accepted
        answer["useful"] = None if self.useful is None else await self._useful(accepted)
        return answer

    async def _useful(self, accepted: float | None) -> dict[str, Any]:
        stats = dict(await self.useful()) if self.useful is not None else {}
        macs = stats.get("useful_macs", 0)
        stats["useful_fraction"] = macs / accepted if accepted else None
        return stats

    async def miner(self, address: str, payments_limit: int = 20) -> dict[str, Any]:
        """One address: live workers and hashrate, balances, recent payments.

        Raises :class:`UnknownMiner` for a malformed address or one with no history.
        """
        try:
            validate_address(address)
        except ProtocolError as exc:
            raise UnknownMiner(str(exc)) from None
        summary = await self._ledger(lambda: self.ledger.miner(address, payments_limit))
        live = {w.name: w for w in self.snapshot().miners.get(address, [])}
        known = (
            live
            or summary.workers
            or summary.payments
            or summary.balance
            or summary.immature
            or summary.pending_payment
            or summary.paid
        )
        if not known:
            raise UnknownMiner(f"no shares, balance or payments for {address}")
        hashrate: dict[str, float] = {}
        for worker in live.values():
            for window, rate in worker.hashrate.items():
                hashrate[window] = hashrate.get(window, 0.0) + rate
        work = self.work_of(address) if self.work_of is not None else {}
        workers = []
        for name in sorted(set(summary.workers) | set(live) | set(work)):
            w = live.get(name)
            stored_last = summary.workers.get(name)
            lasts = [t for t in (stored_last, w.last_share if w else None) if t is not None]
            workers.append(
                {
                    "name": name,
                    "online": w is not None,
                    "hashrate": dict(w.hashrate) if w else {},
                    "difficulty": w.difficulty if w else None,
                    "last_share": max(lasts) if lasts else None,
                    "work": work.get(name),
                }
            )
        return {
            "address": address,
            "hashrate": hashrate,
            "work": miner_work(work.values()) if self.work_of is not None else None,
            "workers": workers,
            "balance": summary.balance,
            "immature": summary.immature,
            "pending_payment": summary.pending_payment,
            "paid": summary.paid,
            "payments": [
                {"key": p.key, "amount": p.amount, "status": p.status, "txid": p.txid,
                 "time": p.time}
                for p in summary.payments
            ],
        }  # fmt: skip

    def live_miners(self) -> list[dict[str, Any]]:
        """Connected miners, highest 1m hashrate first: address, workers, summed hashrate."""
        rows: list[dict[str, Any]] = []
        for address, workers in self.snapshot().miners.items():
            rate: dict[str, float] = {}
            for w in workers:
                for window, r in w.hashrate.items():
                    rate[window] = rate.get(window, 0.0) + r
            rows.append(
                {"address": address, "workers": sorted(w.name for w in workers), "hashrate": rate}
            )
        rows.sort(key=lambda m: -m["hashrate"].get("1m", 0.0))
        return rows

    async def blocks(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` blocks, newest first."""
        return [block_json(b) for b in await self._ledger(lambda: self.ledger.blocks(limit))]

    async def payments(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` payment batches, newest first."""
        batches = await self._ledger(lambda: self.ledger.payments(limit))
        return [payment_json(b) for b in batches]
