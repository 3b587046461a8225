"""``SqlLedger``: the ledger's logic, written once for every SQL store.

Each ``Ledger`` method is here as portable SQL run in one transaction (``ON CONFLICT ...
DO NOTHING/UPDATE``, ``CAST``, no store functions), with ``?`` placeholders. A store
(``SqliteLedger``, ``PostgresLedger``) adds only what truly differs:

- ``_run(body, write=...)``: run ``body(tx)`` in one transaction under its lock, with
  ``tx`` a ``Transaction`` on its connection, and commit (or roll back on error);
- a ``Transaction`` subclass where the DB-API defaults below do not fit: placeholder
  style, row locks, how the share history is streamed;
- ``SCHEMA`` (the DDL of schema version 1) and ``where`` (the store, for messages).
"""

from __future__ import annotations

import abc
import contextlib
import math
import time as _time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any, ClassVar, TypeVar

from ..pplns import ShareScore, check_parameters, pplns_split, share_score
from .base import (
    CANCELLED,
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    PENDING,
    BlockRecord,
    Ledger,
    LedgerError,
    MinerPayment,
    MinerSummary,
    PaymentBatch,
    PoolTotals,
    ShareRecord,
    ShareStat,
)

SCHEMA_VERSION = 1
MAX_AMOUNT = 2**63 - 1  # SQL BIGINT
T = TypeVar("T")

# Credit states.
CREDIT_PENDING = "pending"
CREDIT_CONFIRMED = "confirmed"
CREDIT_VOID = "void"

# Add to a balance; ``since`` (when it last rose from zero) measures the payout lag.
ADD_TO_BALANCE = (
    "INSERT INTO balances (address, amount, since) VALUES (?, ?, ?) ON CONFLICT (address)"
    " DO UPDATE SET amount = balances.amount + excluded.amount,"
    " since = CASE WHEN balances.amount = 0 THEN excluded.since ELSE balances.since END"
)

BLOCK_COLUMNS = (
    "id, height, hash, reward, time, address, worker, network_difficulty, status, "
    "confirmations, fee, remainder, fee_address, shares_used"
)

# The shares a PPLNS window is taken from, newest first.
HISTORY = (
    "SELECT time, address, difficulty, network_difficulty FROM shares"
    " WHERE time <= ? ORDER BY time DESC, id DESC"
)

# A sum of BIGINTs as a BIGINT (PostgreSQL's SUM would give NUMERIC), 0 when empty.
BALANCES_SUM = "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM balances"
BATCH_SUMS = (
    "SELECT b.status, CAST(SUM(o.amount) AS BIGINT) FROM payment_outputs o"
    " JOIN payment_batches b ON b.key = o.key"
)


def _block(row: Sequence[Any]) -> BlockRecord:
    return BlockRecord(
        id=row[0],
        height=row[1],
        hash=bytes(row[2]),
        reward=row[3],
        time=row[4],
        address=row[5],
        worker=row[6],
        network_difficulty=row[7],
        status=row[8],
        confirmations=row[9],
        fee=row[10],
        remainder=row[11],
        fee_address=row[12],
        shares_used=row[13],
    )


def _check_share(share: ShareRecord) -> None:
    if not isinstance(share.digest, bytes | bytearray) or not share.digest:
        raise ValueError(f"share digest must be non-empty bytes, got {share.digest!r}")
    if not math.isfinite(share.time):
        raise ValueError(f"share time must be finite, got {share.time!r}")
    if not share.address:
        raise ValueError("share address must not be empty")
    share_score(ShareScore(share.address, share.difficulty, share.network_difficulty))


def _check_amount(amount: object, what: str) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"{what} must be a positive integer below 2**63, got {amount!r}")
    return amount


INSERT_SHARE = (
    "INSERT INTO shares (digest, time, address, worker, job_id, height, difficulty,"
    " network_difficulty, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (digest) DO NOTHING"
)


