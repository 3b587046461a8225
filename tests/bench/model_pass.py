"""A whole int8 model pass with every GEMM mined vs the same matmul chain in plain numpy.

A synthetic model of ``--layers`` layers of ``--width``² (int8, requantised) runs on a unit
of ``--rows`` input rows through ``worker.model_pass.run_unit`` on the BLAS backend (each
layer: one header scanned with its product, denoised, Freivalds-checked, requantised), and,
in the same run, as a plain numpy float32 matmul chain of the same shapes (the baseline:
what the customer's pass costs without mining). Prints MAC/s of both, their ratio (the cost
of mining every GEMM), where the pass's time goes (by step), and bytes on the
link per useful MAC — the pass (input rows in, output rows and commitments out, weights
resident) beside one product of the same size (A and B in, int32 C out) — with the MAC/s
a 100 Mbit/s link allows each against a GPU of 50 and 300 TMAC/s.

    .venv/bin/python tests/bench/model_pass.py [--layers 16] [--width 2048] [--rows 256]
        [--repeat 3] [--backend blas|opencl] [--device P:D]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.model import Model, model_from_arrays
from tests.bench.timing import best_of
from tests.support.model_data import layer_header
from worker.backends import Backend, BlasBackend, open_backends
from worker.model_cache import ResidentModel
from worker.model_pass import run_unit

R = 64
LINK_BYTES = 100e6 / 8  # 100 Mbit/s
GPUS = (50e12, 300e12)
NO_SHARES = 1  # per-MAC target 1: a ticket wins with probability 256·k / 2²⁵⁶


def synthetic_model(layers: int, width: int) -> Model:
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {"relu": np.ones(layers, dtype=bool)}
    for index in range(layers):
        arrays[f"w{index}"] = rng.integers(-64, 65, size=(width, width), dtype=np.int8)
        arrays[f"b{index}"] = np.zeros(width, dtype=np.int32)
        arrays[f"scale{index}"] = np.full(width, max(1, int(2**16 * 40 / (1024 * width**0.5))))
        arrays[f"scale{index}"] = arrays[f"scale{index}"].astype(np.int32)
        arrays[f"shift{index}"] = np.full(width, 16, dtype=np.int32)
    return model_from_arrays(arrays)


def float_chain(weights: list[np.ndarray], x: np.ndarray, scale: float) -> np.ndarray:
    """The baseline: float32 matmuls of the same shapes, a cheap requantisation between."""
    a = x.astype(np.float32)
    for w in weights:
        a = np.clip(np.rint(np.maximum(a @ w, 0) * scale), -64, 64)
    return a


def link_line(label: str, bytes_per_mac: float) -> str:
    allowed = LINK_BYTES / bytes_per_mac
    gpus = ", ".join(
        f"{rate / 1e12:.0f} TMAC/s GPU → {min(rate, allowed) / 1e12:.3g} TMAC/s "
        f"({100 * min(1.0, allowed / rate):.2g}% busy)"
        for rate in GPUS
    )
    return (
        f"  {label:<34} {bytes_per_mac:.3e} B/MAC; 100 Mbit/s carries {allowed:.3e} MAC/s: {gpus}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16, choices=range(1, 65), metavar="1..64")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 6), metavar="1..5")
    parser.add_argument("--threads", type=int, default=None, help="BLAS backend threads")
    parser.add_argument("--backend", choices=("blas", "opencl"), default="blas")
    parser.add_argument("--device", default=None, help="opencl: PLATFORM:DEVICE (default: first)")
    args = parser.parse_args()
    if not 16 <= args.width <= 8192 or not 1 <= args.rows <= 4096:
        parser.error("--width must be in 16..8192 and --rows in 1..4096")
    layers, width, rows = args.layers, args.width, args.rows

    resident = ResidentModel(synthetic_model(layers, width))
    resident.operands(R)  # weights resident: padded Bᵀ and b_root made before timing
    x = np.random.default_rng(6).integers(-64, 65, size=(rows, width), dtype=np.int8)
    weights = [layer.w.astype(np.float32) for layer in resident.model.layers]
    useful = rows * resident.model.macs_per_row
    backend: Backend
    if args.backend == "blas":
        backend = BlasBackend(threads=args.threads)
        label = f"BLAS backend ({backend.threads} threads)"
    else:
        backend = open_backends("opencl", [args.device] if args.device else None)[0]
        label = backend.name

    scale = 40 / (1024 * width**0.5)
    chain = mined = float("inf")
    outcome = None
    for _ in range(args.repeat):  # interleaved, so both see the same load on the machine
        chain = min(chain, best_of(1, lambda: float_chain(weights, x, scale)))
        start = time.perf_counter()
        run = run_unit(resident, x, R, backend, layer_header, NO_SHARES)
        seconds = time.perf_counter() - start
        run.close()
        if seconds < mined:
            mined, outcome = seconds, run
    assert outcome is not None

    print(
        f"model pass: {layers} layers of {width}x{width}, {rows} rows, r={R}, "
        f"{label}, best of {args.repeat}"
    )
    print(f"  useful MACs {useful:.4g}, mined MACs {outcome.macs:.4g} (padding included)")
    print(f"  numpy float32 chain   {chain:8.3f} s  {useful / chain / 1e9:8.2f} GMAC/s")
    print(
        f"  mined pass            {mined:8.3f} s  {useful / mined / 1e9:8.2f} GMAC/s  "
        f"= {chain / mined:.3f}x the plain chain"
    )
    steps: dict[str, float] = {}
    for layer in outcome.layers:
        for step, seconds in layer.seconds.items():
            steps[step] = steps.get(step, 0.0) + seconds
    print(
        "    by step: "
        + ", ".join(f"{step} {sec:.3f} s ({100 * sec / mined:.0f}%)" for step, sec in steps.items())
    )
    host = sum(sec for step, sec in steps.items() if step != "scan")
    print(
        f"    host work besides the scans alone caps a pass at {useful / host / 1e9:.3g} GMAC/s "
        "on this CPU, whatever device scans"
    )
    out_bytes = rows * width * (4 if resident.model.int32_output else 1)
    pass_bytes = rows * width + out_bytes + 32 * (layers + 1)
    m, n, k = rows, width, width
    product_bytes = m * k + k * n + 4 * m * n
    print("bytes on the link per useful MAC (in + out; the pass keeps its weights resident):")
    print(link_line(f"model pass ({pass_bytes} B)", pass_bytes / useful))
    print(link_line(f"one {m}x{n}x{k} product ({product_bytes} B)", product_bytes / (m * n * k)))
    resident_b = m * k + 4 * m * n
    print(link_line(f"  the same, B resident ({resident_b} B)", resident_b / (m * n * k)))


if __name__ == "__main__":
    main()
