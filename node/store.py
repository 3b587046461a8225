"""SQLite persistence of the devnet node: blocks, the main chain, payments (WAL mode).

Opened, migrated and run in transactions by :mod:`toolkit.sqlite` (``synchronous=NORMAL``:
the devnet chain may lose its last blocks on power loss, never its consistency). Schema
version 1 is the schema from before versioning (``IF NOT EXISTS`` throughout), so a file
made by older code opens as it is.

One connection, used by one thread at a time (the owner, :class:`node.chain.Chain`,
serialises access with its lock). Balances are not stored but derived from blocks and
payments, so they can never drift from the chain after a reorg or a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from toolkit.sqlite import connect, migrate, transaction

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS blocks (
    hash      BLOB PRIMARY KEY,
    height    INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    header    BLOB NOT NULL,
    coinbase  BLOB NOT NULL,
    address   TEXT NOT NULL,
    reward    INTEGER NOT NULL,
    bits      INTEGER NOT NULL,
    time      INTEGER NOT NULL,
    forged    INTEGER NOT NULL,
    main      INTEGER NOT NULL,
    received  REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_main_height ON blocks(height) WHERE main = 1;
CREATE INDEX IF NOT EXISTS blocks_address ON blocks(address, main, height);
CREATE TABLE IF NOT EXISTS payments (
    key          TEXT PRIMARY KEY,
    txid         TEXT NOT NULL UNIQUE,
    from_address TEXT NOT NULL,
    outputs      TEXT NOT NULL,
    total        INTEGER NOT NULL,
    created      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_from ON payments(from_address);
CREATE TABLE IF NOT EXISTS payment_outputs (
    txid    TEXT NOT NULL,
    address TEXT NOT NULL,
    amount  INTEGER NOT NULL,
    PRIMARY KEY (txid, address)
);
CREATE INDEX IF NOT EXISTS payment_outputs_address ON payment_outputs(address);
"""
MIGRATIONS = [SCHEMA_V1]

_BLOCK_COLUMNS = (
    "hash, height, prev_hash, header, coinbase, address, reward, bits, time, forged, main, received"
)


@dataclass(frozen=True)
class StoredBlock:
    """One block as the node keeps it; ``main`` is False once it is orphaned."""

    hash: bytes
    height: int
    prev_hash: bytes
    header: bytes
    coinbase: bytes
    address: str
    reward: int
    bits: int
    time: int
    forged: bool
    main: bool
    received: float


@dataclass(frozen=True)
class StoredPayment:
    """A ``send_many`` as recorded: its key, txid, sender and outputs."""

    key: str
    txid: str
    from_address: str
    outputs: dict[str, int]
    total: int
    created: float


def canonical_outputs(outputs: dict[str, int]) -> str:
    """The outputs as stable JSON (sorted keys), to compare a replayed request."""
    return json.dumps(outputs, sort_keys=True, separators=(",", ":"))


def _block(row: tuple) -> StoredBlock:
    return StoredBlock(
        bytes(row[0]),
        row[1],
        bytes(row[2]),
        bytes(row[3]),
        bytes(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        bool(row[9]),
        bool(row[10]),
        row[11],
    )


class NodeStore:
    """The node's SQLite database at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect(self.path, synchronous="NORMAL")
        try:
            migrate(self._db, MIGRATIONS, where=str(self.path))
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back on any exception."""
        with transaction(self._db):
            yield

    # blocks -----------------------------------------------------------------------------

    def insert_block(self, b: StoredBlock) -> None:
        self._db.execute(
            f"INSERT INTO blocks({_BLOCK_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                b.hash,
                b.height,
                b.prev_hash,
                b.header,
                b.coinbase,
                b.address,
                b.reward,
                b.bits,
                b.time,
                int(b.forged),
                int(b.main),
                b.received,
            ),
        )

    def set_main(self, block_hash: bytes, main: bool) -> None:
        self._db.execute("UPDATE blocks SET main = ? WHERE hash = ?", (int(main), block_hash))

    def block(self, block_hash: bytes) -> StoredBlock | None:
        row = self._db.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE hash = ?", (block_hash,)
        ).fetchone()
        return None if row is None else _block(row)

    def tip(self) -> StoredBlock | None:
        row = self._db.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE main = 1 ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _block(row)

    def main_chain(self, low: int, high: int) -> list[StoredBlock]:
        """Main-chain blocks with ``low ≤ height ≤ high``, lowest first."""
        rows = self._db.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE main = 1 AND height BETWEEN ? AND ? "
            "ORDER BY height",
            (low, high),
        ).fetchall()
        return [_block(r) for r in rows]

    def coinbase_total(self, address: str, low: int, high: int) -> int:
        """Sum of main-chain rewards to ``address`` at heights ``low..high``."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(reward), 0) FROM blocks "
            "WHERE address = ? AND main = 1 AND height BETWEEN ? AND ?",
            (address, low, high),
        ).fetchone()
        return int(row[0])

    # payments ---------------------------------------------------------------------------

    def payment(self, key: str) -> StoredPayment | None:
        row = self._db.execute(
            "SELECT key, txid, from_address, outputs, total, created FROM payments WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return StoredPayment(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    def insert_payment(self, p: StoredPayment) -> None:
        self._db.execute(
            "INSERT INTO payments(key, txid, from_address, outputs, total, created) "
            "VALUES(?,?,?,?,?,?)",
            (p.key, p.txid, p.from_address, canonical_outputs(p.outputs), p.total, p.created),
        )
        self._db.executemany(
            "INSERT INTO payment_outputs(txid, address, amount) VALUES(?,?,?)",
            [(p.txid, addr, amount) for addr, amount in sorted(p.outputs.items())],
        )

    def received_total(self, address: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM payment_outputs WHERE address = ?", (address,)
        ).fetchone()
        return int(row[0])

    def sent_total(self, address: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(total), 0) FROM payments WHERE from_address = ?", (address,)
        ).fetchone()
        return int(row[0])