def _share_rows(shares: Sequence[ShareRecord]) -> list[tuple]:
    """The rows of ``INSERT_SHARE`` for ``shares`` (each checked first)."""
    for share in shares:
        _check_share(share)
    return [
        (
            bytes(s.digest),
            float(s.time),
            s.address,
            s.worker,
            s.job_id,
            int(s.height),
            float(s.difficulty),
            float(s.network_difficulty),
            bytes(s.session_id),
        )
        for s in shares
    ]


class Transaction:
    """One open transaction on a DB-API connection, running ``?``-style SQL.

    The queries hold no literal ``?`` or ``%``: a store with another placeholder style
    sets ``PLACEHOLDER`` and every ``?`` becomes it.

    ``FOR_UPDATE`` is appended to a SELECT whose rows the transaction goes on to decide
    on: empty where a write transaction already shuts out every other writer.
    """

    PLACEHOLDER: ClassVar[str] = "?"
    FOR_UPDATE: ClassVar[str] = ""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def sql(self, query: str) -> str:
        """``query`` in the connection's placeholder style."""
        return query if self.PLACEHOLDER == "?" else query.replace("?", self.PLACEHOLDER)

    def execute(self, query: str, params: Sequence[object] = ()) -> Any:
        """Run one statement; return its cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        return self.conn.execute(self.sql(query), params)

    def executemany(self, query: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement for each of ``rows``; return how many rows it changed."""
        if not rows:
            return 0
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.executemany(self.sql(query), rows)
            return cur.rowcount

    @contextlib.contextmanager
    def history(self, at: float) -> Iterator[Iterator[tuple]]:
        """(time, address, difficulty, network_difficulty) of the shares at or before
        ``at``, newest first, read lazily: PPLNS stops at the window's edge."""
        with contextlib.closing(self.execute(HISTORY, (at,))) as cur:
            yield iter(cur)


