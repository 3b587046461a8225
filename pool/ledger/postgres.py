"""``PostgresLedger``: the ledger in a PostgreSQL database, shared by any number of pools.

The semantics are ``SqliteLedger``'s, method for method. One connection per object,
guarded by a lock. Every write is one explicit ``SERIALIZABLE`` transaction that also
locks the rows it decides on (``SELECT ... FOR UPDATE``): two pool instances on one
database run their writes as if one after the other, so a balance is never paid twice and
a block never credited or confirmed twice. A transaction that loses such a race
(serialization failure, deadlock) is rolled back and run again from the start, up to
``max_attempts`` times. Reads are one ``REPEATABLE READ READ ONLY`` transaction (one
consistent snapshot). A method returns only after its COMMIT is acknowledged, which with
the server's default ``synchronous_commit = on`` means the change is in the flushed WAL.

A lost connection (server restarted, network cut) makes the call raise
``LedgerConnectionError`` (a ``LedgerError``); the next call connects again. When the
connection turns out dead before anything was sent (a restart while the pool was idle),
the call reconnects and goes on by itself. If the connection breaks during COMMIT the
outcome is unknown to the caller; every write is idempotent (share digests, block hashes,
payment keys), so doing it again is safe.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time as _time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.conninfo import conninfo_to_dict

from ..pplns import ShareScore, check_parameters, pplns_split
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
from .sqlite import (
    BLOCK_COLUMNS,
    CREDIT_CONFIRMED,
    CREDIT_PENDING,
    CREDIT_VOID,
    MAX_AMOUNT,
    _block,
    _check_amount,
    _check_share,
)

SCHEMA_VERSION = 1
T = TypeVar("T")
Connection = psycopg.Connection[Any]

# Any constant works; it keeps two pools from creating the schema at the same time.
MIGRATION_LOCK = 0x6D6D_6C65_6467_6572  # "mmledger"
WINDOW_FETCH = 2000  # rows per round trip when walking the share history
RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)

# Text columns sort bytewise ("C"), as in SQLite, whatever the database's locale.
SCHEMA_V1 = """
CREATE TABLE shares (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest BYTEA NOT NULL UNIQUE,
    time DOUBLE PRECISION NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    job_id TEXT NOT NULL,
    height BIGINT NOT NULL,
    difficulty DOUBLE PRECISION NOT NULL,
    network_difficulty DOUBLE PRECISION NOT NULL,
    session_id BYTEA NOT NULL
);
CREATE INDEX shares_by_time ON shares (time DESC, id DESC);
CREATE INDEX shares_by_address ON shares (address, worker, time);
CREATE TABLE blocks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    height BIGINT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    reward BIGINT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    network_difficulty DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    confirmations BIGINT NOT NULL DEFAULT 0,
    fee BIGINT,
    remainder BIGINT,
    fee_address TEXT COLLATE "C",
    shares_used BIGINT,
    window_start DOUBLE PRECISION
);
CREATE INDEX blocks_by_status ON blocks (status);
CREATE TABLE credits (
    block_id BIGINT NOT NULL REFERENCES blocks (id),
    address TEXT COLLATE "C" NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    status TEXT NOT NULL,
    PRIMARY KEY (block_id, address)
);
CREATE INDEX credits_by_address ON credits (address, status);
CREATE TABLE balances (
    address TEXT COLLATE "C" PRIMARY KEY,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    since DOUBLE PRECISION NOT NULL
);
CREATE TABLE payment_batches (
    key TEXT COLLATE "C" PRIMARY KEY,
    status TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    txid TEXT,
    completed DOUBLE PRECISION
);
CREATE INDEX payment_batches_by_status ON payment_batches (status, created);
CREATE TABLE payment_outputs (
    key TEXT COLLATE "C" NOT NULL REFERENCES payment_batches (key),
    address TEXT COLLATE "C" NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    PRIMARY KEY (key, address)
);
CREATE INDEX payment_outputs_by_address ON payment_outputs (address);
"""

ADD_TO_BALANCE = (
    "INSERT INTO balances (address, amount, since) VALUES (%s, %s, %s) ON CONFLICT (address)"
    " DO UPDATE SET amount = balances.amount + excluded.amount,"
    " since = CASE WHEN balances.amount = 0 THEN excluded.since ELSE balances.since END"
)


class LedgerConnectionError(LedgerError):
    """The database cannot be reached, or the connection broke during the call."""


class PostgresLedger(Ledger):
    """The ledger in the PostgreSQL database at ``url`` (``postgresql://...``).

    The tables are created on first use. ``connect_timeout`` (seconds) applies when the
    URL names none; ``max_attempts`` bounds the re-runs of a write that lost a race.
    """

    def __init__(
        self, url: str, *, connect_timeout: int = 10, max_attempts: int = 20
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"bad PostgreSQL URL: {exc}") from None
        params.setdefault("connect_timeout", connect_timeout)
        params.setdefault("application_name", "matmine-pool")
        self._params = params
        # Where, for messages: never the password.
        self.where = "{}:{}/{}".format(
            params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "")
        )
        self.max_attempts = max_attempts
        self.retries = 0  # writes re-run after losing a race to another connection
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # --- plumbing -----------------------------------------------------------------------

    def _connection(self) -> Connection:
        """The open connection, made anew if there is none or it broke."""
        if self._closed:
            raise LedgerError("ledger is closed")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        try:
            self._conn = psycopg.connect(**self._params, autocommit=False)
        except psycopg.OperationalError as exc:
            raise LedgerConnectionError(
                f"cannot connect to PostgreSQL at {self.where}: {exc}"
            ) from exc
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _run(self, body: Callable[[Connection], T], *, write: bool) -> T:
        """Run ``body`` in one transaction under the lock; commit, or roll back on error.

        Writes are SERIALIZABLE and re-run from the start when they lose a race; reads
        see one snapshot. Connection trouble becomes ``LedgerConnectionError``.
        """
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn = self._connection()
                conn.isolation_level = (
                    IsolationLevel.SERIALIZABLE if write else IsolationLevel.REPEATABLE_READ
                )
                conn.read_only = not write
                began = False
                try:
                    with conn.transaction():
                        began = True
                        return body(conn)
                except RETRYABLE as exc:
                    if attempt >= self.max_attempts:
                        raise LedgerError(
                            f"transaction still conflicting after {attempt} attempts: {exc}"
                        ) from exc
                    self.retries += 1
                    _time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))
                except psycopg.OperationalError as exc:
                    if not (conn.closed or conn.broken):
                        raise  # a live connection: the statement itself failed
                    self._discard()
                    if not began and attempt == 1:
                        continue  # died while idle; nothing was sent: go on with a new one
                    raise LedgerConnectionError(
                        f"connection to PostgreSQL at {self.where} lost: {exc}"
                    ) from exc

    def _write(self, body: Callable[[Connection], T]) -> T:
        return self._run(body, write=True)

    def _read(self, body: Callable[[Connection], T]) -> T:
        return self._run(body, write=False)

    def _migrate(self) -> None:
        def migrate(conn: Connection) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.where} has schema version {version}; this code knows {SCHEMA_VERSION}"
                )
            if version < 1:
                for statement in SCHEMA_V1.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (1)")

        # READ COMMITTED, so that a pool waiting on the lock sees the other's tables after.
        with self._lock:
            conn = self._connection()
            conn.isolation_level = IsolationLevel.READ_COMMITTED
            conn.read_only = False
            try:
                with conn.transaction():
                    migrate(conn)
            except psycopg.OperationalError as exc:
                if conn.closed or conn.broken:
                    self._discard()
                    raise LedgerConnectionError(
                        f"connection to PostgreSQL at {self.where} lost: {exc}"
                    ) from exc
                raise

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        return self._read(
            lambda conn: conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

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

        def insert(conn: Connection) -> int:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO shares (digest, time, address, worker, job_id, height,"
                    " difficulty, network_difficulty, session_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (digest) DO NOTHING",
                    rows,
                )
                return cur.rowcount

        return self._write(insert)

    def share_stats(self, since: float) -> list[ShareStat]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT address, worker, COUNT(*), SUM(difficulty), MAX(time) FROM shares"
                " WHERE time >= %s GROUP BY address, worker ORDER BY address, worker",
                (since,),
            ).fetchall()
        )
        return [ShareStat(a, w, n, d, t) for a, w, n, d, t in rows]

    def share_count(self) -> int:
        return self._read(lambda conn: conn.execute("SELECT COUNT(*) FROM shares").fetchone()[0])

    @staticmethod
    @contextlib.contextmanager
    def _history(conn: Connection, at: float) -> Iterator[Iterator[tuple]]:
        """(time, address, difficulty, network_difficulty) at or before ``at``, newest
        first, fetched in chunks by a server-side cursor so no more is read than used."""
        with conn.cursor(name="matmine_history") as cur:
            cur.itersize = WINDOW_FETCH
            cur.execute(
                "SELECT time, address, difficulty, network_difficulty FROM shares"
                " WHERE time <= %s ORDER BY time DESC, id DESC",
                (at,),
            )
            yield iter(cur)

    @classmethod
    def _window_start(cls, conn: Connection, at: float, factor: float) -> float | None:
        """Time of the oldest share in the window of a block at ``at``; None if not full."""
        limit = Fraction(factor)
        total = Fraction(0)
        with cls._history(conn, at) as rows:
            for t, _address, d, nd in rows:
                total += Fraction(d) / Fraction(nd)
                if total >= limit:
                    return t
        return None

    def prune_shares(self, before: float, factor: float = 2.0) -> int:
        check_parameters(0, 0, factor)

        def prune(conn: Connection) -> int:
            cutoff = before
            ats = [float("inf")] + [
                t
                for (t,) in conn.execute(
                    "SELECT time FROM blocks WHERE status = %s", (FOUND,)
                ).fetchall()
            ]
            for at in ats:
                start = self._window_start(conn, at, factor)
                if start is None:
                    return 0
                cutoff = min(cutoff, start)
            return conn.execute("DELETE FROM shares WHERE time < %s", (cutoff,)).rowcount

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

        def record(conn: Connection) -> int:
            conn.execute(
                "INSERT INTO blocks (height, hash, reward, time, address, worker,"
                " network_difficulty, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (hash) DO NOTHING",
                row,
            )
            return conn.execute(
                "SELECT id FROM blocks WHERE hash = %s", (bytes(block_hash),)
            ).fetchone()[0]

        return self._write(record)

    @staticmethod
    def _get_block(conn: Connection, block_id: int, *, lock: bool = False) -> BlockRecord:
        row = conn.execute(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (int(block_id),),
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown block id {block_id}")
        return _block(row)

    def credit_block(
        self, block_id: int, factor: float, fee_bps: int, fee_address: str | None
    ) -> BlockRecord:
        def credit(conn: Connection) -> BlockRecord:
            block = self._get_block(conn, block_id, lock=True)
            if block.status != FOUND:
                return block
            check_parameters(block.reward, fee_bps, factor)
            times: list[float] = []

            with self._history(conn, block.time) as rows:

                def window() -> Iterator[ShareScore]:
                    for t, address, d, nd in rows:
                        times.append(t)
                        yield ShareScore(address, d, nd)

                split = pplns_split(window(), block.reward, fee_bps, factor)
            credits = dict(split.credits)
            to_fee = split.fee + split.remainder
            if fee_address is not None and to_fee > 0:
                credits[fee_address] = credits.get(fee_address, 0) + to_fee
            if credits:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO credits (block_id, address, amount, status)"
                        " VALUES (%s, %s, %s, %s)",
                        [(block.id, a, amount, CREDIT_PENDING) for a, amount in credits.items()],
                    )
            window_start = times[split.shares_used - 1] if split.shares_used else None
            conn.execute(
                "UPDATE blocks SET status = %s, fee = %s, remainder = %s, fee_address = %s,"
                " shares_used = %s, window_start = %s WHERE id = %s",
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
            return self._get_block(conn, block.id)

        return self._write(credit)

    def confirm_block(self, block_id: int) -> BlockRecord:
        def confirm(conn: Connection) -> BlockRecord:
            block = self._get_block(conn, block_id, lock=True)
            if block.status == CONFIRMED:
                return block
            if block.status != CREDITED:
                raise LedgerError(f"block {block_id} is {block.status}; cannot confirm it")
            credits = conn.execute(
                "SELECT address, amount FROM credits WHERE block_id = %s AND status = %s"
                " ORDER BY address",
                (block.id, CREDIT_PENDING),
            ).fetchall()
            now = _time.time()
            if credits:
                with conn.cursor() as cur:
                    cur.executemany(
                        ADD_TO_BALANCE, [(address, amount, now) for address, amount in credits]
                    )
            conn.execute(
                "UPDATE credits SET status = %s WHERE block_id = %s", (CREDIT_CONFIRMED, block.id)
            )
            conn.execute("UPDATE blocks SET status = %s WHERE id = %s", (CONFIRMED, block.id))
            return self._get_block(conn, block.id)

        return self._write(confirm)

    def orphan_block(self, block_id: int) -> BlockRecord:
        def orphan(conn: Connection) -> BlockRecord:
            block = self._get_block(conn, block_id, lock=True)
            if block.status == ORPHANED:
                return block
            if block.status == CONFIRMED:
                raise LedgerError(f"block {block_id} is confirmed; cannot orphan it")
            conn.execute(
                "UPDATE credits SET status = %s WHERE block_id = %s", (CREDIT_VOID, block.id)
            )
            conn.execute("UPDATE blocks SET status = %s WHERE id = %s", (ORPHANED, block.id))
            return self._get_block(conn, block.id)

        return self._write(orphan)

    def set_block_confirmations(self, block_id: int, confirmations: int) -> None:
        def set_confirmations(conn: Connection) -> None:
            self._get_block(conn, block_id, lock=True)
            conn.execute(
                "UPDATE blocks SET confirmations = %s WHERE id = %s",
                (int(confirmations), int(block_id)),
            )

        self._write(set_confirmations)

    def block(self, block_id: int) -> BlockRecord:
        return self._read(lambda conn: self._get_block(conn, block_id))

    def blocks(self, limit: int = 50) -> list[BlockRecord]:
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY height DESC, id DESC LIMIT %s",
                (int(limit),),
            ).fetchall()
        )
        return [_block(r) for r in rows]

    def unlockable_blocks(self) -> list[BlockRecord]:
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE status IN (%s, %s) ORDER BY id",
                (FOUND, CREDITED),
            ).fetchall()
        )
        return [_block(r) for r in rows]

    def block_credits(self, block_id: int) -> dict[str, int]:
        def credits(conn: Connection) -> dict[str, int]:
            self._get_block(conn, block_id)
            rows = conn.execute(
                "SELECT address, amount FROM credits WHERE block_id = %s", (int(block_id),)
            ).fetchall()
            return dict(rows)

        return self._read(credits)

    # --- balances and payments ----------------------------------------------------------

    def balances(self) -> dict[str, int]:
        return self._read(
            lambda conn: dict(
                conn.execute("SELECT address, amount FROM balances WHERE amount > 0").fetchall()
            )
        )

    def payable(self, min_payout: int) -> dict[str, int]:
        return self._read(
            lambda conn: dict(
                conn.execute(
                    "SELECT address, amount FROM balances WHERE amount > 0 AND amount >= %s",
                    (int(min_payout),),
                ).fetchall()
            )
        )

    def oldest_payable_since(self, min_payout: int) -> float | None:
        return self._read(
            lambda conn: conn.execute(
                "SELECT MIN(since) FROM balances WHERE amount > 0 AND amount >= %s",
                (int(min_payout),),
            ).fetchone()[0]
        )

    @staticmethod
    def _get_batch(conn: Connection, key: str, *, lock: bool = False) -> PaymentBatch | None:
        row = conn.execute(
            "SELECT key, status, created, txid, completed FROM payment_batches WHERE key = %s"
            + (" FOR UPDATE" if lock else ""),
            (key,),
        ).fetchone()
        if row is None:
            return None
        outputs = dict(
            conn.execute(
                "SELECT address, amount FROM payment_outputs WHERE key = %s ORDER BY address",
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

    def _stored_batch(self, conn: Connection, key: str) -> PaymentBatch:
        batch = self._get_batch(conn, key)
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

        def create(conn: Connection) -> PaymentBatch:
            existing = self._get_batch(conn, key, lock=True)
            if existing is not None:
                if existing.outputs != wanted:
                    raise LedgerError(f"payment key {key!r} already used for other outputs")
                return existing
            # Lock the balances in one order, so two payers wait rather than deadlock.
            for address in sorted(wanted):
                amount = wanted[address]
                row = conn.execute(
                    "SELECT amount FROM balances WHERE address = %s FOR UPDATE", (address,)
                ).fetchone()
                balance = row[0] if row else 0
                if amount > balance:
                    raise LedgerError(
                        f"payment of {amount} to {address} exceeds its balance {balance}"
                    )
                conn.execute(
                    "UPDATE balances SET amount = amount - %s WHERE address = %s",
                    (amount, address),
                )
            conn.execute(
                "INSERT INTO payment_batches (key, status, created) VALUES (%s, %s, %s)",
                (key, PENDING, _time.time()),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO payment_outputs (key, address, amount) VALUES (%s, %s, %s)",
                    [(key, a, amount) for a, amount in wanted.items()],
                )
            return self._stored_batch(conn, key)

        return self._write(create)

    def complete_payment_batch(self, key: str, txid: str) -> PaymentBatch:
        if not isinstance(txid, str) or not txid:
            raise ValueError("txid must be a non-empty string")

        def complete(conn: Connection) -> PaymentBatch:
            batch = self._get_batch(conn, key, lock=True)
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
                "UPDATE payment_batches SET status = %s, txid = %s, completed = %s"
                " WHERE key = %s",
                (COMPLETED, txid, _time.time(), key),
            )
            return self._stored_batch(conn, key)

        return self._write(complete)

    def cancel_payment_batch(self, key: str) -> PaymentBatch:
        def cancel(conn: Connection) -> PaymentBatch:
            batch = self._get_batch(conn, key, lock=True)
            if batch is None:
                raise LedgerError(f"unknown payment batch {key!r}")
            if batch.status == CANCELLED:
                return batch
            if batch.status != PENDING:
                raise LedgerError(f"payment batch {key!r} is {batch.status}; cannot cancel it")
            now = _time.time()
            with conn.cursor() as cur:
                cur.executemany(
                    ADD_TO_BALANCE,
                    [(address, amount, now) for address, amount in sorted(batch.outputs.items())],
                )
            conn.execute(
                "UPDATE payment_batches SET status = %s WHERE key = %s", (CANCELLED, key)
            )
            return self._stored_batch(conn, key)

        return self._write(cancel)

    def pending_payment_batches(self) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches WHERE status = %s ORDER BY created, key", (PENDING,)
        )

    def payment_batch(self, key: str) -> PaymentBatch:
        batch = self._read(lambda conn: self._get_batch(conn, key))
        if batch is None:
            raise LedgerError(f"unknown payment batch {key!r}")
        return batch

    def payments(self, limit: int = 50) -> list[PaymentBatch]:
        return self._batches(
            "SELECT key FROM payment_batches ORDER BY created DESC, key DESC LIMIT %s",
            (int(limit),),
        )

    def _batches(self, query: str, params: tuple) -> list[PaymentBatch]:
        def batches(conn: Connection) -> list[PaymentBatch | None]:
            keys = [k for (k,) in conn.execute(query, params).fetchall()]
            return [self._get_batch(conn, k) for k in keys]

        return [b for b in self._read(batches) if b is not None]

    def pending_payout_total(self) -> int:
        def total(conn: Connection) -> int:
            balances = conn.execute(
                "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM balances"
            ).fetchone()[0]
            pending = conn.execute(
                "SELECT COALESCE(SUM(o.amount), 0)::BIGINT FROM payment_outputs o"
                " JOIN payment_batches b ON b.key = o.key WHERE b.status = %s",
                (PENDING,),
            ).fetchone()[0]
            return balances + pending

        return self._read(total)

    # --- summaries ----------------------------------------------------------------------

    def miner(self, address: str, payments_limit: int = 20) -> MinerSummary:
        def summary(conn: Connection) -> MinerSummary:
            def one(query: str, *params: object) -> int:
                return conn.execute(query, params).fetchone()[0]

            balance = one(
                "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM balances WHERE address = %s",
                address,
            )
            immature = one(
                "SELECT COALESCE(SUM(c.amount), 0)::BIGINT FROM credits c JOIN blocks b"
                " ON b.id = c.block_id WHERE c.address = %s AND c.status = %s",
                address,
                CREDIT_PENDING,
            )
            paid_by_status = dict(
                conn.execute(
                    "SELECT b.status, SUM(o.amount)::BIGINT FROM payment_outputs o"
                    " JOIN payment_batches b ON b.key = o.key WHERE o.address = %s"
                    " GROUP BY b.status",
                    (address,),
                ).fetchall()
            )
            workers = dict(
                conn.execute(
                    "SELECT worker, MAX(time) FROM shares WHERE address = %s GROUP BY worker",
                    (address,),
                ).fetchall()
            )
            payments = [
                MinerPayment(key=k, amount=a, status=s, txid=tx, time=t)
                for k, a, s, tx, t in conn.execute(
                    "SELECT b.key, o.amount, b.status, b.txid, COALESCE(b.completed, b.created)"
                    " FROM payment_outputs o JOIN payment_batches b ON b.key = o.key"
                    " WHERE o.address = %s AND b.status != %s ORDER BY b.created DESC LIMIT %s",
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
        def totals(conn: Connection) -> PoolTotals:
            def one(query: str, *params: object) -> int:
                return conn.execute(query, params).fetchone()[0]

            by_status = dict(
                conn.execute("SELECT status, COUNT(*) FROM blocks GROUP BY status").fetchall()
            )
            batch_sums = dict(
                conn.execute(
                    "SELECT b.status, SUM(o.amount)::BIGINT FROM payment_outputs o"
                    " JOIN payment_batches b ON b.key = o.key GROUP BY b.status"
                ).fetchall()
            )
            return PoolTotals(
                shares=one("SELECT COUNT(*) FROM shares"),
                blocks_found=sum(by_status.values()),
                blocks_pending=by_status.get(FOUND, 0) + by_status.get(CREDITED, 0),
                blocks_confirmed=by_status.get(CONFIRMED, 0),
                blocks_orphaned=by_status.get(ORPHANED, 0),
                balances=one("SELECT COALESCE(SUM(amount), 0)::BIGINT FROM balances"),
                immature=one(
                    "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM credits WHERE status = %s",
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

