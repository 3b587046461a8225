"""Our OpenCL mining rate on each GPU against the vendor's own int8 GEMM, in the same run.

    .venv/bin/python tests/bench/gpu_vendor.py [--sizes 2048,4096] [--seconds 3] [--dots all]

For every OpenCL device that is a GPU (every device with ``--all-devices``): first the inner
product ``auto`` chooses there, then for each inner product (``--dots``, default every one)
that the device builds and passes its self-test with (the others are listed with the
compiler's reason): the checked mining rate (``worker.bench``: every winner and sampled
transcripts against the reference), the bare mining scan (``OpenCLBackend.scan``) and our
plain GEMM kernel, in MAC/s; then, when PyTorch with CUDA is installed, the vendor's
int8 GEMM on the same shape (``torch._int_mm``, int8 × int8 → int32 on tensor cores) and
fp32 ``torch.mm``. Ratios: ours / vendor int8, ours / the card's int8 and fp32 peaks (from
the table below, by device name; "n/a" for an unknown card).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from protocol.workload import Shape, Workload
from worker.autotune import DOT_VARIANTS
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
    parser.add_argument(
        "--dots", default="all", help="inner products, comma-separated (all = every one)"
    )
    args = parser.parse_args()
    import pyopencl as cl

    from worker.backends import DeviceUnusable
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
    dots = list(DOT_VARIANTS) if args.dots == "all" else args.dots.split(",")
    usable: dict[str, list[str]] = {}  # device spec: the inner products it builds
    for info in devices:
        auto = OpenCLBackend(info.platform_index, info.device_index)
        try:
            auto.self_test()
            choice = auto.dot_choice
            print(f"{auto.description}: auto inner product {choice and choice.describe()}")
        except DeviceUnusable as exc:
            print(f"{auto.description}: unusable: {exc.reason}")
        usable[info.spec] = []
        for dot in dots:
            dev = OpenCLBackend(info.platform_index, info.device_index, dot=dot)
            try:
                dev.self_test()
            except DeviceUnusable as exc:
                print(f"{dev.name} dot={dot}: not built ({exc.reason[:200]})")
                continue
            usable[info.spec].append(dot)
        print(f"{auto.name}: measuring inner products {', '.join(usable[info.spec]) or 'none'}")
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
        for info, dot in ((i, d) for i in devices for d in usable[i.spec]):
            dev = OpenCLBackend(info.platform_index, info.device_index, dot=dot)
            checked = bench_backend(dev, workload, args.seconds)
            print(f"{label:<12} {dev.name} dot={dot}: kernel {dev.kernel}")
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
                (f"{dev.name} {dot} mining, checked ({checked['mismatches']} bad)", mining),
                (f"{dev.name} {dot} bare mining scan", scan),
                (f"{dev.name} {dot} plain GEMM (one launch)", plain),
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
                print(f"{dev.name} dot={dot}: results differ from the reference")
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
