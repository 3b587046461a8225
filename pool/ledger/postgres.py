"""``PostgresLedger``: the ledger in a PostgreSQL database, shared by any number of pools.

The SQL is ``SqlLedger``'s (``sql.py`` and its repositories), shared with
``SqliteLedger``; this file adds the connection and the transactions. One connection per
object, guarded by a lock. Every write is one explicit ``SERIALIZABLE`` transaction that
also locks the rows it decides on (``SELECT ... FOR UPDATE``): two pool instances on one
database run their writes as if one after the other, so a balance is never paid twice and
a block never credited or confirmed twice. A transaction that loses such a race
(serialization failure, deadlock) is rolled back and run again from the start, up to
``max_attempts`` times. Reads are one ``REPEATABLE READ READ ONLY`` transaction (one
consistent snapshot). A method returns only after its COMMIT is acknowledged, which with
the server's default ``synchronous_commit = on`` means the change is in the flushed WAL.

A lost connection (server restarted, network cut) makes the call raise
``LedgerConnectionError`` (a ``LedgerUnavailable``); the next call connects again. When the
connection turns out dead before anything was sent (a restart while the pool was idle),
the call reconnects and goes on by itself. If the connection breaks during COMMIT the
outcome is unknown to the caller; every write is idempotent (share digests, block hashes,
payment keys), so doing it again is safe.

A database that hangs (a stopped server, a lost network) never blocks a call for long:
libpq's ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` bound the connection,
the server's ``statement_timeout`` bounds each statement, and a client-side deadline
(``call_timeout``) shuts the socket of a call that has not finished in time, because a
stopped server on the same host still acknowledges every TCP segment. Such a call raises
``LedgerConnectionError``; the next call connects again.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time as _time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.conninfo import conninfo_to_dict

from .base import LedgerError, LedgerUnavailable
from .sql import SqlLedger
from .transaction import HISTORY, Transaction

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


# Version 2: a block waiting for the node's answer keeps its submission; a rejected block
# its reason.
MIGRATIONS_TO = {
    2: """