class SqlLedger(Ledger):
    """The ledger over a SQL store; subclasses give the connection and transactions."""

    SCHEMA: ClassVar[str]  # DDL of schema version 1, statements separated by ";"
    where: str  # the store, for messages (no password)

    @abc.abstractmethod
    def _run(self, body: Callable[[Transaction], T], *, write: bool) -> T:
        """Run ``body`` in one transaction under the lock; commit, or roll back on error.

        A write is durable on return and sees no other writer change what it read; a
        read sees one consistent snapshot.
        """

    def _write(self, body: Callable[[Transaction], T]) -> T:
        return self._run(body, write=True)

    def _read(self, body: Callable[[Transaction], T]) -> T:
        return self._run(body, write=False)

    def _create_schema(self, tx: Transaction) -> None:
        """Create the tables if missing; refuse a schema newer than this code."""
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = tx.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.where} has schema version {version}; this code knows {SCHEMA_VERSION}"
            )
        if version < 1:
            for statement in self.SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute("INSERT INTO schema_version (version) VALUES (1)")

    def schema_version(self) -> int:
        """The schema version stored."""
        return self._read(
            lambda tx: tx.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        )

    # --- shares -------------------------------------------------------------------------

    def insert_shares(self, shares: Sequence[ShareRecord]) -> int:
        rows = _share_rows(shares)
        return self._write(lambda tx: tx.executemany(INSERT_SHARE, rows)) if rows else 0

    def store_shares(self, shares: Sequence[ShareRecord]) -> list[bool]:
        rows = _share_rows(shares)
        if not rows:
            return []

        def store(tx: Transaction) -> list[bool]:
            first = {}  # digest -> index of its first record in this batch
            for i, row in enumerate(rows):
                first.setdefault(row[0], i)
            if tx.executemany(INSERT_SHARE, rows) == len(first):  # all new: the usual case
                return [first[row[0]] == i for i, row in enumerate(rows)]
            stored = []
            for i, row in enumerate(rows):
                owner = tx.execute(
                    "SELECT session_id, job_id FROM shares WHERE digest = ?", (row[0],)
                ).fetchone()
                stored.append(first[row[0]] == i and owner is not None
                              and (bytes(owner[0]), owner[1]) == (row[8], row[4]))
            return stored

        return self._write(store)

    def share_stats(self, since: float) -> list[ShareStat]:
        rows = self._read(
            lambda tx: tx.execute(
                "SELECT address, worker, COUNT(*), SUM(difficulty), MAX(time) FROM shares"
                " WHERE time >= ? GROUP BY address, worker ORDER BY address, worker",
                (since,),
            ).fetchall()
        )
        return [ShareStat(a, w, n, d, t) for a, w, n, d, t in rows]

    def share_count(self) -> int:
        return self._read(lambda tx: tx.execute("SELECT COUNT(*) FROM shares").fetchone()[0])

    @staticmethod
    def _window_start(tx: Transaction, at: float, factor: float) -> float | None:
        """Time of the oldest share in the window of a block at ``at``; None if not full."""
        limit = Fraction(factor)
        total = Fraction(0)
        with tx.history(at) as rows:
            for t, _address, d, nd in rows:
                total += Fraction(d) / Fraction(nd)
                if total >= limit:
                    return t
        return None

    def prune_shares(
        self, before: float, factor: float = 2.0, *, blocks_after: float = math.inf
    ) -> int:
        check_parameters(0, 0, factor)

        def prune(tx: Transaction) -> int:
            cutoff = before
            found = tx.execute("SELECT time FROM blocks WHERE status = ?", (FOUND,)).fetchall()
            for at in [blocks_after] + [t for (t,) in found]:
                start = self._window_start(tx, at, factor)
                if start is None:
                    return 0
                cutoff = min(cutoff, start)
            return tx.execute("DELETE FROM shares WHERE time < ?", (cutoff,)).rowcount

        return self._write(prune)

    # --- blocks -------------------------------------------------------------------------

    def record_block(
        self,
        height: int,
        block_hash: bytes,
        reward: int,
        time: float,
        address: str,
        worker: str,
        network_difficulty: float,
    ) -> int:
        check_parameters(reward, 0, 1.0)
        if reward > MAX_AMOUNT:
            raise ValueError(f"reward too large: {reward}")
        if not isinstance(block_hash, bytes | bytearray) or len(block_hash) == 0:
            raise ValueError("block hash must be non-empty bytes")
        if not (math.isfinite(network_difficulty) and network_difficulty > 0):
            raise ValueError(f"bad network difficulty {network_difficulty!r}")
        row = (
            int(height),
            bytes(block_hash),
            reward,
            float(time),
            address,
            worker,
            float(network_difficulty),
            FOUND,
        )

        def record(tx: Transaction) -> int:
            tx.execute(
                "INSERT INTO blocks (height, hash, reward, time, address, worker,"
                " network_difficulty, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (hash) DO NOTHING",
                row,
            )
            return tx.execute(
                "SELECT id FROM blocks WHERE hash = ?", (bytes(block_hash),)
            ).fetchone()[0]

        return self._write(record)

    @staticmethod
    def _get_block(tx: Transaction, block_id: int, *, lock: bool = False) -> BlockRecord:
        row = tx.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE id = ?" + (tx.FOR_UPDATE if lock else ""),
            (int(block_id),),
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown block id {block_id}")
        return _block(row)

    def credit_block(
        self, block_id: int, factor: float, fee_bps: int, fee_address: str | None
    ) -> BlockRecord:
        def credit(tx: Transaction) -> BlockRecord:
            block = self._get_block(tx, block_id, lock=True)
            if block.status != FOUND:
                return block
            check_parameters(block.reward, fee_bps, factor)
            times: list[float] = []

            with tx.history(block.time) as rows:

                def window() -> Iterator[ShareScore]:
                    for t, address, d, nd in rows:
                        times.append(t)
                        yield ShareScore(address, d, nd)

                split = pplns_split(window(), block.reward, fee_bps, factor)
            credits = dict(split.credits)
            to_fee = split.fee + split.remainder
            if fee_address is not None and to_fee > 0:
                credits[fee_address] = credits.get(fee_address, 0) + to_fee
            tx.executemany(
                "INSERT INTO credits (block_id, address, amount, status) VALUES (?, ?, ?, ?)",
                [(block.id, a, amount, CREDIT_PENDING) for a, amount in credits.items()],
            )
            window_start = times[split.shares_used - 1] if split.shares_used else None
            tx.execute(
                "UPDATE blocks SET status = ?, fee = ?, remainder = ?, fee_address = ?,"
                " shares_used = ?, window_start = ? WHERE id = ?",
                (
                    CREDITED,
                    split.fee,
                    split.remainder,
                    fee_address,
                    split.shares_used,
                    window_start,
                    block.id,
                ),
            )
            return self._get_block(tx, block.id)

        return self._write(credit)

    def confirm_block(self, block_id: int) -> BlockRecord:
        def confirm(tx: Transaction) -> BlockRecord:
            block = self._get_block(tx, block_id, lock=True)
            if block.status == CONFIRMED:
                return block
            if block.status != CREDITED:
                raise LedgerError(f"block {block_id} is {block.status}; cannot confirm it")
            credits = tx.execute(
                "SELECT address, amount FROM credits WHERE block_id = ? AND status = ?"
                " ORDER BY address",
                (block.id, CREDIT_PENDING),
            ).fetchall()
            now = _time.time()
            tx.executemany(ADD_TO_BALANCE, [(address, amount, now) for address, amount in credits])
            tx.execute(
                "UPDATE credits SET status = ? WHERE block_id = ?", (CREDIT_CONFIRMED, block.id)
            )
            tx.execute("UPDATE blocks SET status = ? WHERE id = ?", (CONFIRMED, block.id))
            return self._get_block(tx, block.id)

        return self._write(confirm)

    def orphan_block(self, block_id: int) -> BlockRecord:
        def orphan(tx: Transaction) -> BlockRecord:
            block = self._get_block(tx, block_id, lock=True)
            if block.status == ORPHANED:
                return block
            if block.status == CONFIRMED:
                raise LedgerError(f"block {block_id} is confirmed; cannot orphan it")
            tx.execute("UPDATE credits SET status = ? WHERE block_id = ?", (CREDIT_VOID, block.id))
            tx.execute("UPDATE blocks SET status = ? WHERE id = ?", (ORPHANED, block.id))
            return self._get_block(tx, block.id)

        return self._write(orphan)

    def set_block_confirmations(self, block_id: int, confirmations: int) -> None:
        def set_confirmations(tx: Transaction) -> None:
            block = self._get_block(tx, block_id, lock=True)
            tx.execute(
                "UPDATE blocks SET confirmations = ? WHERE id = ?", (int(confirmations), block.id)
            )

        self._write(set_confirmations)

    def block(self, block_id: int) -> BlockRecord:
        return self._read(lambda tx: self._get_block(tx, block_id))

    def blocks(self, limit: int = 50) -> list[BlockRecord]:
        rows = self._read(
            lambda tx: tx.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY height DESC, id DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        )
        return [_block(r) for r in rows]

    def unlockable_blocks(self) -> list[BlockRecord]:
        rows = self._read(
            lambda tx: tx.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE status IN (?, ?) ORDER BY id",
                (FOUND, CREDITED),
            ).fetchall()
        )
        return [_block(r) for r in rows]

    def block_credits(self, block_id: int) -> dict[str, int]:
        def credits(tx: Transaction) -> dict[str, int]:
            block = self._get_block(tx, block_id)
            return dict(
                tx.execute(
                    "SELECT address, amount FROM credits WHERE block_id = ?", (block.id,)
                ).fetchall()
            )

        return self._read(credits)

    # --- balances and payments ----------------------------------------------------------

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

    # --- summaries ----------------------------------------------------------------------

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
            )

        return self._read(totals)
