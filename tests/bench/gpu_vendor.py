"""Our OpenCL mining rate on each GPU against the vendor's own int8 GEMM, in the same run.

    .venv/bin/python tests/bench/gpu_vendor.py [--sizes 2048,4096] [--seconds 3]

For every OpenCL device that is a GPU (every device with ``--all-devices``): the bare mining
scan (``OpenCLBackend.scan``, checked against the reference by ``worker.bench`` first) and
our plain GEMM kernel, in MAC/s; then, when PyTorch with CUDA is installed, the vendor's
int8 GEMM on the same shape (``torch._int_mm``, int8 × int8 → int32 on tensor cores) and
fp32 ``torch.mm``. Ratios: ours / vendor int8, ours / the card's int8 and fp32 peaks (from
the table below, by device name; "n/a" for an unknown card).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from protocol.workload import Shape, Workload
from worker.bench import BENCH_SEED, bench_backend

# dense peaks in MAC/s (TOPS / 2, TFLOPS / 2), from the vendors' data sheets
PEAKS: dict[str, tuple[float, float]] = {  # name fragment: (int8, fp32)
    "H200": (1979e12 / 2, 67e12 / 2),
    "H100": (1979e12 / 2, 67e12 / 2),
    "A100": (624e12 / 2, 19.5e12 / 2),
    "L4": (242e12 / 2, 30.3e12 / 2),
    "RTX 4090": (660.6e12 / 2, 82.6e12 / 2),
    "RTX 3090": (284e12 / 2, 35.6e12 / 2),
}


def peaks(name: str) -> tuple[float, float] | None:
    return next((p for key, p in PEAKS.items() if key in name), None)


def best_rate(fn: Callable[[], object], macs: int, seconds: float) -> float:
    fn()  # warm-up
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return macs / best


def vendor_rates(shape: Shape, seconds: float) -> dict[str, float]:
    """torch int8 and fp32 GEMM MAC/s on the first CUDA device (empty without torch+CUDA)."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    macs = shape.m * shape.n * shape.k
    a = torch.randint(-64, 65, (shape.m, shape.k), dtype=torch.int8, device="cuda")
    b = torch.randint(-64, 65, (shape.k, shape.n), dtype=torch.int8, device="cuda")
    af, bf = a.float(), b.float()

    def int8() -> object:
        out = torch._int_mm(a, b)
        torch.cuda.synchronize()
        return out

    def fp32() -> object:
        out = torch.mm(af, bf)
        torch.cuda.synchronize()
        return out

    exact = torch.equal(torch._int_mm(a, b).cpu(), (a.cpu().long() @ b.cpu().long()).int())
    return {
        "torch int8 (_int_mm)": best_rate(int8, macs, seconds),
        "torch fp32 (mm)": best_rate(fp32, macs, seconds),
        "_exact": float(exact),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,4096", help="square sizes m=n=k")
    parser.add_argument("--r", type=int, default=128, help="slab width r")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--all-devices", action="store_true", help="CPU devices too")
    args = parser.parse_args()
    import pyopencl as cl

    from worker.backends.opencl import OpenCLBackend, list_opencl_devices

    def is_gpu(platform: int, device: int) -> bool:
        kind = cl.get_platforms()[platform].get_devices()[device].type
        return bool(kind & cl.device_type.GPU)

    devices = [
        d
        for d in list_opencl_devices()
        if args.all_devices or is_gpu(d.platform_index, d.device_index)
    ]
    if not devices:
        print("no OpenCL GPU found (use --all-devices to measure CPU devices)")
        return 0
    print(f"{'shape':<12} {'what':<44} {'TMAC/s':>9}  ratios")
    for size in (int(s) for s in args.sizes.split(",")):
        shape = Shape(size, size, size, args.r)
        workload = Workload.synthetic(BENCH_SEED, shape)
        vendor = vendor_rates(shape, args.seconds)
        exact = vendor.pop("_exact", None)
        label = f"{size}³ r{args.r}"
        for name, rate in vendor.items():
            print(f"{label:<12} {name:<44} {rate / 1e12:>9.2f}")
        if exact is not None:
            print(f"{label:<12} torch int8 equals the exact product: {bool(exact)}")
        for info in devices:
            dev = OpenCLBackend(info.platform_index, info.device_index)
            checked = bench_backend(dev, workload, args.seconds)
            mining = checked["macs_per_s"]
            headers = iter(range(1 << 30))
            scan = best_rate(
                lambda d=dev, h=headers: d.scan(next(h).to_bytes(128, "little"), 1),
                shape.macs_per_header,
                args.seconds,
            )
            plain = best_rate(
                lambda d=dev: d.plain_gemm(False), shape.macs_per_header, args.seconds
            )
            peak = peaks(dev.description)
            for what, rate in (
                (f"{dev.name} mining, checked ({checked['mismatches']} mismatches)", mining),
                (f"{dev.name} bare mining scan", scan),
                (f"{dev.name} plain GEMM (one launch)", plain),
            ):
                notes = []
                if "torch int8 (_int_mm)" in vendor:
                    notes.append(f"{rate / vendor['torch int8 (_int_mm)']:.3f}× torch int8")
                if peak is not None:
                    notes.append(
                        f"{rate / peak[0]:.4f}× int8 peak, {rate / peak[1]:.3f}× fp32 peak"
                    )
                print(f"{label:<12} {what:<44} {rate / 1e12:>9.3f}  {'; '.join(notes)}")
            if checked["mismatches"]:
                print(f"{dev.name}: results differ from the reference")
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
