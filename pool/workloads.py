"""Where the matrices of a job come from.

A :class:`WorkloadSource` turns a block template into a :class:`PreparedWork`: the shape,
the row-Merkle roots that go into every header of the template's jobs, and what the pool
needs later to check a ticket (16 rows of A and of Bᵀ) and to submit a block.
``prepare`` is CPU work (it hashes every row) and runs in a worker thread.

:class:`SyntheticSource` is the default demo work: a fresh 32-byte workload seed per
template, the matrices derived from it (DESIGN §2, synthetic workloads), nothing to ship.
Blob workloads (real matrices fetched by content hash) come with the useful-work
capability behind the same interface.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from protocol import messages
from protocol.chain import BlockTemplate
from protocol.workload import TILE, Shape, Workload, synthetic_rows


@dataclass(frozen=True)
class PreparedWork:
    """One template's workload: commitments plus what share checks and blocks need."""

    shape: Shape
    a_root: bytes
    b_root: bytes
    work_root: bytes
    seed: bytes  # synthetic workload seed

    def tile_rows(self, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The 16 rows of A and 16 rows of Bᵀ that the ticket of ``tile`` reads."""
        ti, tj = tile
        k = self.shape.k
        return (
            synthetic_rows(self.seed, "A", ti * TILE, TILE, k),
            synthetic_rows(self.seed, "B", tj * TILE, TILE, k),
        )

    def block_fields(self, tile: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of ``BlockSubmission`` that let the node re-check the ticket."""
        return {"workload_seed": self.seed}

    def work_spec(self) -> messages.WorkSpec:
        """The ``work`` member of ``mining.notify``."""
        s = self.shape
        return messages.WorkSpec(
            m=s.m,
            n=s.n,
            k=s.k,
            r=s.r,
            a_root=self.a_root,
            b_root=self.b_root,
            source=messages.SyntheticSource(seed=self.seed),
        )


class JobWork(Protocol):
    """What a job needs of its workload; ``PreparedWork`` and ``pool.useful.unitwork.UnitWork``
    (a customer's matrices, per session) both have this face."""

    @property
    def shape(self) -> Shape: ...
    @property
    def work_root(self) -> bytes: ...
    def tile_rows(self, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]: ...
    def block_fields(self, tile: tuple[int, int]) -> dict[str, Any]: ...
    def work_spec(self) -> messages.WorkSpec: ...


class WorkloadSource(Protocol):
    """Makes the workload of each new template (called in a worker thread)."""

    shape: Shape

    def prepare(self, template: BlockTemplate) -> PreparedWork: ...


class SyntheticSource:
    """Synthetic workloads of a fixed shape, a new random workload seed per template."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape

    def prepare(self, template: BlockTemplate) -> PreparedWork:
        seed = secrets.token_bytes(32)
        workload = Workload.synthetic(seed, self.shape)
        return PreparedWork(self.shape, workload.a_root, workload.b_root, workload.work_root, seed)