ALTER TABLE blocks ADD COLUMN reason TEXT;
CREATE TABLE block_submissions (
    block_id BIGINT PRIMARY KEY REFERENCES blocks (id),
    submission BYTEA NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created DOUBLE PRECISION NOT NULL,
    last_attempt DOUBLE PRECISION
)
""",
    # Version 3: each block's effort (its round's share work over its network difficulty);
    # NULL for the blocks recorded before.
    3: "ALTER TABLE blocks ADD COLUMN effort DOUBLE PRECISION",
}


class LedgerConnectionError(LedgerUnavailable):
    """The database cannot be reached, or the connection broke during the call."""


class PostgresTransaction(Transaction):
    """``%s`` placeholders, row locks, and the share history read by a server-side cursor."""

    PLACEHOLDER = "%s"
    FOR_UPDATE = " FOR UPDATE"

    @contextlib.contextmanager
    def history(self, at: float) -> Iterator[Iterator[tuple]]:
        """As ``Transaction.history``, fetched in chunks so no more is read than used."""
        with self.conn.cursor(name="matmine_history") as cur:
            cur.itersize = WINDOW_FETCH
            cur.execute(self.sql(HISTORY), (at,))
            yield iter(cur)


class PostgresLedger(SqlLedger):
    """The ledger in the PostgreSQL database at ``url`` (``postgresql://...``).

    The tables are created on first use. ``connect_timeout`` (seconds) applies when the
    URL names none; ``max_attempts`` bounds the re-runs of a write that lost a race.
    """

    SCHEMA = SCHEMA_V1
    MIGRATIONS = MIGRATIONS_TO

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10,
        statement_timeout: float = 30,
        call_timeout: float = 60,
        max_attempts: int = 20,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not (connect_timeout > 0 and statement_timeout > 0 and call_timeout > 0):
            raise ValueError("PostgreSQL timeouts must be positive")
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"bad PostgreSQL URL: {exc}") from None
        params.setdefault("connect_timeout", max(1, round(connect_timeout)))
        params.setdefault("application_name", "matmine-pool")
        # A dead peer is noticed within about 10 + 3 x 5 s; unacknowledged data in 20 s.
        for key, value in (
            ("keepalives", 1),
            ("keepalives_idle", 10),
            ("keepalives_interval", 5),
            ("keepalives_count", 3),
            ("tcp_user_timeout", 20_000),
        ):
            params.setdefault(key, value)
        ms = max(1, round(statement_timeout * 1000))
        params["options"] = (
            f"-c statement_timeout={ms} "
            f"-c idle_in_transaction_session_timeout={ms} " + str(params.get("options", ""))
        ).strip()
        self.call_timeout = call_timeout
        self._params: dict[str, Any] = params
        # Where, for messages: never the password.
        self.where = "{}:{}/{}".format(
            params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "")
        )
        self.max_attempts = max_attempts
        self.retries = 0  # writes re-run after losing a race to another connection
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._deadline_lock = threading.Lock()
        self._watched: Connection | None = None  # the connection a deadline may shut
        self._timed_out = False
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

    def _shut(self, conn: Connection) -> None:
        """The deadline passed: shut the call's socket so the waiting thread wakes up."""
        with self._deadline_lock:
            if self._watched is not conn:
                return  # the call ended meanwhile
            self._timed_out = True
            with contextlib.suppress(Exception):
                fd = conn.pgconn.socket
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def _deadline(self, conn: Connection) -> Iterator[None]:
        timer = threading.Timer(self.call_timeout, self._shut, (conn,))
        timer.daemon = True
        with self._deadline_lock:
            self._watched, self._timed_out = conn, False
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self._deadline_lock:
                self._watched = None

    def _run(
        self,
        body: Callable[[Transaction], T],
        *,
        write: bool,
        isolation: IsolationLevel | None = None,
    ) -> T:
        """Writes are SERIALIZABLE and re-run from the start when they lose a race; reads
        see one snapshot (REPEATABLE READ); ``isolation`` overrides either. Connection
        trouble becomes ``LedgerConnectionError``.
        """
        if isolation is None:
            isolation = IsolationLevel.SERIALIZABLE if write else IsolationLevel.REPEATABLE_READ
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn = self._connection()
                conn.isolation_level = isolation
                conn.read_only = not write
                began = False
                try:
                    with self._deadline(conn), conn.transaction():
                        began = True
                        return body(PostgresTransaction(conn))
                except RETRYABLE as exc:
                    if attempt >= self.max_attempts:
                        raise LedgerError(
                            f"transaction still conflicting after {attempt} attempts: {exc}"
                        ) from exc
                    self.retries += 1
                    _time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))
                except errors.QueryCanceled as exc:  # statement_timeout
                    raise LedgerConnectionError(
                        f"PostgreSQL at {self.where} did not finish a statement in time: {exc}"
                    ) from exc
                except psycopg.OperationalError as exc:
                    if self._timed_out:
                        self._discard()
                        raise LedgerConnectionError(
                            f"PostgreSQL at {self.where} did not answer within "
                            f"{self.call_timeout:g} s"
                        ) from exc
                    if not (conn.closed or conn.broken):
                        raise  # a live connection: the statement itself failed
                    self._discard()
                    if not began and attempt == 1:
                        continue  # died while idle; nothing was sent: go on with a new one
                    raise LedgerConnectionError(
                        f"connection to PostgreSQL at {self.where} lost: {exc}"
                    ) from exc

    def _migrate(self) -> None:
        def migrate(tx: Transaction) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            self._create_schema(tx)

        # READ COMMITTED, so that a pool waiting on the lock sees the other's tables after.
        self._run(migrate, write=True, isolation=IsolationLevel.READ_COMMITTED)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()
