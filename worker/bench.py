"""``matmine-worker bench``: MAC/s of each backend on a synthetic workload, every result checked.

Each row is one backend/device on one shape; ``mismatches`` counts winners that fail
``protocol.ticket.verify_ticket`` or the target, and sampled tiles whose transcript J
differs from the reference (or that the backend missed as a winner). A device that turns
out unusable (kernels that do not build for the shape, ``DeviceUnusable``) is skipped with
one warning; the bench fails only when no device was measured.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import numpy as np

from protocol.noise import noisy_rows, pow_seed
from protocol.target import meets_target
from protocol.ticket import ticket_digest, transcripts, verify_ticket
from protocol.workload import TILE, Shape, Workload

from .backends import Backend, BackendError, DeviceUnusable, open_backends

log = logging.getLogger(__name__)

BENCH_SEED = bytes(range(32))


def bench_target(shape: Shape, expected_winners: float = 4.0) -> int:
    """A per-MAC target that about ``expected_winners`` tiles of one header meet."""
    p = min(1.0, expected_winners / shape.tiles)
    return max(1, int(p * (1 << 256)) // shape.macs_per_ticket)


def reference_transcript(header: bytes, workload: Workload, ti: int, tj: int) -> np.ndarray:
    """J of one tile from its 16 rows of A and Bᵀ (the verifier's path)."""
    shape = workload.shape
    seed = pow_seed(header)
    a = noisy_rows(seed, "A", workload.a[TILE * ti : TILE * ti + TILE], TILE * ti, shape.r)
    b = noisy_rows(seed, "B", workload.bt[TILE * tj : TILE * tj + TILE], TILE * tj, shape.r)
    j, _ = transcripts(a, b, shape.r, ti, tj)
    return j[0, 0]


def check_header(
    backend: Backend,
    header: bytes,
    workload: Workload,
    target: int,
    winners: list[tuple[int, int, bytes]],
    samples: int,
    rng: random.Random,
) -> int:
    """Mismatches of one scanned header against the reference."""
    shape = workload.shape
    bad = 0
    for ti, tj, digest in winners:
        rows_a = workload.a[TILE * ti : TILE * ti + TILE]
        rows_b = workload.bt[TILE * tj : TILE * tj + TILE]
        ok = verify_ticket(header, shape, (ti, tj), rows_a, rows_b) == digest
        bad += not (ok and meets_target(digest, target, shape.k))
    found = {(ti, tj) for ti, tj, _ in winners}
    j_all = backend.transcripts(header)
    seed = pow_seed(header)
    for _ in range(samples):
        ti, tj = rng.randrange(shape.tiles_m), rng.randrange(shape.tiles_n)
        j = reference_transcript(header, workload, ti, tj)
        wins = meets_target(ticket_digest(seed, j), target, shape.k)
        bad += not np.array_equal(j_all[ti, tj], j) or (wins and (ti, tj) not in found)
    return bad


def bench_backend(
    backend: Backend, workload: Workload, seconds: float = 2.0, samples: int = 4
) -> dict[str, Any]:
    """Scan fresh headers for about ``seconds`` (after one warm-up) and check every result."""
    shape = workload.shape
    target = bench_target(shape)
    rng = random.Random(0)
    backend.prepare(workload)
    backend.scan(os.urandom(128), target, lambda: False)  # warm-up: build, caches
    headers, macs, mismatches, winners, elapsed = 0, 0, 0, 0, 0.0
    while elapsed < seconds or headers == 0:
        header = os.urandom(128)
        start = time.perf_counter()
        result = backend.scan(header, target, lambda: False)
        elapsed += time.perf_counter() - start
        headers += 1
        macs += result.macs
        winners += len(result.winners)
        mismatches += not result.complete
        mismatches += check_header(backend, header, workload, target, result.winners, samples, rng)
    return {
        "backend": backend.name,
        "shape": f"{shape.m}x{shape.n}x{shape.k}/r{shape.r}",
        "headers": headers,
        "seconds": elapsed,
        "macs_per_s": macs / elapsed,
        "winners": winners,
        "mismatches": mismatches,
        "kernel": str(getattr(backend, "kernel", "")),  # OpenCL: the kernel that mined
    }


def run_bench(
    kind: str, shape: Shape, devices: list[str] | None = None, seconds: float = 2.0, **options: Any
) -> list[dict[str, Any]]:
    """One row per usable backend/device of ``kind`` ("blas" or "opencl") on a synthetic
    ``shape``; ``BackendError`` if none could be measured."""
    workload = Workload.synthetic(BENCH_SEED, shape)
    rows, skipped = [], []
    for backend in open_backends(kind, devices, **options):
        try:
            rows.append(bench_backend(backend, workload, seconds))
        except DeviceUnusable as exc:
            log.warning("device %s skipped: %s", exc.device, exc.reason)
            skipped.append(f"{exc.device}: {exc.reason}")
    if not rows:
        raise BackendError("no device could be measured: " + "; ".join(skipped))
    return rows
