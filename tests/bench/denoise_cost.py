"""Cost of the worker's denoising of one unit's product against the unit's own product.

For each unit shape (rows × n × k) it times, in the same run, numpy's float32 ``A @ B`` of
the unit (what the worker's BLAS path costs per header: the baseline) and, as a ratio to
it, ``protocol.denoise.denoise`` of a noisy product ``A'·B'`` of that unit (what stands
between a unit's last header and its result upload). The denoised C is checked against
``A·B`` (float64, exact here) once per shape.

    python tests/bench/denoise_cost.py [--shapes 1024x4096x4096,128x4096x4096] [--r 64]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from timing import best_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.denoise import denoise
from protocol.noise import noisy_rows


def parse_shape(text: str) -> tuple[int, int, int]:
    rows, n, k = (int(part) for part in text.split("x"))
    return rows, n, k


def measure(rows: int, n: int, k: int, r: int, repeat: int) -> tuple[float, float, bool]:
    """(baseline s, denoise s, exact) for one unit shape."""
    rng = np.random.default_rng(rows * n + k)
    seed = bytes(range(32))
    a = rng.integers(-64, 65, (rows, k), dtype=np.int8)
    bt = rng.integers(-64, 65, (n, k), dtype=np.int8)
    a_noisy = noisy_rows(seed, "A", a, 0, r).astype(np.float64)
    bt_noisy = noisy_rows(seed, "B", bt, 0, r).astype(np.float64)
    noisy = (a_noisy @ bt_noisy.T).astype(np.int32)  # |sums| < 2^31: exact in float64
    del a_noisy, bt_noisy
    want = (a.astype(np.float64) @ bt.T).astype(np.int32)
    exact = np.array_equal(denoise(noisy, a, bt, seed, r), want)
    a32, b32 = a.astype(np.float32), np.ascontiguousarray(bt.T, dtype=np.float32)
    base = best_of(repeat, lambda: a32 @ b32)
    cost = best_of(repeat, lambda: denoise(noisy, a, bt, seed, r))
    return base, cost, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shapes", default="1024x4096x4096,128x4096x4096,1024x1024x8192")
    parser.add_argument("--r", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'unit':>18} {'A@B f32 s':>10} {'denoise s':>10} {'ratio':>6}  exact")
    for text in args.shapes.split(","):
        base, cost, exact = measure(*parse_shape(text), args.r, args.repeat)
        print(f"{text:>18} {base:10.4f} {cost:10.4f} {cost / base:6.2f}  {exact}")


if __name__ == "__main__":
    main()
