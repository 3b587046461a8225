"""Benchmark of the mmpow-1 reference miner and verifier on the CPU.

For each shape it prints, measured in the same run: the reference miner's MAC/s
(``protocol.ticket.mine_header``: noise, float32 slab products, XOR folds, digests),
numpy's float32 ``A @ B`` MAC/s on the same shape (the baseline), their ratio, and the
cost of one ``verify_ticket`` against the time the miner needs for the expected
2³² MACs of one difficulty-1 share.

    python tests/bench/pow_cpu.py [--shapes 512,1024,2048] [--r 64] [--repeat 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import best_of

from protocol.target import share_macs
from protocol.ticket import mine_header, verify_ticket
from protocol.workload import Shape, Workload


def measure(size: int, r: int, repeat: int) -> str:
    """One table row for an m = n = k = ``size`` job."""
    shape = Shape(size, size, size, r)
    workload = Workload.synthetic(bytes(32), shape)
    header = bytes(range(128))
    a32 = workload.a.astype(np.float32)
    b32 = workload.bt.T.astype(np.float32)
    t_np = best_of(repeat, lambda: a32 @ b32)
    t_mine = best_of(repeat, lambda: mine_header(header, workload))
    a_rows, b_rows = workload.a[:16], workload.bt[:16]
    n_verify = 20

    def verify_many() -> None:
        for _ in range(n_verify):
            verify_ticket(header, shape, (0, 0), a_rows, b_rows)

    t_verify = best_of(repeat, verify_many) / n_verify
    miner_rate = shape.macs_per_header / t_mine
    t_share = share_macs(1.0) / miner_rate
    return (
        f"{f'{size}^3 r{r}':>12} {miner_rate:12.3e} {shape.macs_per_header / t_np:12.3e} "
        f"{t_np / t_mine:6.3f} {t_verify * 1e6:10.0f} {t_share * 1e6:14.0f} "
        f"{t_verify / t_share:12.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shapes", default="512,1024,2048", help="cube sizes m=n=k")
    parser.add_argument("--r", type=int, default=64, help="slab width r")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    print(
        f"{'shape':>12} {'miner MAC/s':>12} {'numpy MAC/s':>12} {'ratio':>6} "
        f"{'verify µs':>10} {'diff-1 µs':>14} {'verify/mine':>12}"
    )
    for size in (int(s) for s in args.shapes.split(",")):
        print(measure(size, args.r, args.repeat), flush=True)


if __name__ == "__main__":
    main()
