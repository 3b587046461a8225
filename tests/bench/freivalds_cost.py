"""Cost of the pool's judging of one useful unit against the unit's own product.

For each unit size (m = n = k) it times, in the same run, numpy's float32 ``A @ B`` of
the unit (what the worker's BLAS path costs: the baseline) and, as ratios to it:

- ``check``: Freivalds' test as the pool runs it on a streamed result
  (``protocol.denoise.FreivaldsRows``: ``B·x`` and ``A·(B·x)`` once, then C's rows in
  ``SPOOL_BATCH`` pieces), the pool's default rounds (3: false accept ≤ 2⁻⁴⁸);
- ``judge``: the pool's judging on a real queue and blob store in a temporary directory:
  the check above as the bytes go through the lease's ``ResultStream`` in
  ``SPOOL_BATCH`` pieces (``ResultStream.judge_seconds``), then ``ResultDesk.check`` and
  ``complete`` (the spool fsynced and moved into the store, the lease done);
- ``last``: of ``judge``, the part after the last byte is in (the verdict's latency);
- ``write``: the whole time of the stream's writes (spool file, BLAKE3 and the check),
  what receiving costs with judging included.

A correct C passes and a C with one entry off fails, in every run.

    python tests/bench/freivalds_cost.py [--sizes 512,1024,2048,4096] [--rounds 3] [--repeat 3]
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
from pool.useful.data_api import SPOOL_BATCH
from pool.useful.queue import WorkQueue
from pool.useful.results import Passed, ResultDesk
from protocol.denoise import FreivaldsRows


def stream_check(a: np.ndarray, bt: np.ndarray, c: np.ndarray, rounds: int, seed: int) -> bool:
    check = FreivaldsRows(a, bt, rounds, np.random.default_rng(seed))
    step = max(1, SPOOL_BATCH // (4 * c.shape[1]))
    return all(check.rows(r, c[r : r + step]) for r in range(0, len(c), step))


def judge_once(
    queue: WorkQueue, desk: ResultDesk, a: np.ndarray, b: np.ndarray, raw: bytes
) -> tuple[bool, float, float, float]:
    """Stream one unit's C in, judge it: (passed, write s, judging s, after-last-byte s).

    The item is two units (A twice over), so completing one does not assemble the
    customer's product (delivery, not judging)."""
    queue.submit("bench", np.concatenate([a, a]), b)
    lease = queue.lease("bench")
    assert lease is not None and lease.unit.shape.m == len(a)
    start = time.perf_counter()
    stream = desk.open_stream(lease)
    view = memoryview(raw)
    for offset in range(0, len(raw), SPOOL_BATCH):
        stream.write([view[offset : offset + SPOOL_BATCH]])
    last = time.perf_counter()
    streamed_judging = stream.judge_seconds
    checked = desk.check(lease.id, stream)
    verdict = desk.complete(checked) if isinstance(checked, Passed) else checked
    end = time.perf_counter()
    return verdict.passed, last - start, streamed_judging + end - last, end - last


def measure(size: int, rounds: int, repeat: int) -> str:
    rng = np.random.default_rng(size)
    a = rng.integers(-64, 65, (size, size), dtype=np.int8)
    b = rng.integers(-64, 65, (size, size), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    t_mm = best_of(repeat, lambda: a32 @ b32)
    c = (a32 @ b32).astype(np.int32)  # exact: |C| ≤ 64²·k < 2^24
    bad = c.copy()
    bad[size // 2, size // 3] += 1
    assert stream_check(a, bt, c, rounds, 1)
    assert not stream_check(a, bt, bad, rounds, 1)
    t_fv = best_of(repeat, lambda: stream_check(a, bt, c, rounds, 2))

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
        passed, *_ = judge_once(queue, desk, a, b, bad.astype("<i4").tobytes())
        assert not passed
        t_write = t_judge = t_last = float("inf")
        raw = c.astype("<i4").tobytes()
        for _ in range(repeat):
            passed, wrote, judged, after_last = judge_once(queue, desk, a, b, raw)
            assert passed
            t_write = min(t_write, wrote)
            t_judge, t_last = min(t_judge, judged), min(t_last, after_last)
        queue.close()

    return (
        f"{size:>5}  {size**3 / 1e9:>7.2f}  {t_mm * 1e3:>10.1f}  {t_fv * 1e3:>8.1f}  "
        f"{t_fv / t_mm:>7.3f}  {t_judge * 1e3:>8.1f}  {t_judge / t_mm:>7.3f}  "
        f"{t_last * 1e3:>7.1f}  {t_last / t_mm:>7.4f}  {t_write * 1e3:>8.1f}  "
        f"{t_write / t_mm:>7.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096", help="unit sizes m = n = k")
    parser.add_argument("--rounds", type=int, default=3, help="Freivalds rounds (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    print(f"Judging a unit ({args.rounds} Freivalds rounds) vs numpy float32 matmul of it")
    print(
        " size   GMACs  matmul ms  check ms    ratio  judge ms   ratio*  last ms  ratio**  "
        "write ms  ratio***"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        print(measure(size, args.rounds, args.repeat), flush=True)
    print(
        "* judge = the pool's judging of the result: Freivalds by rows as the bytes stream "
        "in, then the verdict, the spool stored (fsync, rename), the lease done; "
        "target ≤ 0.05\n"
        "** last = of judge, the part after the last byte is in\n"
        "*** write = receiving the bytes through the stream: spool file, BLAKE3 and the "
        "Freivalds rows together (the spool and hash are needed without judging too)"
    )


if __name__ == "__main__":
    main()
