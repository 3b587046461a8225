"""Worker pipeline overhead: MAC/s of the BLAS backend scanning alone vs. inside the full
worker (job feed, header building, thread hand-off, CPU re-check, submits) mining a real
in-process pool over loopback. Prints both and their ratio (1.0 = no overhead).

    .venv/bin/python tests/bench/bench_worker_overhead.py \
        [--shape 256x256x1024:128] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.target import target_from_difficulty
from protocol.workload import Workload
from tests.support.running import running_pool, running_worker
from worker.backends import open_backends
from worker.cli import parse_shape


def raw_rate(shape, seconds: float, difficulty: float) -> float:
    backend = open_backends("blas", None, threads=1)[0]
    backend.prepare(Workload.synthetic(bytes(32), shape))
    target = target_from_difficulty(difficulty)
    macs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        macs += backend.scan(os.urandom(128), target, lambda: False).macs
    return macs / (time.perf_counter() - start)


async def worker_rate(shape, seconds: float, difficulty: float) -> float:
    backend = open_backends("blas", None, threads=1)[0]
    work = {"m": shape.m, "n": shape.n, "k": shape.k, "r": shape.r}
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            running_pool(Path(tmp), share_difficulty=difficulty, **work) as pool,
            running_worker([pool.endpoint], [backend]) as worker,
        ):
            while worker.stats.device(backend.name).scans < 1:
                await trio.sleep(0.01)
            dev = worker.stats.device(backend.name)
            macs0, start = dev.macs, time.perf_counter()
            await trio.sleep(seconds)
            rate = (dev.macs - macs0) / (time.perf_counter() - start)
            print(
                f"worker: {worker.stats.shares['accepted']} shares accepted, "
                f"{worker.stats.hw_errors} hw errors"
            )
            return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=parse_shape, default=parse_shape("256x256x1024:128"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = args.shape
    difficulty = 4 * shape.macs_per_header / 2**32  # about one share per 4 headers
    raws, fulls = [], []
    for _ in range(args.rounds):  # alternate, so load from elsewhere hits both alike
        raws.append(raw_rate(shape, args.seconds, difficulty))
        fulls.append(trio.run(worker_rate, shape, args.seconds, difficulty))
    raw, full = sum(raws) / len(raws), sum(fulls) / len(fulls)
    print(
        f"shape {shape}: backend alone {raw / 1e9:.3f} GMAC/s, in the worker "
        f"{full / 1e9:.3f} GMAC/s, ratio {full / raw:.3f} (mean of {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
