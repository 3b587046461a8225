"""The CPU backend: exact float32 slab products through numpy's BLAS (mmpow-1 on a CPU).

Each slab product ``A'[:, s] · B'[s, :]`` is exact in float32 (|partial| ≤ 127²·r < 2²⁴).
Output blocks of ``block_rows × block_cols`` keep their int32 accumulators in cache while
every slab goes by; each block runs on one of ``threads`` threads with a single-threaded
BLAS (``threadpoolctl``), so the per-slab elementwise work (int conversion, add, XOR fold)
of one thread overlaps the sgemm of the other. Operands are kept transposed (k × rows), so
a slab is a block of contiguous rows and the noise of a header is two row gathers. The
float32 ``B`` of each ``Bᵀ`` is kept by ``b_root`` (least recently used first, at most
``weights_bytes``), so the units of one product's B, or of one model's layer, convert it
once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from protocol.noise import index_pairs, noise_factors, pow_seed
from protocol.workload import TILE, Workload
from toolkit.array_cache import ArrayCache

from .base import (
    BackendError,
    ScanResult,
    check_header,
    limit_of,
    never_stop,
    require_prepared,
    winners_of,
)

try:  # optional: without it the backend runs one thread on a multi-threaded BLAS
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - depends on the environment
    ThreadpoolController = None


def _transposed(x: np.ndarray) -> np.ndarray:
    """``x`` (rows × k, int8) as float32 ``xᵀ`` (k × rows): slab s is rows s·r..(s+1)·r."""
    return np.ascontiguousarray(x.T, dtype=np.float32)


def _noisy_transposed(xt: np.ndarray, seed: bytes, side: str, r: int) -> np.ndarray:
    """``X'ᵀ`` from ``Xᵀ``: row l gains ``E[:, f_l] − E[:, g_l]`` (exact in float32).

    In this layout the noise is two gathers of whole contiguous rows of ``Eᵀ``.
    """
    k, rows = xt.shape
    f, g = index_pairs(seed, side, k, r)
    et = np.ascontiguousarray(noise_factors(seed, side, 0, rows, r).T, dtype=np.float32)
    out = np.take(et, f, axis=0)
    out -= np.take(et, g, axis=0)
    out += xt
    return out


@dataclass
class _Pass:
    """One header's operands and outputs, shared (read-only / disjoint writes) by threads."""

    seed: bytes
    r: int
    a_t: np.ndarray  # A'ᵀ, k × m float32
    b_t: np.ndarray  # B'ᵀᵀ = B', k × n float32
    j: np.ndarray  # tiles_m × tiles_n × 16 uint32
    limit: int | None  # digest limit, None: no digests
    product: np.ndarray | None  # m × n int32, filled if wanted
    should_stop: Callable[[], bool]


WEIGHTS_BYTES = 1 << 30
"""Default bound of the float32 ``B`` operands a :class:`BlasBackend` keeps across units."""


