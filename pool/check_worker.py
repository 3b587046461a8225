"""The share check inside a check process (``[pool] check_processes``; SPEC §7 tickets).

What comes in per share is small (:data:`ProcRequest`: where the job's rows come from, the
shape, the tile, the 128-byte header, the share difficulty and the network bits); the rows
are found here, once per job per process: a synthetic job's 16-row bands are derived from
its workload seed, a blob job's are read from the pool's blob store file (content-addressed,
written once), and a header's index pairs are derived once. Both live in this process's
byte-bounded :class:`ArrayCache` s (the same bounds as the pool's); BLAS runs on one
thread, a process being one check lane. What goes back per share is its digest and whether
it meets the share and network targets (from the difficulty and bits, as
``Job.share_target`` and ``Template.network_target`` have them), or the error that rejects
it as ``(message, code)``; and the seconds the checks took.

This module is imported by the check processes, so it imports only what a check needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from pool.workloads import NOISE_CACHE_BYTES, ROW_CACHE_BYTES, row_band
from protocol.errors import ProtocolError
from protocol.target import digest_value, target_from_bits, target_from_difficulty, ticket_limit
from protocol.ticket import HeaderNoise, PassArrays, TileCheck, check_tile_rows, tile_digests
from protocol.workload import TILE, Shape, synthetic_rows
from toolkit.array_cache import ArrayCache

RowsRef = tuple[str, bytes] | tuple[str, str, str]
"""Where a job's rows come from: ``("seed", workload_seed)`` or ``("blob", a_path, b_path)``
(the files of the unit's A and Bᵀ blobs)."""

ProcRequest = tuple[RowsRef, tuple[int, int, int, int], tuple[int, int], bytes, float, int]
"""One share to check: ``(rows, (m, n, k, r), tile, header, share difficulty, network bits)``."""

ProcAnswer = tuple[bytes, bool, bool] | tuple[str, int]
"""``(digest, meets the share target, meets the network target)``, or ``(message, code)`` of
the error that rejects the share."""


@lru_cache(maxsize=256)
def job_shape(dims: tuple[int, int, int, int]) -> Shape:
    """The validated ``Shape`` of ``dims`` (a request names its job's; made once per job
    shape, not per share)."""
    return Shape(*dims)


@lru_cache(maxsize=1024)
def digest_limits(difficulty: float, bits: int, k: int) -> tuple[int, int]:
    """The largest digest values that meet the share target of ``difficulty`` and the
    network target of ``bits`` at ``k`` (``target.ticket_limit``; vardiff and templates
    give a process few distinct values, so each is derived once, not per share)."""
    share = ticket_limit(target_from_difficulty(difficulty), k)
    return share, ticket_limit(target_from_bits(bits), k)


class CheckCaches:
    """One check process's row bands and header noise (least-recently-used, bounded)."""

    def __init__(
        self, row_bytes: int = ROW_CACHE_BYTES, noise_bytes: int = NOISE_CACHE_BYTES
    ) -> None:
        self.rows: ArrayCache[np.ndarray] = ArrayCache(row_bytes)
        self.noise: ArrayCache[HeaderNoise] = ArrayCache(noise_bytes)
        self.arrays = PassArrays()  # the checks' working arrays, kept between batches

    def band(self, rows: RowsRef, matrix: str, index: int, k: int) -> np.ndarray:
        """Rows ``16·index..`` of A (``"A"``) or Bᵀ (``"B"``) of a job, k × 16."""
        return self.rows.get((rows, matrix, index), lambda: row_band(_read(rows, matrix, index, k)))

    def tile_check(self, request: ProcRequest) -> TileCheck:
        rows, dims, tile, header, _, _ = request
        shape = job_shape(dims)
        k, r = shape.k, shape.r
        a_rows = self.band(rows, "A", tile[0], k).T
        bt_rows = self.band(rows, "B", tile[1], k).T
        check_tile_rows(shape, tile, a_rows, bt_rows)
        noise = self.noise.get((header, k, r), lambda: HeaderNoise.of(header, k, r))
        return TileCheck(noise, tile, a_rows, bt_rows)

    def check(self, requests: Sequence[ProcRequest]) -> list[ProcAnswer]:
        """The digest of each request, in one :func:`tile_digests` call (passes of several
        tickets, this process's working arrays reused: less per share than one at a time)."""
        answers: list[ProcAnswer] = [("not checked", -1)] * len(requests)
        checks: list[tuple[int, TileCheck]] = []
        for i, request in enumerate(requests):
            try:
                checks.append((i, self.tile_check(request)))
            except Exception as exc:
                answers[i] = _error(exc)
        try:
            digests = tile_digests([c for _, c in checks], self.arrays)
        except Exception as exc:
            for i, _ in checks:
                answers[i] = _error(exc)
            return answers
        for (i, _), digest in zip(checks, digests, strict=True):
            _, (_, _, k, _), _, _, difficulty, bits = requests[i]
            try:
                share, network = digest_limits(difficulty, bits, k)
            except Exception as exc:
                answers[i] = _error(exc)
                continue
            value = digest_value(digest)  # target.meets_target, its limits kept
            answers[i] = (digest, value <= share, value <= network)
        return answers


def _read(rows: RowsRef, matrix: str, index: int, k: int) -> np.ndarray:
    """16 rows of a job's A or Bᵀ: derived from the seed, or read from the blob's file."""
    if rows[0] == "seed":
        seed = rows[1]
        assert isinstance(seed, bytes)
        return synthetic_rows(seed, matrix, index * TILE, TILE, k)
    if rows[0] == "blob" and len(rows) == 3:
        path = rows[1] if matrix == "A" else rows[2]
        band = np.fromfile(path, dtype=np.int8, count=TILE * k, offset=index * TILE * k)
        return band.reshape(-1, k)
    raise ValueError(f"unknown row source {rows[0]!r}")


def _error(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, ProtocolError):
        return str(exc), int(exc.code)
    return f"{type(exc).__name__}: {exc}", -1  # -1: not a rule, a fault (the pool says 20)


_CACHES: list[CheckCaches] = []
"""This check process's caches (made by the first batch; the pool process never has one)."""


def check_batches(batches: Sequence[Sequence[ProcRequest]]) -> tuple[list[ProcAnswer], float]:
    """In a check process: every batch checked in turn; the
    answers in order and the seconds the checks took."""
    if not _CACHES:
        threadpool_limits(1)  # one check lane per process: no BLAS threads on top
        _CACHES.append(CheckCaches())
    caches = _CACHES[0]
    started = time.perf_counter()
    answers: list[ProcAnswer] = []
    for batch in batches:
        answers.extend(caches.check(batch))
    return answers, time.perf_counter() - started


def process_id() -> int:
    """The check process's pid (for operators' and tests' eyes)."""
    return os.getpid()


def ready() -> bool:
    """Imported and able to check (a new process is warmed with it)."""
    return True
