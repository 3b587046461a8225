"""Generate protocol/vectors/mmpow1.json and model1.json from the reference implementation.

Run ``python tools/gen_vectors.py`` to rewrite the files; ``--check`` exits non-zero if a
file differs from what the code produces now.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from protocol.address import make_address
from protocol.hashing import H
from protocol.header import Header, assemble_coinbase, coinbase_hash, coinbase_parts
from protocol.noise import pow_seed
from protocol.target import bits_from_target, target_from_difficulty
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from tools.model_vectors import build_model_vectors

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "mmpow1.json"
MODEL_VECTORS = VECTORS.with_name("model1.json")
DIFFICULTIES = [1.0, 0.5, 2.0, 3.75, 1000.0, 123456.789, 0.001]
CASES = [
    ("square-r32", Shape(32, 32, 128, 32)),
    ("nonsquare-r64", Shape(64, 48, 256, 64)),
    ("wide-r128", Shape(32, 80, 512, 128)),
    ("tall-r32-odd-slabs", Shape(96, 16, 160, 32)),
    ("r64-long-k", Shape(48, 32, 1280, 64)),
]


def product_hash(workload: Workload) -> str:
    ab = workload.a.astype(np.int64) @ workload.bt.astype(np.int64).T
    return H(ab.astype("<i4").tobytes()).hex()


def make_case(index: int, name: str, shape: Shape) -> dict:
    workload_seed = H(b"mmpow1/vectors/workload", name.encode())
    workload = Workload.synthetic(workload_seed, shape)
    address = make_address(H(b"mmpow1/vectors/address", name.encode())[:20])
    c1, c2 = coinbase_parts(100 + index, 50 * 10**8, address, "matmine-vectors", 4)
    coinbase = assemble_coinbase(c1, bytes([1, 2, 3, index]), index.to_bytes(8, "little"), c2)
    header = Header(
        version=1,
        height=100 + index,
        prev_hash=H(b"mmpow1/vectors/prev", name.encode()),
        coinbase_hash=coinbase_hash(coinbase),
        work_root=workload.work_root,
        time=1_800_000_000 + index,
        bits=bits_from_target(target_from_difficulty(1.0)),
    ).encode()
    work = mine_header(header, workload)
    tickets = [
        {
            "tile": [ti, tj],
            "J": [int(x) for x in work.j[ti, tj]],
            "digest": work.digest(ti, tj).hex(),
        }
        for ti in range(shape.tiles_m)
        for tj in range(shape.tiles_n)
    ]
    return {
        "name": name,
        "m": shape.m,
        "n": shape.n,
        "k": shape.k,
        "r": shape.r,
        "workload_seed": workload_seed.hex(),
        "coinbase": coinbase.hex(),
        "header": header.hex(),
        "a_root": workload.a_root.hex(),
        "b_root": workload.b_root.hex(),
        "work_root": workload.work_root.hex(),
        "seed": pow_seed(header).hex(),
        "tickets": tickets,
        "product_hash": product_hash(workload),
    }


def build() -> dict:
    targets = []
    for d in DIFFICULTIES:
        t = target_from_difficulty(d)
        targets.append({"difficulty": d, "target": f"{t:064x}", "bits": bits_from_target(t)})
    cases = [make_case(i, name, shape) for i, (name, shape) in enumerate(CASES)]
    return {"version": "mmpow-1", "targets": targets, "cases": cases}


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def render_model() -> str:
    """The text of ``model1.json`` (SPEC §12.12, §13)."""
    return json.dumps(build_model_vectors(), indent=1) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = 0
    for path, text in ((VECTORS, render()), (MODEL_VECTORS, render_model())):
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            print(f"{path} is out of date", file=sys.stderr)
            stale = 1
        else:
            print(f"{path} is up to date")
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
