"""The reference implementation is held to protocol/vectors/mmpow1.json."""

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.denoise import denoise
from protocol.hashing import H
from protocol.noise import pow_seed
from protocol.target import bits_from_target, target_from_bits, target_from_difficulty
from protocol.ticket import mine_header, verify_ticket
from protocol.workload import Shape, Workload
from tools.gen_vectors import VECTORS, render

DATA = json.loads(Path(VECTORS).read_text())


def test_vectors_file_is_what_the_code_produces():
    assert Path(VECTORS).read_text() == render()


def test_vectors_cover_required_shapes():
    rs = {c["r"] for c in DATA["cases"]}
    assert {32, 64, 128} <= rs
    assert any(c["m"] != c["n"] for c in DATA["cases"])
    assert len(DATA["cases"]) >= 4


@pytest.mark.parametrize("t", DATA["targets"], ids=lambda t: str(t["difficulty"]))
def test_target_vectors(t):
    target = int(t["target"], 16)
    assert target_from_difficulty(t["difficulty"]) == target
    assert bits_from_target(target) == t["bits"]
    assert bits_from_target(target_from_bits(t["bits"])) == t["bits"]


@pytest.mark.parametrize("case", DATA["cases"], ids=lambda c: c["name"])
def test_case(case):
    shape = Shape(case["m"], case["n"], case["k"], case["r"])
    workload = Workload.synthetic(bytes.fromhex(case["workload_seed"]), shape)
    header = bytes.fromhex(case["header"])
    assert workload.a_root.hex() == case["a_root"]
    assert workload.b_root.hex() == case["b_root"]
    assert workload.work_root.hex() == case["work_root"]
    assert pow_seed(header).hex() == case["seed"]
    work = mine_header(header, workload)
    last = (shape.tiles_m - 1, shape.tiles_n - 1)
    assert any(tuple(t["tile"]) == last for t in case["tickets"])
    for ticket in case["tickets"]:
        ti, tj = ticket["tile"]
        assert [int(x) for x in work.j[ti, tj]] == ticket["J"]
        assert work.digest(ti, tj).hex() == ticket["digest"]
        rows_a = workload.a[16 * ti : 16 * ti + 16]
        rows_b = workload.bt[16 * tj : 16 * tj + 16]
        assert verify_ticket(header, shape, (ti, tj), rows_a, rows_b).hex() == ticket["digest"]
    ab = denoise(work.noisy_product, workload.a, workload.bt, pow_seed(header), shape.r)
    assert H(ab.astype("<i4").tobytes()).hex() == case["product_hash"]
    assert np.array_equal(ab, workload.a.astype(np.int64) @ workload.bt.astype(np.int64).T)
