"""Registered operands of the useful-work queue: a customer's B kept for many products.

A customer registers an operand B (k×n int8) once (:meth:`OperandSide.register`); it is
stored as a content-addressed blob (its id is BLAKE3 of B's row-major bytes) and named by
that id in later submissions of A alone (:meth:`~OperandSide.operand_matrix`). Every
customer sees only its own operands; the same bytes registered by two customers are one
blob with two registrations. A deleted registration keeps its blob while a remembered
item names it (:meth:`~OperandSide.operand_blobs`, for retention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pool.useful.queue_model import QueueDb, WorkInputError, WorkLimitError, WorkNotFound
from protocol.errors import ProtocolError
from protocol.useful import choose_r, padded_k
from protocol.workload import check_entries


@dataclass(frozen=True)
class OperandInfo:
    """One registered operand B (k×n) of a customer."""

    id: bytes
    customer: str
    k: int
    n: int
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id.hex(), "shape": {"k": self.k, "n": self.n}, "created": self.created}


def parse_operand_id(text: str) -> bytes:
    """An operand id from its 64 lowercase hex digits; :class:`WorkNotFound` otherwise."""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise WorkNotFound(f"no operand {text!r:.70}: an id is 64 lowercase hex digits")
    return bytes.fromhex(text)


class OperandSide(QueueDb):
    """Customers' registered operands."""

    def check_operand_shape(self, customer: str, k: int, n: int) -> None:
        """Raise :class:`WorkLimitError` if B (k×n) may not be registered by ``customer``."""
        cfg = self.config
        if n > cfg.max_dim:
            raise WorkLimitError(f"n = {n} is over the limit of {cfg.max_dim}")
        kp = padded_k(k, choose_r(k, cfg.r))
        if kp > cfg.max_k:
            raise WorkLimitError(f"k = {k} (padded {kp}) is over the limit {cfg.max_k}")
        if k * n > cfg.max_upload_bytes:
            raise WorkLimitError(f"B is {k * n} bytes, over the limit of {cfg.max_upload_bytes}")
        with self._lock:
            count = self._db.execute(
                "SELECT COUNT(*) FROM operands WHERE customer = ?", (customer,)
            ).fetchone()[0]
        if count >= cfg.max_operands:
            raise WorkLimitError(
                f"{count} registered operands, the limit per customer is {cfg.max_operands}; "
                "delete one first",
                http_status=429,
            )

    def register(self, customer: str, b: np.ndarray) -> OperandInfo:
        """Register B (k×n int8 in [-64, 64]) for ``customer``; again: the same operand.

        CPU and file work (hashing, blob write): call it in a worker thread.
        """
        if b.ndim != 2 or 0 in b.shape or b.dtype != np.int8:
            raise WorkInputError(f"B must be a non-empty 2-D int8 array, got {b.dtype} {b.shape}")
        try:
            check_entries(b, "B")
        except ProtocolError as exc:
            raise WorkInputError(str(exc)) from None
        k, n = (int(x) for x in b.shape)
        bid = self.blobs.put_matrix(np.ascontiguousarray(b)).blob_id
        try:
            return self.operand(customer, bid)
        except WorkNotFound:
            pass
        self.check_operand_shape(customer, k, n)
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO operands (customer, id, k, n, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (customer, bid, k, n, now),
            )
        return self.operand(customer, bid)

    def operand(self, customer: str, operand_id: bytes) -> OperandInfo:
        """``customer``'s operand ``operand_id``; :class:`WorkNotFound` if it is not theirs."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, customer, k, n, created FROM operands WHERE customer = ? AND id = ?",
                (customer, operand_id),
            ).fetchone()
        if row is None:
            raise WorkNotFound(f"no operand {operand_id.hex()} of this customer")
        return OperandInfo(*row)

    def operands(self, customer: str) -> list[OperandInfo]:
        """``customer``'s operands, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, customer, k, n, created FROM operands WHERE customer = ? "
                "ORDER BY created, id",
                (customer,),
            ).fetchall()
        return [OperandInfo(*row) for row in rows]

    def operand_matrix(self, customer: str, operand_id: bytes) -> np.ndarray:
        """B (k×n int8, read-only) of ``customer``'s operand ``operand_id``."""
        info = self.operand(customer, operand_id)
        b = self.blobs.matrix(info.id)
        if b.shape != (info.k, info.n):
            raise WorkNotFound(f"operand {operand_id.hex()} is damaged in the blob store")
        return b

    def delete_operand(self, customer: str, operand_id: bytes) -> None:
        """Forget ``customer``'s registration of ``operand_id`` (items on it go on)."""
        with self._tx() as db:
            gone = db.execute(
                "DELETE FROM operands WHERE customer = ? AND id = ?", (customer, operand_id)
            ).rowcount
        if not gone:
            raise WorkNotFound(f"no operand {operand_id.hex()} of this customer")

    def operand_blobs(self) -> set[bytes]:
        """Blobs of registered operands and of operands named by remembered items."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM operands UNION SELECT b_operand FROM items "
                "WHERE b_operand IS NOT NULL"
            ).fetchall()
        return {r[0] for r in rows}