class BlasBackend:
    """mmpow-1 on the CPU through numpy's float32 BLAS; matches the reference bit for bit."""

    def __init__(
        self,
        threads: int | None = None,
        block_rows: int = 512,
        block_cols: int = 512,
        weights_bytes: int = WEIGHTS_BYTES,
    ) -> None:
        if block_rows <= 0 or block_cols <= 0 or block_rows % TILE or block_cols % TILE:
            raise BackendError(f"block sizes must be positive multiples of {TILE}")
        threads = threads if threads is not None else (os.cpu_count() or 1)
        if threads < 1:
            raise BackendError(f"threads must be at least 1, got {threads}")
        self.name = "blas"
        self.threads = threads if ThreadpoolController is not None else 1
        self._blas_pools = ThreadpoolController() if self.threads > 1 else None
        self.block_rows = block_rows
        self.block_cols = block_cols
        self._workload: Workload | None = None
        self._a32: np.ndarray | None = None
        self._b32: np.ndarray | None = None
        self._weights: ArrayCache[np.ndarray] = ArrayCache(weights_bytes)  # by (b_root, shape)
        self.weights_converted = 0  # float32 B operands made (not found kept)

    def prepare(self, workload: Workload) -> None:
        """Keep float32 ``Aᵀ`` (once per work_root) and ``B`` (once per b_root, kept)."""
        if self._workload is not None and self._workload.work_root == workload.work_root:
            return
        self._workload = workload
        self._a32 = _transposed(workload.a)
        self._b32 = self._weights_of(workload)

    def _weights_of(self, workload: Workload) -> np.ndarray:
        """The float32 ``B`` of ``workload.bt``: kept from an earlier unit, else made."""

        def make() -> np.ndarray:
            self.weights_converted += 1
            return _transposed(workload.bt)

        return self._weights.get((workload.b_root, *workload.bt.shape), make)

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool] = never_stop,
        want_product: bool = False,
    ) -> ScanResult:
        """Every ticket of ``header``; stops between slabs once ``should_stop()`` is true.

        ``want_product``: each block's int32 accumulators are kept (copied into one m × n
        array, no extra arithmetic) and returned as ``ScanResult.product`` if the scan
        completes.
        """
        workload = require_prepared(self._workload)
        limit = limit_of(share_target, workload.shape.k)
        product = None
        if want_product:
            product = np.empty((workload.shape.m, workload.shape.n), dtype=np.int32)
        result = self._run(header, limit, product, should_stop)
        if want_product and result.complete:
            result.product = product
        return result

    def transcripts(self, header: bytes) -> np.ndarray:
        """J of every ticket (tiles_m × tiles_n × 16, uint32)."""
        workload = require_prepared(self._workload)
        shape = workload.shape
        j = np.zeros((shape.tiles_m, shape.tiles_n, 16), dtype=np.uint32)
        self._run(header, None, None, never_stop, j_out=j)
        return j

    def product(self, header: bytes) -> np.ndarray:
        """The noisy product ``A'·B'`` (m × n int32), the input of ``protocol.denoise``."""
        workload = require_prepared(self._workload)
        out = np.empty((workload.shape.m, workload.shape.n), dtype=np.int32)
        self._run(header, None, out, never_stop)
        return out

    # -- internals ----------------------------------------------------------------------

    def _run(
        self,
        header: bytes,
        limit: int | None,
        product: np.ndarray | None,
        should_stop: Callable[[], bool],
        j_out: np.ndarray | None = None,
    ) -> ScanResult:
        check_header(header)
        workload = require_prepared(self._workload)
        assert self._a32 is not None and self._b32 is not None
        shape = workload.shape
        seed = pow_seed(header)
        j = (
            j_out
            if j_out is not None
            else np.zeros((shape.tiles_m, shape.tiles_n, 16), dtype=np.uint32)
        )
        j[:, :, 0] = np.arange(shape.tiles_m, dtype=np.uint32)[:, None]
        j[:, :, 1] = np.arange(shape.tiles_n, dtype=np.uint32)[None, :]
        a32, b32 = self._a32, self._b32
        if self.threads == 1:
            a_t = _noisy_transposed(a32, seed, "A", shape.r)
            b_t = _noisy_transposed(b32, seed, "B", shape.r)
        else:
            with ThreadPoolExecutor(2) as pool:
                a_job = pool.submit(_noisy_transposed, a32, seed, "A", shape.r)
                b_job = pool.submit(_noisy_transposed, b32, seed, "B", shape.r)
                a_t, b_t = a_job.result(), b_job.result()
        work = _Pass(
            seed=seed,
            r=shape.r,
            a_t=a_t,
            b_t=b_t,
            j=j,
            limit=limit,
            product=product,
            should_stop=should_stop,
        )
        blocks = [
            (i0, min(i0 + self.block_rows, shape.m), j0, min(j0 + self.block_cols, shape.n))
            for i0 in range(0, shape.m, self.block_rows)
            for j0 in range(0, shape.n, self.block_cols)
        ]
        if self.threads == 1:
            results = [self._block(work, *b) for b in blocks]
        else:
            with self._single_threaded_blas(), ThreadPoolExecutor(self.threads) as pool:
                results = list(pool.map(lambda b: self._block(work, *b), blocks))
        winners = [w for found, _, _ in results for w in found]
        winners.sort()
        return ScanResult(
            winners=winners,
            macs=sum(macs for _, macs, _ in results),
            complete=all(done for _, _, done in results),
        )

    @contextlib.contextmanager
    def _single_threaded_blas(self) -> Iterator[None]:
        assert self._blas_pools is not None
        with self._blas_pools.limit(limits=1, user_api="blas"):
            yield

    @staticmethod
    def _block(
        work: _Pass, i0: int, i1: int, j0: int, j1: int
    ) -> tuple[list[tuple[int, int, bytes]], int, bool]:
        """All slabs of output block rows i0..i1 × cols j0..j1: (winners, macs, complete)."""
        if work.should_stop():
            return [], 0, False
        mb, nb = i1 - i0, j1 - j0
        r = work.r
        slabs = work.a_t.shape[0] // r
        part = np.empty((mb, nb), dtype=np.float32)
        part_int = np.empty((mb, nb), dtype=np.int32)
        acc = np.zeros((mb, nb), dtype=np.int32)
        tiles = acc.view(np.uint32).reshape(mb // TILE, TILE, nb // TILE, TILE)
        rows_folded = np.empty((mb // TILE, nb // TILE, TILE), dtype=np.uint32)
        folded = np.empty((mb // TILE, nb // TILE), dtype=np.uint32)
        rotated = np.empty_like(folded)
        jb = work.j[i0 // TILE : i1 // TILE, j0 // TILE : j1 // TILE]
        macs_per_slab = mb * nb * r
        for s in range(slabs):
            if s and work.should_stop():
                return [], s * macs_per_slab, False
            rows = slice(s * r, (s + 1) * r)
            np.matmul(work.a_t[rows, i0:i1].T, work.b_t[rows, j0:j1], out=part)
            np.copyto(part_int, part, casting="unsafe")
            np.add(acc, part_int, out=acc)
            np.bitwise_xor.reduce(tiles, axis=1, out=rows_folded)
            np.bitwise_xor.reduce(rows_folded, axis=2, out=folded)
            word = jb[:, :, s % 16]
            np.left_shift(word, 13, out=rotated)
            np.right_shift(word, 19, out=word)
            np.bitwise_or(word, rotated, out=word)
            np.bitwise_xor(word, folded, out=word)
        if work.product is not None:
            work.product[i0:i1, j0:j1] = acc
        found: list[tuple[int, int, bytes]] = []
        if work.limit is not None:
            found = winners_of(work.seed, jb, work.limit, i0 // TILE, j0 // TILE)
        return found, slabs * macs_per_slab, True
