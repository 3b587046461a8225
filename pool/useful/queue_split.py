"""Cutting a queued unit shorter at lease time, so a unit fits the session that takes it.

:meth:`SplitSide.split_unit` cuts a queued unit after its first ``rows`` rows of A
(:func:`protocol.useful.split_plan`): the unit keeps its key and becomes the head (a new A
blob, a new unit id), the rest becomes a new queued unit of the same item (its own A blob;
the same Bᵀ blob). The pieces cover the same rows of the product, so the item is
assembled from them as from any units. Blobs are written before the transaction that
re-checks the unit is still queued and as it was; otherwise nothing changes (the blobs
written go at the next collection).
"""

from __future__ import annotations

import numpy as np

from pool.useful.queue_model import QueueDb, Unit
from protocol.useful import split_plan, unit_id


class SplitSide(QueueDb):
    """Splits queued units."""

    def split_unit(self, unit: Unit, rows: int) -> bool:
        """Cut queued ``unit`` to its first ``rows`` rows (the rest queued as a new unit);
        False when it is not longer than that or changed meanwhile. File work: a thread."""
        parts = split_plan(unit.plan, rows)
        if parts is None:
            return False
        head, rest = parts
        a = self.blobs.matrix(unit.a_blob)
        head_a = self.blobs.put_matrix(np.ascontiguousarray(a[:rows]))
        rest_rows = np.zeros((rest.shape.m, a.shape[1]), dtype=np.int8)
        rest_rows[: rest.rows] = a[rows : unit.plan.rows]
        rest_a = self.blobs.put_matrix(rest_rows)
        del a, rest_rows
        head_id = unit_id(head.shape, head_a.rows_root, unit.b_root)
        rest_id = unit_id(rest.shape, rest_a.rows_root, unit.b_root)
        with self._tx() as db:
            now_row = db.execute(
                "SELECT state, row0, rows, queued_since FROM units WHERE key = ?", (unit.key,)
            ).fetchone()
            if now_row is None or tuple(now_row[:3]) != ("queued", unit.plan.row0, unit.plan.rows):
                return False
            idx = db.execute(
                "SELECT MAX(idx) + 1 FROM units WHERE item = ?", (unit.item,)
            ).fetchone()[0]
            db.execute(
                "UPDATE units SET rows = ?, m = ?, unit_id = ?, a_blob = ?, a_root = ? "
                "WHERE key = ?",
                (head.rows, head.shape.m, head_id, head_a.blob_id, head_a.rows_root, unit.key),
            )
            s = rest.shape
            db.execute(
                "INSERT INTO units (item, idx, unit_id, row0, rows, col0, cols, k_real, m, n, "
                "k, r, a_blob, b_blob, a_root, b_root, state, attempts, queued_since) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    unit.item,
                    idx,
                    rest_id,
                    rest.row0,
                    rest.rows,
                    rest.col0,
                    rest.cols,
                    rest.k,
                    s.m,
                    s.n,
                    s.k,
                    s.r,
                    rest_a.blob_id,
                    unit.b_blob,
                    rest_a.rows_root,
                    unit.b_root,
                    unit.attempts,
                    now_row[3],
                ),
            )
            db.execute("UPDATE items SET units = units + 1 WHERE id = ?", (unit.item,))
        return True
