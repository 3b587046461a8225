"""The customer side of the useful-work queue: submit, status, results, pruning.

Items come in (:meth:`ItemSide.submit`, checked against the customer limits by
:meth:`ItemSide.admit`), are read back (:meth:`~ItemSide.status`, units), get their
assembled product (:meth:`~ItemSide.finish_item`) and are forgotten after retention
(:meth:`~ItemSide.prune_finished`).
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import replace

import numpy as np

from pool.useful import UNIT_STATES
from pool.useful.blobstore import BlobInfo
from pool.useful.queue_model import (
    UNIT_COLUMNS,
    ItemStatus,
    QueueDb,
    Unit,
    WorkError,
    WorkInputError,
    WorkLimitError,
    WorkNotFound,
    unit_from_row,
)
from protocol.errors import ProtocolError
from protocol.useful import ProductPlan, check_operands, plan_product, unit_id, unit_operands


class ItemSide(QueueDb):
    """Customers' items and their units."""

    def submit(
        self, customer: str, a: np.ndarray, b: np.ndarray, *, b_operand: bytes | None = None
    ) -> ItemStatus:
        """Queue the product ``a (m×k) · b (k×n)`` for ``customer``; returns its status.

        ``b_operand``: the id of the registered operand ``b`` is (kept with the item).

        Raises :class:`WorkInputError` for operands that are not a valid product and
        :class:`WorkLimitError` when it breaks a size or count limit. CPU work (row
        hashing, blob writes): call it in a worker thread.
        """
        try:
            check_operands(a, b)
        except ProtocolError as exc:
            raise WorkInputError(str(exc)) from None
        (m, k), n = a.shape, b.shape[1]
        plan = self.admit(customer, m, k, n)
        operand_bytes = a.nbytes + b.nbytes

        bt = b.T  # a view: each unit copies its own columns, B is never copied whole
        a_blobs: dict[int, BlobInfo] = {}
        b_blobs: dict[int, BlobInfo] = {}
        rows = []
        for unit in plan.units:
            if unit.row0 not in a_blobs or unit.col0 not in b_blobs:
                ua, ub = unit_operands(a, bt, unit)
                if unit.row0 not in a_blobs:
                    a_blobs[unit.row0] = self.blobs.put_matrix(ua)
                if unit.col0 not in b_blobs:
                    b_blobs[unit.col0] = self.blobs.put_matrix(ub)
                del ua, ub
            ai, bi = a_blobs[unit.row0], b_blobs[unit.col0]
            s = unit.shape
            rows.append(
                (
                    unit.index,
                    unit_id(s, ai.rows_root, bi.rows_root),
                    unit.row0,
                    unit.rows,
                    unit.col0,
                    unit.cols,
                    unit.k,
                    s.m,
                    s.n,
                    s.k,
                    s.r,
                    ai.blob_id,
                    bi.blob_id,
                    ai.rows_root,
                    bi.rows_root,
                )
            )
        item_id = secrets.token_hex(12)
        now = self.clock()
        with self._tx() as db:
            self._check_customer(customer, operand_bytes, db)  # again, inside the transaction
            db.execute(
                "INSERT INTO items (id, customer, m, n, k, r, state, units, operand_bytes, "
                "created, b_operand) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (item_id, customer, m, n, k, plan.r, len(rows), operand_bytes, now, b_operand),
            )
            db.executemany(
                "INSERT INTO units (item, idx, unit_id, row0, rows, col0, cols, k_real, m, n, "
                "k, r, a_blob, b_blob, a_root, b_root, state, queued_since) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                [(item_id, *row, now) for row in rows],
            )
        self._units_changed()
        return self.status(item_id)

    def admit(self, customer: str, m: int, k: int, n: int) -> ProductPlan:
        """The plan of ``A (m×k) · B (k×n)`` if ``customer`` may submit it now.

        Raises :class:`WorkLimitError` for a size or count limit, as :meth:`submit` does,
        so the work API can refuse an upload from its headers, before its body.
        """
        cfg = self.config
        for name, value in (("m", m), ("n", n)):
            if value > cfg.max_dim:
                raise WorkLimitError(f"{name} = {value} is over the limit of {cfg.max_dim}")
        operand_bytes = m * k + k * n
        if operand_bytes > cfg.max_upload_bytes:
            raise WorkLimitError(
                f"A and B are {operand_bytes} bytes, over the limit of {cfg.max_upload_bytes}"
            )
        try:
            plan = plan_product(
                m,
                n,
                k,
                r=cfg.r,
                unit_m=cfg.unit_m,
                unit_n=cfg.unit_n,
                b_max_bytes=cfg.unit_b_max_bytes,
            )
        except ProtocolError as exc:
            raise WorkLimitError(str(exc)) from None
        if plan.k_padded > cfg.max_k:
            raise WorkLimitError(f"k = {k} (padded {plan.k_padded}) is over the limit {cfg.max_k}")
        self._check_customer(customer, operand_bytes)
        return plan

    def _check_customer(
        self, customer: str, operand_bytes: int, db: sqlite3.Connection | None = None
    ) -> None:
        cfg = self.config
        query = (
            "SELECT COUNT(*), COALESCE(SUM(operand_bytes), 0) FROM items "
            "WHERE customer = ? AND state IN ('queued', 'running')"
        )
        if db is None:
            with self._lock:
                count, queued = self._db.execute(query, (customer,)).fetchone()
        else:
            count, queued = db.execute(query, (customer,)).fetchone()
        if count >= cfg.max_active_items:
            raise WorkLimitError(
                f"{count} unfinished items, the limit per customer is {cfg.max_active_items}; "
                "wait for one to finish",
                http_status=429,
            )
        if queued + operand_bytes > cfg.max_queued_bytes:
            raise WorkLimitError(
                f"unfinished items hold {queued} bytes; {operand_bytes} more would pass the "
                f"limit of {cfg.max_queued_bytes} per customer",
                http_status=429,
            )

    def status(self, item_id: str, customer: str | None = None) -> ItemStatus:
        """The status of ``item_id``; with ``customer``, only if it is theirs."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, customer, state, m, n, k, r, created, finished, error, result_blob "
                "FROM items WHERE id = ?",
                (item_id,),
            ).fetchone()
            if row is None or (customer is not None and row[1] != customer):
                raise WorkNotFound(f"no work item {item_id!r:.40}")
            counts = dict.fromkeys(UNIT_STATES, 0)
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM units WHERE item = ? GROUP BY state", (item_id,)
            ):
                counts[state] = count
        return replace(ItemStatus(*row), unit_states=counts)

    def units(self, item_id: str) -> list[Unit]:
        """Every unit of an item, in index order."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE item = ? ORDER BY idx", (item_id,)
            ).fetchall()
        return [unit_from_row(row) for row in rows]

    def unit(self, key: int) -> Unit:
        with self._lock:
            row = self._db.execute(
                f"SELECT {UNIT_COLUMNS} FROM units WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            raise WorkNotFound(f"no unit {key}")
        return unit_from_row(row)

    def finish_item(self, item_id: str, result_blob: bytes) -> None:
        """Record the assembled product of an item whose units are all verified."""
        with self._tx() as db:
            left = db.execute(
                "SELECT COUNT(*) FROM units WHERE item = ? AND state != 'done'", (item_id,)
            ).fetchone()[0]
            if left:
                raise WorkError(f"item {item_id} still has {left} units without a result")
            db.execute(
                "UPDATE items SET state = 'done', finished = ?, result_blob = ? WHERE id = ?",
                (self.clock(), result_blob, item_id),
            )

    def items_to_assemble(self) -> list[str]:
        """Items whose units are all verified but whose product is not assembled yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.id FROM items i WHERE i.state = 'running' AND NOT EXISTS "
                "(SELECT 1 FROM units u WHERE u.item = i.id AND u.state != 'done')"
            ).fetchall()
        return [r[0] for r in rows]

    def referenced_blobs(self) -> set[bytes]:
        """Every blob an item still needs (operands of unfinished units, results).

        A queued or leased unit keeps its operands even when its item has failed: a
        session may still be mining it (its lease ends on its own).
        """
        with self._lock:
            keep = {
                r[0]
                for r in self._db.execute(
                    "SELECT result_blob FROM items WHERE result_blob IS NOT NULL"
                )
            }
            for a, b, c in self._db.execute(
                "SELECT u.a_blob, u.b_blob, u.result_blob FROM units u JOIN items i "
                "ON u.item = i.id WHERE i.state IN ('queued', 'running') "
                "OR u.state IN ('queued', 'running')"
            ):
                keep.update(x for x in (a, b, c) if x is not None)
        return keep

    def prune_finished(self, before: float) -> int:
        """Forget items finished (done or failed) before ``before``, with their units,
        leases and held shares, once no unit of theirs is still queued or leased; returns
        the number of items forgotten (their blobs go at the next :meth:`BlobStore.collect`)."""
        gone_items = (
            "SELECT id FROM items i WHERE state IN ('done', 'failed') AND finished < ?"
            " AND NOT EXISTS (SELECT 1 FROM units u WHERE u.item = i.id"
            " AND u.state IN ('queued', 'running'))"
        )
        units = f"SELECT key FROM units WHERE item IN ({gone_items})"
        leases = f"SELECT id FROM leases WHERE unit IN ({units})"
        with self._tx() as db:
            ids = [r[0] for r in db.execute(gone_items, (before,))]
            if not ids:
                return 0
            db.execute(f"DELETE FROM held_shares WHERE lease IN ({leases})", (before,))
            db.execute(f"DELETE FROM lease_jobs WHERE lease IN ({leases})", (before,))
            db.execute(f"DELETE FROM leases WHERE unit IN ({units})", (before,))
            db.execute(f"DELETE FROM units WHERE item IN ({gone_items})", (before,))
            db.execute(f"DELETE FROM items WHERE id IN ({gone_items})", (before,))
        return len(ids)

    def item_count(self) -> int:
        """Items remembered (for ``matmine_pool_work_item_rows``)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def item_counts(self) -> dict[str, int]:
        """Items remembered, by state (queued, running, done, failed)."""
        counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
        with self._lock:
            for state, count in self._db.execute(
                "SELECT state, COUNT(*) FROM items GROUP BY state"
            ):
                counts[state] = int(count)
        return counts
