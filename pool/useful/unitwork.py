"""A leased unit as the workload of a job: what share checks and block submissions need.

:class:`UnitWork` has the same face as ``pool.workloads.PreparedWork`` (``shape``,
``a_root``, ``b_root``, ``work_root``, ``tile_rows``, ``block_fields``) plus
``work_spec()`` for ``mining.notify`` (a blob source instead of a synthetic seed), so a
job of a useful unit is checked by the same share code as a synthetic one. Building it
reads both operand blobs and their row trees: call :meth:`UnitWork.load` in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pool.useful.blobstore import BlobStore
from pool.useful.queue import Unit
from protocol.merkle import RowTree
from protocol.messages import BlobSource, NextUnit, WorkSpec
from protocol.workload import TILE, Shape


@dataclass(frozen=True)
class UnitWork:
    """The operands of one unit in memory, with row trees for block proofs."""

    unit: Unit
    a: np.ndarray
    bt: np.ndarray
    a_tree: RowTree
    b_tree: RowTree
    data: str | None = None  # the lease's data-plane URL base (SPEC §12.7), with its token
    token: str | None = None
    next: NextUnit | None = None  # the unit reserved for the session next (prefetch)

    @classmethod
    def load(cls, blobs: BlobStore, unit: Unit) -> UnitWork:
        a, bt = blobs.matrix(unit.a_blob), blobs.matrix(unit.b_blob)
        work = cls(unit, a, bt, RowTree(a), RowTree(bt))
        if work.a_tree.root != unit.a_root or work.b_tree.root != unit.b_root:
            raise ValueError(
                f"unit {unit.unit_id.hex()[:16]}…: stored blobs do not match their row roots"
            )
        return work

    @property
    def shape(self) -> Shape:
        return self.unit.shape

    @property
    def a_root(self) -> bytes:
        return self.unit.a_root

    @property
    def b_root(self) -> bytes:
        return self.unit.b_root

    @property
    def work_root(self) -> bytes:
        return self.unit.unit_id

    def work_spec(self) -> WorkSpec:
        spec = self.unit.work_spec()
        if self.data is None:
            return spec
        source = BlobSource(self.unit.a_blob, self.unit.b_blob, self.data, self.token, self.next)
        return replace(spec, source=source)

    def for_lease(
        self, data: str | None, token: str | None, next_unit: NextUnit | None = None
    ) -> UnitWork:
        """The same unit whose jobs name a lease's data plane and the unit reserved next
        (shares the arrays)."""
        return replace(self, data=data, token=token, next=next_unit)

    def tile_rows(self, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The 16 rows of A and 16 rows of Bᵀ that the ticket of ``tile`` reads."""
        ti, tj = tile
        return self.a[ti * TILE : (ti + 1) * TILE], self.bt[tj * TILE : (tj + 1) * TILE]

    def block_fields(self, tile: tuple[int, int]) -> dict[str, Any]:
        """``BlockSubmission`` fields for a blob workload: opened rows with Merkle proofs."""
        ti, tj = tile
        a_rows, bt_rows = self.tile_rows(tile)
        return {
            "workload_seed": None,
            "a_rows": a_rows.tobytes(),
            "bt_rows": bt_rows.tobytes(),
            "a_proofs": [self.a_tree.proof(ti * TILE + i) for i in range(TILE)],
            "b_proofs": [self.b_tree.proof(tj * TILE + i) for i in range(TILE)],
        }
