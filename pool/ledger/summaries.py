"""``SummaryRepository``: one miner's summary and the pool's totals, across tables."""

from __future__ import annotations

from .base import (
    CANCELLED,
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    PENDING,
    REJECTED,
    SUBMITTING,
    MinerPayment,
    MinerSummary,
    PoolTotals,
)
from .blocks import CREDIT_PENDING
from .payments import BALANCES_SUM, BATCH_SUMS
from .transaction import SqlStore, Transaction


class SummaryRepository(SqlStore):
    """The ``Ledger`` methods that read across tables for the HTTP API and metrics."""

    def miner(self, address: str, payments_limit: int = 20) -> MinerSummary:
        def summary(tx: Transaction) -> MinerSummary:
            def one(query: str, *params: object) -> int:
                return tx.execute(query, params).fetchone()[0]

            balance = one(BALANCES_SUM + " WHERE address = ?", address)
            immature = one(
                "SELECT CAST(COALESCE(SUM(c.amount), 0) AS BIGINT) FROM credits c JOIN blocks b"
                " ON b.id = c.block_id WHERE c.address = ? AND c.status = ?",
                address,
                CREDIT_PENDING,
            )
            paid_by_status = dict(
                tx.execute(
                    BATCH_SUMS + " WHERE o.address = ? GROUP BY b.status", (address,)
                ).fetchall()
            )
            workers = dict(
                tx.execute(
                    "SELECT worker, MAX(time) FROM shares WHERE address = ? GROUP BY worker",
                    (address,),
                ).fetchall()
            )
            payments = [
                MinerPayment(key=k, amount=a, status=s, txid=txid, time=t)
                for k, a, s, txid, t in tx.execute(
                    "SELECT b.key, o.amount, b.status, b.txid, COALESCE(b.completed, b.created)"
                    " FROM payment_outputs o JOIN payment_batches b ON b.key = o.key"
                    " WHERE o.address = ? AND b.status != ? ORDER BY b.created DESC LIMIT ?",
                    (address, CANCELLED, int(payments_limit)),
                ).fetchall()
            ]
            return MinerSummary(
                address=address,
                balance=balance,
                immature=immature,
                pending_payment=paid_by_status.get(PENDING, 0),
                paid=paid_by_status.get(COMPLETED, 0),
                workers=workers,
                payments=payments,
            )

        return self._read(summary)

    def pool_totals(self) -> PoolTotals:
        def totals(tx: Transaction) -> PoolTotals:
            def one(query: str, *params: object) -> int:
                return tx.execute(query, params).fetchone()[0]

            by_status = dict(
                tx.execute("SELECT status, COUNT(*) FROM blocks GROUP BY status").fetchall()
            )
            batch_sums = dict(tx.execute(BATCH_SUMS + " GROUP BY b.status").fetchall())
            return PoolTotals(
                shares=one("SELECT COUNT(*) FROM shares"),
                blocks_found=sum(by_status.values()),
                blocks_pending=by_status.get(FOUND, 0) + by_status.get(CREDITED, 0),
                blocks_confirmed=by_status.get(CONFIRMED, 0),
                blocks_orphaned=by_status.get(ORPHANED, 0),
                balances=one(BALANCES_SUM),
                immature=one(
                    "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM credits WHERE status = ?",
                    CREDIT_PENDING,
                ),
                paid=batch_sums.get(COMPLETED, 0),
                pending_payments=batch_sums.get(PENDING, 0),
                miners=one(
                    "SELECT COUNT(*) FROM (SELECT address FROM shares UNION"
                    " SELECT address FROM credits UNION SELECT address FROM balances) AS a"
                ),
                blocks_rejected=by_status.get(REJECTED, 0),
                blocks_submitting=by_status.get(SUBMITTING, 0),
            )

        return self._read(totals)
