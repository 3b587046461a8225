"""``PaymentRepository``: balances and the two-phase payment batches."""

from __future__ import annotations

import time as _time

from .base import CANCELLED, COMPLETED, PENDING, LedgerError, PaymentBatch
from .transaction import MAX_AMOUNT, SqlStore, Transaction

# Add to a balance; ``since`` (when it last rose from zero) measures the payout lag.
ADD_TO_BALANCE = (
    "INSERT INTO balances (address, amount, since) VALUES (?, ?, ?) ON CONFLICT (address)"
    " DO UPDATE SET amount = balances.amount + excluded.amount,"
    " since = CASE WHEN balances.amount = 0 THEN excluded.since ELSE balances.since END"
)

# A sum of BIGINTs as a BIGINT (PostgreSQL's SUM would give NUMERIC), 0 when empty.
BALANCES_SUM = "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM balances"
BATCH_SUMS = (
    "SELECT b.status, CAST(SUM(o.amount) AS BIGINT) FROM payment_outputs o"
    " JOIN payment_batches b ON b.key = o.key"
)


def _check_amount(amount: object, what: str) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"{what} must be a positive integer below 2**63, got {amount!r}")
    return amount


class PaymentRepository(SqlStore):
    """The ``Ledger`` methods on the ``balances``, ``payment_batches`` and
    ``payment_outputs`` tables."""

    def balances(self) -> dict[str, int]:
        return self._read(
            lambda tx: dict(
                tx.execute("SELECT address, amount FROM balances WHERE amount > 0").fetchall()
            )
        )

    def payable(self, min_payout: int) -> dict[str, int]:
        return self._read(
            lambda tx: dict(
                tx.execute(
                    "SELECT address, amount FROM balances WHERE amount > 0 AND amount >= ?",
                    (int(min_payout),),
                ).fetchall()
            )
        )

    def oldest_payable_since(self, min_payout: int) -> float | None:
        return self._read(
            lambda tx: tx.execute(
                "SELECT MIN(since) FROM balances WHERE amount > 0 AND amount >= ?",
                (int(min_payout),),
            ).fetchone()[0]
        )

    @staticmethod
    def _get_batch(tx: Transaction, key: str, *, lock: bool = False) -> PaymentBatch | None:
        row = tx.execute(
            "SELECT key, status, created, txid, completed FROM payment_batches WHERE key = ?"
            + (tx.FOR_UPDATE if lock else ""),
            (key,),
        ).fetchone()
        if row is None:
            return None
        outputs = dict(
            tx.execute(
                "SELECT address, amount FROM payment_outputs WHERE key = ? ORDER BY address",
                (key,),
            ).fetchall()
        )
        return PaymentBatch(
            key=row[0],
            outputs=outputs,
            status=row[1],
            created=row[2],
            txid=row[3],
            completed=row[4],
        )

    def _stored_batch(self, tx: Transaction, key: str) -> PaymentBatch:
        batch = self._get_batch(tx, key)
        assert batch is not None
        return batch

    def create_payment_batch(self, key: str, outputs: dict[str, int]) -> PaymentBatch:
        if not isinstance(key, str) or not key:
            raise ValueError("payment key must be a non-empty string")
        if not outputs:
            raise ValueError("a payment batch needs at least one output")
        for address, amount in outputs.items():
            _check_amount(amount, f"payment to {address!r}")
        wanted = dict(outputs)

        def create(tx: Transaction) -> PaymentBatch:
            existing = self._get_batch(tx, key, lock=True)
            if existing is not None:
                if existing.outputs != wanted:
                    raise LedgerError(f"payment key {key!r} already used for other outputs")
                return existing
            # Lock the balances in one order, so two payers wait rather than deadlock.
            for address in sorted(wanted):
                amount = wanted[address]
                row = tx.execute(
                    "SELECT amount FROM balances WHERE address = ?" + tx.FOR_UPDATE, (address,)
                ).fetchone()
                balance = row[0] if row else 0
                if amount > balance:
                    raise LedgerError(
                        f"payment of {amount} to {address} exceeds its balance {balance}"
                    )
                tx.execute(
                    "UPDATE balances SET amount = amount - ? WHERE address = ?", (amount, address)
                )
            tx.execute(
                "INSERT INTO payment_batches (key, status, created) VALUES (?, ?, ?)",
                (key, PENDING, _time.time()),
            )
            tx.executemany(
                "INSERT INTO payment_outputs (key, address, amount) VALUES (?, ?, ?)",
                [(key, a, amount) for a, amount in wanted.items()],
            )
            return self._stored_batch(tx, key)

        return self._write(create)

    def _locked_batch(self, tx: Transaction, key: str) -> PaymentBatch:
        """The batch ``key``, locked; ``LedgerError`` if unknown."""
        batch = self._get_batch(tx, key, lock=True)
        if batch is None:
            raise LedgerError(f"unknown payment batch {key!r}")
        return batch

    def complete_payment_batch(self, key: str, txid: str) -> PaymentBatch:
        if not isinstance(txid, str) or not txid:
            raise ValueError("txid must be a non-empty string")

        def complete(tx: Transaction) -> PaymentBatch:
            batch = self._locked_batch(tx, key)
            if batch.status == COMPLETED:
                if batch.txid != txid:
                    raise LedgerError(
                        f"payment batch {key!r} already completed with txid {batch.txid}"
                    )
                return batch
            if batch.status != PENDING:
                raise LedgerError(f"payment batch {key!r} is {batch.status}; cannot complete it")
            tx.execute(
                "UPDATE payment_batches SET status = ?, txid = ?, completed = ? WHERE key = ?",
                (COMPLETED, txid, _time.time(), key),
            )
            return self._stored_batch(tx, key)

        return self._write(complete)

    def cancel_payment_batch(self, key: str) -> PaymentBatch:
        def cancel(tx: Transaction) -> PaymentBatch:
            batch = self._locked_batch(tx, key)
            if batch.status == CANCELLED:
                return batch
            if batch.status != PENDING:
                raise LedgerError(f"payment batch {key!r} is {batch.status}; cannot cancel it")
            now = _time.time()
            tx.executemany(
                ADD_TO_BALANCE,
                [(address, amount, now) for address, amount in sorted(batch.outputs.items())],
            )
            tx.execute("UPDATE payment_batches SET status = ? WHERE key = ?", (CANCELLED, key))
            return self._stored_batch(tx, key)

        return self._write(cancel)

    def pending_payment_batches(self) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches WHERE status = ? ORDER BY created, key", (PENDING,)
        )

    def payment_batch(self, key: str) -> PaymentBatch:
        batch = self._read(lambda tx: self._get_batch(tx, key))
        if batch is None:
            raise LedgerError(f"unknown payment batch {key!r}")
        return batch

    def payments(self, limit: int = 50) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches ORDER BY created DESC, key DESC LIMIT ?",
            (int(limit),),
        )

    def _batches(self, query: str, params: tuple) -> list[PaymentBatch]:
        def batches(tx: Transaction) -> list[PaymentBatch | None]:
            keys = [k for (k,) in tx.execute(query, params).fetchall()]
            return [self._get_batch(tx, k) for k in keys]

        return [b for b in self._read(batches) if b is not None]

    def pending_payout_total(self) -> int:
        def total(tx: Transaction) -> int:
            balances = tx.execute(BALANCES_SUM).fetchone()[0]
            pending = tx.execute(
                "SELECT CAST(COALESCE(SUM(o.amount), 0) AS BIGINT) FROM payment_outputs o"
                " JOIN payment_batches b ON b.key = o.key WHERE b.status = ?",
                (PENDING,),
            ).fetchone()[0]
            return balances + pending

        return self._read(total)
