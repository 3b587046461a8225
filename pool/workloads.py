"""Where the matrices of a job come from.

A :class:`WorkloadSource` turns a block template into a :class:`PreparedWork`: the shape,
the row-Merkle roots that go into every header of the template's jobs, and what the pool
needs later to check a ticket (16 rows of A and of Bᵀ) and to submit a block.
``prepare`` is CPU work (it hashes every row) and runs in a worker thread.

:class:`SyntheticSource` is the default demo work: a fresh 32-byte workload seed per
template, the matrices derived from it (SPEC §4, synthetic workloads), nothing to ship.
Blob workloads (real matrices fetched by content hash) come with the useful-work
capability behind the same interface.

Share checks reuse what does not change from share to share (``ArrayCache`` of
``toolkit.array_cache``, bounded in bytes, one of each per ``SyntheticSource``, so per
pool): the 16-row bands of a template's A and Bᵀ (the same for every session and share; at
most ``ROW_CACHE_BYTES``, the whole workload of the newest templates: 8 MiB at 2048³) and
the index pairs of a header (``HeaderNoise``, the same for every tile of it; at most
``NOISE_CACHE_BYTES``: 16 KiB a header at k = 2048). Both are least-recently-used: old
templates and headers fall out.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from protocol import messages
from protocol.chain import BlockTemplate
from protocol.ticket import HeaderNoise
from protocol.workload import TILE, Shape, Workload, synthetic_rows
from toolkit.array_cache import ArrayCache

ROW_CACHE_BYTES = 64 << 20
"""Row bands kept for share checks, per pool (a 2048³ workload's A and Bᵀ: 8 MiB)."""
NOISE_CACHE_BYTES = 16 << 20
"""Headers' index pairs kept for share checks, per pool (8·k bytes and a little a header)."""


def row_band(rows: np.ndarray) -> np.ndarray:
    """16 rows (16 × k) as the read-only k × 16 array a share check reads fastest."""
    band = np.ascontiguousarray(rows.T)
    band.setflags(write=False)
    return band


@dataclass(frozen=True)
class PreparedWork:
    """One template's workload: commitments plus what share checks and blocks need."""

    shape: Shape
    a_root: bytes
    b_root: bytes
    work_root: bytes
    seed: bytes  # synthetic workload seed
    rows: ArrayCache[np.ndarray] = field(
        default_factory=lambda: ArrayCache(ROW_CACHE_BYTES), repr=False, compare=False
    )
    noise: ArrayCache[HeaderNoise] = field(
        default_factory=lambda: ArrayCache(NOISE_CACHE_BYTES), repr=False, compare=False
    )

    def band(self, matrix: str, index: int) -> np.ndarray:
        """Rows ``16·index..`` of A (``"A"``) or Bᵀ (``"B"``), k × 16, derived once."""
        return self.rows.get(
            (self.seed, matrix, index),
            lambda: row_band(synthetic_rows(self.seed, matrix, index * TILE, TILE, self.shape.k)),
        )

    def tile_rows(self, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The 16 rows of A and 16 rows of Bᵀ that the ticket of ``tile`` reads (16 × k:
        transposed views of the cached bands)."""
        ti, tj = tile
        return self.band("A", ti).T, self.band("B", tj).T

    def header_noise(self, header: bytes, shape: Shape) -> HeaderNoise:
        """The index pairs of ``header`` for a job of ``shape``, derived once per header."""
        return self.noise.get(
            (header, shape.k, shape.r), lambda: HeaderNoise.of(header, shape.k, shape.r)
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

    def __init__(
        self,
        shape: Shape,
        row_cache_bytes: int = ROW_CACHE_BYTES,
        noise_cache_bytes: int = NOISE_CACHE_BYTES,
    ) -> None:
        self.shape = shape
        self.rows: ArrayCache[np.ndarray] = ArrayCache(row_cache_bytes)
        self.noise: ArrayCache[HeaderNoise] = ArrayCache(noise_cache_bytes)

    def prepare(self, template: BlockTemplate) -> PreparedWork:
        """A new workload; its bands go into the row cache now when the whole fits."""
        seed = secrets.token_bytes(32)
        s = self.shape
        workload = Workload.synthetic(seed, s)
        if (s.m + s.n) * s.k <= self.rows.max_bytes:
            for matrix, rows in (("A", workload.a), ("B", workload.bt)):
                for index in range(len(rows) // TILE):
                    band = row_band(rows[index * TILE : (index + 1) * TILE])
                    self.rows.put((seed, matrix, index), band)
        return PreparedWork(
            s, workload.a_root, workload.b_root, workload.work_root, seed, self.rows, self.noise
        )
