"""``SqliteLedger``: the ledger on one SQLite file in WAL mode.

One connection per object, guarded by a lock; every write is one ``BEGIN IMMEDIATE``
transaction, so with ``synchronous=FULL`` (the default) a method that returns has its
effect on disk. SQL is kept portable (``ON CONFLICT ... DO NOTHING/UPDATE``, no SQLite
functions) so the PostgreSQL ledger can reuse most of it; SQLite specifics (pragmas,
``BEGIN IMMEDIATE``) stay in this file.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time as _time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

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
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Credit states.
CREDIT_PENDING = "pending"
CREDIT_CONFIRMED = "confirmed"
CREDIT_VOID = "void"

SCHEMA_V1 = """
CREATE TABLE shares (
    id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    time REAL NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    job_id TEXT NOT NULL,
    height INTEGER NOT NULL,
    difficulty REAL NOT NULL,
    network_difficulty REAL NOT NULL,
    session_id BLOB NOT NULL
);
CREATE INDEX shares_by_time ON shares (time DESC, id DESC);
CREATE INDEX shares_by_address ON shares (address, worker, time);
CREATE TABLE blocks (
    id INTEGER PRIMARY KEY,
    height INTEGER NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    reward BIGINT NOT NULL,
    time REAL NOT NULL,
    address TEXT NOT NULL,
    worker TEXT NOT NULL,
    network_difficulty REAL NOT NULL,
    status TEXT NOT NULL,
    confirmations INTEGER NOT NULL DEFAULT 0,
    fee BIGINT,
    remainder BIGINT,
    fee_address TEXT,
    shares_used INTEGER,
    window_start REAL
);
CREATE INDEX blocks_by_status ON blocks (status);
CREATE TABLE credits (
    block_id INTEGER NOT NULL REFERENCES blocks (id),
    address TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    status TEXT NOT NULL,
    PRIMARY KEY (block_id, address)
);
CREATE INDEX credits_by_address ON credits (address, status);
CREATE TABLE balances (
    address TEXT PRIMARY KEY,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    since REAL NOT NULL
);
CREATE TABLE payment_batches (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    txid TEXT,
    completed REAL
);
CREATE INDEX payment_batches_by_status ON payment_batches (status, created);
CREATE TABLE payment_outputs (
    key TEXT NOT NULL REFERENCES payment_batches (key),
    address TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    PRIMARY KEY (key, address)
);
CREATE INDEX payment_outputs_by_address ON payment_outputs (address);
"""

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


def _block(row: tuple) -> BlockRecord:
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


class SqliteLedger(Ledger):
    """The ledger in the SQLite file at ``path`` (created if missing).

    ``synchronous`` is SQLite's pragma: "FULL" (default) makes every committed write
    durable across power loss; "NORMAL" only across process crashes.
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
    ) -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        if str(path) == ":memory:":
            raise ValueError("SqliteLedger needs a file path (WAL does not apply to :memory:)")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        try:
            conn = self._conn
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if journal.lower() != "wal":
                raise LedgerError(f"could not put {self.path} in WAL mode (got {journal})")
            conn.execute(f"PRAGMA synchronous = {mode}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # --- plumbing -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("ledger is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; commits on success, rolls back on error."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read (one deferred transaction) under the lock."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} has schema version {version}; this code knows {SCHEMA_VERSION}"
                )
            if version < 1:
                for statement in SCHEMA_V1.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (1)")

    def schema_version(self) -> int:
        """The schema version stored in the file."""
        with self._read() as conn:
            return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- shares -------------------------------------------------------------------------

    def insert_shares(self, shares: Sequence[ShareRecord]) -> int:
        for share in shares:
            _check_share(share)
        if not shares:
            return 0
        rows = [
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
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO shares (digest, time, address, worker, job_id, height, difficulty,"
                " network_difficulty, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                rows,
            )
            return conn.total_changes - before

    def share_stats(self, since: float) -> list[ShareStat]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT address, worker, COUNT(*), SUM(difficulty), MAX(time) FROM shares"
                " WHERE time >= ? GROUP BY address, worker ORDER BY address, worker",
                (since,),
            ).fetchall()
        return [ShareStat(a, w, n, d, t) for a, w, n, d, t in rows]

    def share_count(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM shares").fetchone()[0]

    @staticmethod
    def _window_start(conn: sqlite3.Connection, at: float, factor: float) -> float | None:
        """Time of the oldest share in the window of a block at ``at``; None if not full."""
        limit = Fraction(factor)
        total = Fraction(0)
        for t, d, nd in conn.execute(
            "SELECT time, difficulty, network_difficulty FROM shares WHERE time <= ?"
            " ORDER BY time DESC, id DESC",
            (at,),
        ):
            total += Fraction(d) / Fraction(nd)
            if total >= limit:
                return t
        return None

    def prune_shares(self, before: float, factor: float = 2.0) -> int:
        check_parameters(0, 0, factor)
        with self._write() as conn:
            cutoff = before
            ats = [math.inf] + [
                t for (t,) in conn.execute("SELECT time FROM blocks WHERE status = ?", (FOUND,))
            ]
            for at in ats:
                start = self._window_start(conn, at, factor)
                if start is None:
                    return 0
                cutoff = min(cutoff, start)
            cur = conn.execute("DELETE FROM shares WHERE time < ?", (cutoff,))
            return cur.rowcount

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
        with self._write() as conn:
            conn.execute(
                "INSERT INTO blocks (height, hash, reward, time, address, worker,"
                " network_difficulty, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (hash) DO NOTHING",
                (
                    int(height),
                    bytes(block_hash),
                    reward,
                    float(time),
                    address,
                    worker,
                    float(network_difficulty),
                    FOUND,
                ),
            )
            return conn.execute(
                "SELECT id FROM blocks WHERE hash = ?", (bytes(block_hash),)
            ).fetchone()[0]

    @staticmethod
    def _get_block(conn: sqlite3.Connection, block_id: int) -> BlockRecord:
        row = conn.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE id = ?", (block_id,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown block id {block_id}")
        return _block(row)

    def credit_block(
        self, block_id: int, factor: float, fee_bps: int, fee_address: str | None
    ) -> BlockRecord:
        with self._write() as conn:
            block = self._get_block(conn, block_id)
            if block.status != FOUND:
                return block
            check_parameters(block.reward, fee_bps, factor)
            times: list[float] = []

            def window() -> Iterator[ShareScore]:
                for t, address, d, nd in conn.execute(
                    "SELECT time, address, difficulty, network_difficulty FROM shares"
                    " WHERE time <= ? ORDER BY time DESC, id DESC",
                    (block.time,),
                ):
                    times.append(t)
                    yield ShareScore(address, d, nd)

            split = pplns_split(window(), block.reward, fee_bps, factor)
            credits = dict(split.credits)
            to_fee = split.fee + split.remainder
            if fee_address is not None and to_fee > 0:
                credits[fee_address] = credits.get(fee_address, 0) + to_fee
            conn.executemany(
                "INSERT INTO credits (block_id, address, amount, status) VALUES (?, ?, ?, ?)",
                [(block_id, a, amount, CREDIT_PENDING) for a, amount in credits.items()],
            )
            window_start = times[split.shares_used - 1] if split.shares_used else None
            conn.execute(
                "UPDATE blocks SET status = ?, fee = ?, remainder = ?, fee_address = ?,"
                " shares_used = ?, window_start = ? WHERE id = ?",
                (
                    CREDITED,
                    split.fee,
                    split.remainder,
                    fee_address,
                    split.shares_used,
                    window_start,
                    block_id,
                ),
            )
            return self._get_block(conn, block_id)

    def confirm_block(self, block_id: int) -> BlockRecord:
        with self._write() as conn:
            block = self._get_block(conn, block_id)
            if block.status == CONFIRMED:
                return block
            if block.status != CREDITED:
                raise LedgerError(f"block {block_id} is {block.status}; cannot confirm it")
            credits = conn.execute(
                "SELECT address, amount FROM credits WHERE block_id = ? AND status = ?",
                (block_id, CREDIT_PENDING),
            ).fetchall()
            now = _time.time()
            conn.executemany(
                ADD_TO_BALANCE,
                [(address, amount, now) for address, amount in credits],
            )
            conn.execute(
                "UPDATE credits SET status = ? WHERE block_id = ?", (CREDIT_CONFIRMED, block_id)
            )
            conn.execute("UPDATE blocks SET status = ? WHERE id = ?", (CONFIRMED, block_id))
            return self._get_block(conn, block_id)

    def orphan_block(self, block_id: int) -> BlockRecord:
        with self._write() as conn:
            block = self._get_block(conn, block_id)
            if block.status == ORPHANED:
                return block
            if block.status == CONFIRMED:
                raise LedgerError(f"block {block_id} is confirmed; cannot orphan it")
            conn.execute(
                "UPDATE credits SET status = ? WHERE block_id = ?", (CREDIT_VOID, block_id)
            )
            conn.execute("UPDATE blocks SET status = ? WHERE id = ?", (ORPHANED, block_id))
            return self._get_block(conn, block_id)

    def set_block_confirmations(self, block_id: int, confirmations: int) -> None:
        with self._write() as conn:
            self._get_block(conn, block_id)
            conn.execute(
                "UPDATE blocks SET confirmations = ? WHERE id = ?", (int(confirmations), block_id)
            )

    def block(self, block_id: int) -> BlockRecord:
        with self._read() as conn:
            return self._get_block(conn, block_id)

    def blocks(self, limit: int = 50) -> list[BlockRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY height DESC, id DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [_block(r) for r in rows]

    def unlockable_blocks(self) -> list[BlockRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE status IN (?, ?) ORDER BY id",
                (FOUND, CREDITED),
            ).fetchall()
        return [_block(r) for r in rows]

    def block_credits(self, block_id: int) -> dict[str, int]:
        with self._read() as conn:
            self._get_block(conn, block_id)
            rows = conn.execute(
                "SELECT address, amount FROM credits WHERE block_id = ?", (block_id,)
            ).fetchall()
        return dict(rows)

    # --- balances and payments ----------------------------------------------------------

    def balances(self) -> dict[str, int]:
        with self._read() as conn:
            return dict(conn.execute("SELECT address, amount FROM balances WHERE amount > 0"))

    def payable(self, min_payout: int) -> dict[str, int]:
        with self._read() as conn:
            return dict(
                conn.execute(
                    "SELECT address, amount FROM balances WHERE amount > 0 AND amount >= ?",
                    (int(min_payout),),
                )
            )

    def oldest_payable_since(self, min_payout: int) -> float | None:
        with self._read() as conn:
            return conn.execute(
                "SELECT MIN(since) FROM balances WHERE amount > 0 AND amount >= ?",
                (int(min_payout),),
            ).fetchone()[0]

    @staticmethod
    def _get_batch(conn: sqlite3.Connection, key: str) -> PaymentBatch | None:
        row = conn.execute(
            "SELECT key, status, created, txid, completed FROM payment_batches WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        outputs = dict(
            conn.execute(
                "SELECT address, amount FROM payment_outputs WHERE key = ? ORDER BY address",
                (key,),
            )
        )
        return PaymentBatch(
            key=row[0],
            outputs=outputs,
            status=row[1],
            created=row[2],
            txid=row[3],
            completed=row[4],
        )

    def create_payment_batch(self, key: str, outputs: dict[str, int]) -> PaymentBatch:
        if not isinstance(key, str) or not key:
            raise ValueError("payment key must be a non-empty string")
        if not outputs:
            raise ValueError("a payment batch needs at least one output")
        for address, amount in outputs.items():
            _check_amount(amount, f"payment to {address!r}")
        with self._write() as conn:
            existing = self._get_batch(conn, key)
            if existing is not None:
                if existing.outputs != dict(outputs):
                    raise LedgerError(f"payment key {key!r} already used for other outputs")
                return existing
            for address, amount in outputs.items():
                row = conn.execute(
                    "SELECT amount FROM balances WHERE address = ?", (address,)
                ).fetchone()
                balance = row[0] if row else 0
                if amount > balance:
                    raise LedgerError(
                        f"payment of {amount} to {address} exceeds its balance {balance}"
                    )
                conn.execute(
                    "UPDATE balances SET amount = amount - ? WHERE address = ?", (amount, address)
                )
            conn.execute(
                "INSERT INTO payment_batches (key, status, created) VALUES (?, ?, ?)",
                (key, PENDING, _time.time()),
            )
            conn.executemany(
                "INSERT INTO payment_outputs (key, address, amount) VALUES (?, ?, ?)",
                [(key, a, amount) for a, amount in outputs.items()],
            )
            batch = self._get_batch(conn, key)
            assert batch is not None
            return batch

    def complete_payment_batch(self, key: str, txid: str) -> PaymentBatch:
        if not isinstance(txid, str) or not txid:
            raise ValueError("txid must be a non-empty string")
        with self._write() as conn:
            batch = self._get_batch(conn, key)
            if batch is None:
                raise LedgerError(f"unknown payment batch {key!r}")
            if batch.status == COMPLETED:
                if batch.txid != txid:
                    raise LedgerError(
                        f"payment batch {key!r} already completed with txid {batch.txid}"
                    )
                return batch
            if batch.status != PENDING:
                raise LedgerError(f"payment batch {key!r} is {batch.status}; cannot complete it")
            conn.execute(
                "UPDATE payment_batches SET status = ?, txid = ?, completed = ? WHERE key = ?",
                (COMPLETED, txid, _time.time(), key),
            )
            batch = self._get_batch(conn, key)
            assert batch is not None
            return batch

    def cancel_payment_batch(self, key: str) -> PaymentBatch:
        with self._write() as conn:
            batch = self._get_batch(conn, key)
            if batch is None:
                raise LedgerError(f"unknown payment batch {key!r}")
            if batch.status == CANCELLED:
                return batch
            if batch.status != PENDING:
                raise LedgerError(f"payment batch {key!r} is {batch.status}; cannot cancel it")
            conn.executemany(
                ADD_TO_BALANCE,
                [(address, amount, _time.time()) for address, amount in batch.outputs.items()],
            )
            conn.execute("UPDATE payment_batches SET status = ? WHERE key = ?", (CANCELLED, key))
            batch = self._get_batch(conn, key)
            assert batch is not None
            return batch

    def pending_payment_batches(self) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches WHERE status = ? ORDER BY created, key", (PENDING,)
        )

    def payment_batch(self, key: str) -> PaymentBatch:
        with self._read() as conn:
            batch = self._get_batch(conn, key)
        if batch is None:
            raise LedgerError(f"unknown payment batch {key!r}")
        return batch

    def payments(self, limit: int = 50) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches ORDER BY created DESC, key DESC LIMIT ?",
            (int(limit),),
        )

    def _batches(self, query: str, params: tuple) -> list[PaymentBatch]:
        with self._read() as conn:
            keys = [k for (k,) in conn.execute(query, params).fetchall()]
            batches = [self._get_batch(conn, k) for k in keys]
        return [b for b in batches if b is not None]

    def pending_payout_total(self) -> int:
        with self._read() as conn:
            balances = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM balances").fetchone()
            pending = conn.execute(
                "SELECT COALESCE(SUM(o.amount), 0) FROM payment_outputs o"
                " JOIN payment_batches b ON b.key = o.key WHERE b.status = ?",
                (PENDING,),
            ).fetchone()
        return balances[0] + pending[0]

    # --- summaries ----------------------------------------------------------------------

    def miner(self, address: str, payments_limit: int = 20) -> MinerSummary:
        with self._read() as conn:

            def one(query: str, *params: object) -> int:
                return conn.execute(query, params).fetchone()[0]

            balance = one(
                "SELECT COALESCE(SUM(amount), 0) FROM balances WHERE address = ?", address
            )
            immature = one(
                "SELECT COALESCE(SUM(c.amount), 0) FROM credits c JOIN blocks b"
                " ON b.id = c.block_id WHERE c.address = ? AND c.status = ?",
                address,
                CREDIT_PENDING,
            )
            paid_by_status = dict(
                conn.execute(
                    "SELECT b.status, SUM(o.amount) FROM payment_outputs o JOIN payment_batches b"
                    " ON b.key = o.key WHERE o.address = ? GROUP BY b.status",
                    (address,),
                )
            )
            workers = dict(
                conn.execute(
                    "SELECT worker, MAX(time) FROM shares WHERE address = ? GROUP BY worker",
                    (address,),
                )
            )
            payments = [
                MinerPayment(key=k, amount=a, status=s, txid=tx, time=t)
                for k, a, s, tx, t in conn.execute(
                    "SELECT b.key, o.amount, b.status, b.txid, COALESCE(b.completed, b.created)"
                    " FROM payment_outputs o JOIN payment_batches b ON b.key = o.key"
                    " WHERE o.address = ? AND b.status != ? ORDER BY b.created DESC LIMIT ?",
                    (address, CANCELLED, int(payments_limit)),
                )
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

    def pool_totals(self) -> PoolTotals:
        with self._read() as conn:

            def one(query: str, *params: object) -> int:
                return conn.execute(query, params).fetchone()[0]

            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM blocks GROUP BY status"))
            batch_sums = dict(
                conn.execute(
                    "SELECT b.status, SUM(o.amount) FROM payment_outputs o JOIN payment_batches b"
                    " ON b.key = o.key GROUP BY b.status"
                )
            )
            return PoolTotals(
                shares=one("SELECT COUNT(*) FROM shares"),
                blocks_found=sum(by_status.values()),
                blocks_pending=by_status.get(FOUND, 0) + by_status.get(CREDITED, 0),
                blocks_confirmed=by_status.get(CONFIRMED, 0),
                blocks_orphaned=by_status.get(ORPHANED, 0),
                balances=one("SELECT COALESCE(SUM(amount), 0) FROM balances"),
                immature=one(
                    "SELECT COALESCE(SUM(amount), 0) FROM credits WHERE status = ?",
                    CREDIT_PENDING,
                ),
                paid=batch_sums.get(COMPLETED, 0),
                pending_payments=batch_sums.get(PENDING, 0),
                miners=one(
                    "SELECT COUNT(*) FROM (SELECT address FROM shares UNION"
                    " SELECT address FROM credits UNION SELECT address FROM balances) AS a"
                ),
            )
