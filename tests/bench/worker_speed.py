"""Worker mining speed against numpy's float32 matmul, measured in the same run.

    .venv/bin/python tests/bench/worker_speed.py [--sizes 1024,2048] [--r 64] [--no-opencl]
        [--dots auto,portable,packed] [--tiled]

Prints, per shape, MAC/s of: numpy float32 A@B (baseline), the BLAS backend mining,
the OpenCL backend mining (first device; PoCL on a CPU box) and our plain GEMM kernel
(same tiling, no noise/fold/hash; launched in the same bands as mining, and as one launch),
each as a ratio to the baseline, and the PoW overhead of our kernel over our plain GEMM
(mining MAC/s are the mean over whole headers including the CPU checks of worker.bench;
the overhead compares the bare mining scan with the plain GEMM, both best of a few runs).
Every mining result is checked against the reference (worker.bench). ``--dots``: the OpenCL
rows once per inner product (``[opencl] dot``; one the device cannot build is reported and
skipped); ``--tiled``: the tiled kernel 64x64/4x4 kc16 instead of the autotuned choice (on a
CPU the autotuner picks the item kernel, which has no inner-product variants).
Targets: BLAS >= 0.5x, OpenCL on PoCL >= 0.15x, PoW overhead <= 10%.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow numpy; a fair run unsets them:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python tests/bench/worker_speed.py
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from protocol.workload import Shape, Workload
from worker.bench import BENCH_SEED, bench_backend


def best_seconds(fn, seconds: float, min_reps: int = 3) -> float:
    fn()
    best, spent, reps = float("inf"), 0.0, 0
    while spent < seconds or reps < min_reps:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent, reps = min(best, took), spent + took, reps + 1
    return best


def numpy_rate(shape: Shape, seconds: float) -> float:
    rng = np.random.default_rng(0)
    a = rng.integers(-127, 128, (shape.m, shape.k)).astype(np.float32)
    b = rng.integers(-127, 128, (shape.k, shape.n)).astype(np.float32)
    return shape.macs_per_header / best_seconds(lambda: a @ b, seconds)


def opencl_rows(
    rows: list, label: str, workload: Workload, base: float, dot: str, args: argparse.Namespace
) -> int:
    """The OpenCL rows of one shape with inner product ``dot``; its mismatches."""
    from worker.autotune import KernelConfig
    from worker.backends import DeviceUnusable
    from worker.backends.opencl import OpenCLBackend

    shape = workload.shape
    config = KernelConfig(64, 64, 4, 4, 16, 8, True) if args.tiled else None
    try:
        dev = OpenCLBackend(0, 0, dot=dot, config=config)
        dev.self_test()
        row = bench_backend(dev, workload, args.seconds)
    except DeviceUnusable as exc:
        rows.append((label, f"opencl dot={dot}: not usable here", 0.0, 0.0, exc.reason[:60]))
        return 0
    pow_rate = row["macs_per_s"]
    rows.append(
        (
            label,
            f"{dev.name} mining [{dev.kernel}]",
            pow_rate,
            pow_rate / base,
            f"mismatches={row['mismatches']}",
        )
    )
    # The PoW overhead compares like with like: the bare mining scan (a target nothing
    # meets, so no CPU checks) and our plain GEMM, both best of a few runs, the GEMM with
    # the same launches as mining and as one launch.
    headers = iter(range(1 << 30))
    scan_seconds = best_seconds(
        lambda d=dev, h=headers: d.scan(next(h).to_bytes(128, "little"), 1), args.seconds, 2
    )
    scan_rate = shape.macs_per_header / scan_seconds
    rows.append(
        (label, f"{dev.name} bare mining scan (dot={dot})", scan_rate, scan_rate / base, "")
    )
    for banded, how in ((True, "same launches as mining"), (False, "one launch")):
        seconds = best_seconds(lambda b=banded, d=dev: d.plain_gemm(b), args.seconds, 2)
        plain = shape.macs_per_header / seconds
        overhead = plain / scan_rate - 1.0
        rows.append(
            (
                label,
                f"{dev.name} plain GEMM (dot={dot}, {how})",
                plain,
                plain / base,
                f"PoW overhead {100 * overhead:.1f}%",
            )
        )
    return int(row["mismatches"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048", help="square sizes m=n=k, comma-separated")
    parser.add_argument("--r", type=int, default=64, help="slab width r")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--no-opencl", action="store_true", help="skip the OpenCL backend")
    parser.add_argument("--no-blas", action="store_true", help="skip the BLAS backend")
    parser.add_argument("--dots", default="auto", help="OpenCL inner products, comma-separated")
    parser.add_argument("--tiled", action="store_true", help="OpenCL: the tiled kernel, fixed")
    args = parser.parse_args()
    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    print(f"OPENBLAS env set: {unset or 'none'}; cpus: {os.cpu_count()}")
    rows = []
    mismatches = 0
    for size in (int(s) for s in args.sizes.split(",")):
        shape = Shape(size, size, size, args.r)
        workload = Workload.synthetic(BENCH_SEED, shape)
        label = f"{size}^3 r={args.r}"
        base = numpy_rate(shape, args.seconds)
        rows.append((label, "numpy f32 A@B (baseline)", base, 1.0, ""))
        if not args.no_blas:
            from worker.backends import BlasBackend

            row = bench_backend(BlasBackend(), workload, args.seconds)
            mismatches += row["mismatches"]
            rows.append(
                (
                    label,
                    "blas mining",
                    row["macs_per_s"],
                    row["macs_per_s"] / base,
                    f"mismatches={row['mismatches']}",
                )
            )
        if not args.no_opencl:
            from worker.backends.opencl import list_opencl_devices

            if not list_opencl_devices():
                print("no OpenCL device: skipping")
            else:
                for dot in args.dots.split(","):
                    mismatches += opencl_rows(rows, label, workload, base, dot, args)
        again = numpy_rate(shape, args.seconds)
        rows.append((label, "numpy f32 A@B (again)", again, again / base, ""))
        # the box is shared: the baseline is the better of its two measurements
        best = max(base, again)
        rows = [(lb, w, rate, rate / best if lb == label else q, n) for lb, w, rate, q, n in rows]
    print("ratios are against the better of the two numpy measurements of the same shape")
    print(f"{'shape':<14} {'what':<60} {'GMAC/s':>8} {'x base':>7}  note")
    for label, what, rate, ratio, note in rows:
        print(f"{label:<14} {what:<60} {rate / 1e9:8.2f} {ratio:7.3f}  {note}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
