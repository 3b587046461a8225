"""``SqliteLedger``: the ledger on one SQLite file in WAL mode.

One connection per object, guarded by a lock; every write is one ``BEGIN IMMEDIATE``
transaction, so with ``synchronous=FULL`` (the default) a method that returns has its
effect on disk. The SQL is ``SqlLedger``'s (``sql.py``), shared with the PostgreSQL
ledger; the pragmas and transactions are :mod:`toolkit.sqlite`'s, like every store's.
The schema version is kept in ``SqlLedger``'s portable ``schema_version`` table (one for
both databases), not in ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from toolkit.sqlite import StoreError, connect, transaction

from .base import LedgerError
from .sql import SqlLedger, Transaction

T = TypeVar("T")

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


# Version 2: a block waiting for the node's answer keeps its submission; a rejected block
# its reason.
MIGRATIONS_TO = {
    2: """
ALTER TABLE blocks ADD COLUMN reason TEXT;
CREATE TABLE block_submissions (
    block_id INTEGER PRIMARY KEY REFERENCES blocks (id),
    submission BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL,
    last_attempt REAL
)
""",
    # Version 3: each block's effort (its round's share work over its network difficulty);
    # NULL for the blocks recorded before.
    3: "ALTER TABLE blocks ADD COLUMN effort REAL",
}


class SqliteLedger(SqlLedger):
    """The ledger in the SQLite file at ``path`` (created if missing).

    ``synchronous`` is SQLite's pragma: "FULL" (default) makes every committed write
    durable across power loss; "NORMAL" only across process crashes.
    """

    SCHEMA = SCHEMA_V1
    MIGRATIONS = MIGRATIONS_TO

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
    ) -> None:
        if str(path) == ":memory:":
            raise ValueError("SqliteLedger needs a file path (WAL does not apply to :memory:)")
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = connect(
                self.path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms
            )
        except StoreError as exc:
            raise LedgerError(str(exc)) from None
        try:
            self._write(self._create_schema)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _run(self, body: Callable[[Transaction], T], *, write: bool) -> T:
        """A write is one ``BEGIN IMMEDIATE`` transaction (it shuts out every other
        writer of the file); a read is one deferred transaction (one snapshot)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise LedgerError("ledger is closed")
            with transaction(conn, write=write):
                return body(Transaction(conn))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
