"""``BlockRepository``: found blocks, their PPLNS credits and their life cycle."""

from __future__ import annotations

import math
import time as _time
from collections.abc import Iterator, Sequence
from typing import Any

from ..pplns import ShareScore, check_parameters, pplns_split
from .base import (
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    REJECTED,
    SUBMITTING,
    BlockRecord,
    LedgerError,
    PendingSubmission,
)
from .payments import ADD_TO_BALANCE
from .transaction import MAX_AMOUNT, SqlStore, Transaction

# Credit states.
CREDIT_PENDING = "pending"
CREDIT_CONFIRMED = "confirmed"
CREDIT_VOID = "void"

BLOCK_COLUMNS = (
    "id, height, hash, reward, time, address, worker, network_difficulty, status, "
    "confirmations, fee, remainder, fee_address, shares_used, reason, effort"
)
BLOCK_FIELDS = len(BLOCK_COLUMNS.split(","))


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
        reason=row[14],
        effort=row[15],
    )


def round_effort(tx: Transaction, time: float, network_difficulty: float) -> float:
    """The effort of a block at ``time``: the accepted share difficulty after the newest
    block recorded before it, up to ``time``, over ``network_difficulty``."""
    (since,) = tx.execute("SELECT MAX(time) FROM blocks WHERE time < ?", (time,)).fetchone()
    query = "SELECT COALESCE(SUM(difficulty), 0) FROM shares WHERE time <= ?"
    params: tuple[float, ...] = (time,)
    if since is not None:
        query, params = query + " AND time > ?", (time, float(since))
    (work,) = tx.execute(query, params).fetchone()
    return float(work) / network_difficulty


class BlockRepository(SqlStore):
    """The ``Ledger`` methods on the ``blocks`` and ``credits`` tables."""

    def record_block(
        self,
        height: int,
        block_hash: bytes,
        reward: int,
        time: float,
        address: str,
        worker: str,
        network_difficulty: float,
        submission: bytes | None = None,
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
            FOUND if submission is None else SUBMITTING,
        )

        def record(tx: Transaction) -> int:
            effort = round_effort(tx, float(time), float(network_difficulty))
            tx.execute(
                "INSERT INTO blocks (height, hash, reward, time, address, worker,"
                " network_difficulty, status, effort) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (hash) DO NOTHING",
                (*row, effort),
            )
            block_id, status = tx.execute(
                "SELECT id, status FROM blocks WHERE hash = ?", (bytes(block_hash),)
            ).fetchone()
            if submission is not None and status == SUBMITTING:
                tx.execute(
                    "INSERT INTO block_submissions (block_id, submission, attempts, created)"
                    " VALUES (?, ?, 0, ?) ON CONFLICT (block_id) DO NOTHING",
                    (block_id, bytes(submission), _time.time()),
                )
            return block_id

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

    def block_submitted(self, block_id: int) -> bool:
        def submitted(tx: Transaction) -> bool:
            block = self._get_block(tx, block_id, lock=True)
            if block.status != SUBMITTING:
                return False
            tx.execute("DELETE FROM block_submissions WHERE block_id = ?", (block.id,))
            tx.execute("UPDATE blocks SET status = ? WHERE id = ?", (FOUND, block.id))
            return True

        return self._write(submitted)

    def reject_block(self, block_id: int, reason: str) -> BlockRecord:
        def reject(tx: Transaction) -> BlockRecord:
            block = self._get_block(tx, block_id, lock=True)
            if block.status == REJECTED:
                return block
            if block.status not in (SUBMITTING, FOUND):
                raise LedgerError(f"block {block_id} is {block.status}; cannot reject it")
            tx.execute("DELETE FROM block_submissions WHERE block_id = ?", (block.id,))
            tx.execute("UPDATE credits SET status = ? WHERE block_id = ?", (CREDIT_VOID, block.id))
            tx.execute(
                "UPDATE blocks SET status = ?, reason = ? WHERE id = ?",
                (REJECTED, str(reason)[:500], block.id),
            )
            return self._get_block(tx, block.id)

        return self._write(reject)

    def submission_failed(self, block_id: int, error: str) -> int:
        def failed(tx: Transaction) -> int:
            block = self._get_block(tx, block_id, lock=True)
            tx.execute(
                "UPDATE block_submissions SET attempts = attempts + 1, last_error = ?,"
                " last_attempt = ? WHERE block_id = ?",
                (str(error)[:500], _time.time(), block.id),
            )
            row = tx.execute(
                "SELECT attempts FROM block_submissions WHERE block_id = ?", (block.id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return self._write(failed)

    def pending_submissions(self) -> list[PendingSubmission]:
        columns = ", ".join(f"b.{c.strip()}" for c in BLOCK_COLUMNS.split(","))
        rows = self._read(
            lambda tx: tx.execute(
                f"SELECT {columns}, s.submission, s.attempts, s.last_error FROM blocks b"
                " JOIN block_submissions s ON s.block_id = b.id WHERE b.status = ?"
                " ORDER BY b.id",
                (SUBMITTING,),
            ).fetchall()
        )
        n = BLOCK_FIELDS
        return [PendingSubmission(_block(r[:n]), bytes(r[n]), r[n + 1], r[n + 2]) for r in rows]

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
