"""Cost of the pool's check of one useful unit against the unit's own product.

For each unit size it times, in the same run: ``protocol.denoise.freivalds`` with the
pool's default rounds (3: false accept ≤ 2⁻⁴⁸) on a correct C, numpy's float32
``A @ B`` of the same unit (what the worker's BLAS path costs, the baseline), and
the ratio; plus the whole pool-side judgement (``ResultDesk.check`` then ``complete``: decode,
Freivalds, store the result blob, complete the lease) on a real queue in a temporary directory.

    python tests/bench/freivalds_cost.py [--sizes 512,1024,2048] [--rounds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best_of

from pool.useful import UsefulConfig
from pool.useful.blobstore import BlobStore
from pool.useful.queue import WorkQueue
from pool.useful.results import Passed, ResultDesk
from protocol.denoise import freivalds


def measure(size: int, rounds: int, repeat: int) -> str:
    rng = np.random.default_rng(size)
    a = rng.integers(-64, 65, (size, size), dtype=np.int8)
    b = rng.integers(-64, 65, (size, size), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    c = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int32)  # exact: |C| < 2^24
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    t_mm = best_of(repeat, lambda: a32 @ b32)
    check_rng = np.random.default_rng(1)
    assert freivalds(a, bt, c, rounds, check_rng)
    bad = c.copy()
    bad[size // 2, size // 3] += 1
    assert not freivalds(a, bt, bad, rounds, check_rng)
    t_fv = best_of(repeat, lambda: freivalds(a, bt, c, rounds, check_rng))

    with tempfile.TemporaryDirectory() as tmp:
        config = UsefulConfig(
            unit_m=size,
            unit_n=size,
            r=64,
            freivalds_rounds=rounds,
            max_upload_bytes=1 << 40,
            max_queued_bytes=1 << 40,
            max_active_items=1 << 20,
        )
        blobs = BlobStore(Path(tmp) / "blobs")
        queue = WorkQueue(Path(tmp) / "q.sqlite", blobs, config)
        desk = ResultDesk(queue, blobs)
        t_judge = float("inf")
        for _ in range(repeat):
            queue.submit("bench", a, b)
            lease = queue.lease("bench")
            raw = c.astype("<i4").tobytes()
            start = time.perf_counter()
            checked = desk.check(lease.id, raw)
            verdict = desk.complete(checked) if isinstance(checked, Passed) else checked
            t_judge = min(t_judge, time.perf_counter() - start)
            assert verdict.passed
        queue.close()

    macs = size**3
    return (
        f"{size:>5}  {macs / 1e9:>7.2f}  {t_mm * 1e3:>10.1f}  {t_fv * 1e3:>12.1f}  "
        f"{t_fv / t_mm:>8.3f}  {t_judge * 1e3:>9.1f}  {t_judge / t_mm:>7.3f}  "
        f"{3 * rounds * size * size / macs:>10.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024", help="unit sizes m = n = k")
    parser.add_argument("--rounds", type=int, default=3, help="Freivalds rounds (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    print(f"Freivalds ({args.rounds} rounds) vs numpy float32 matmul of the same unit")
    print(" size   GMACs  matmul ms  freivalds ms     ratio  judge ms*  ratio*  check MACs/unit")
    for size in (int(s) for s in args.sizes.split(",")):
        print(measure(size, args.rounds, args.repeat))
    print(
        "* judge = the pool's whole check: decode C, Freivalds, store the result blob, "
        "complete the lease"
    )


if __name__ == "__main__":
    main()
