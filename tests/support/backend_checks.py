"""Checks every compute backend must pass, shared by the BLAS and OpenCL test files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from protocol.denoise import denoise
from protocol.hashing import H
from protocol.noise import pow_seed
from protocol.target import digest_value
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from tests.support import REPO

VECTORS = REPO / "protocol" / "vectors" / "mmpow1.json"
CASES = json.loads(VECTORS.read_text())["cases"]


def case_inputs(case: dict) -> tuple[Workload, bytes]:
    shape = Shape(case["m"], case["n"], case["k"], case["r"])
    workload = Workload.synthetic(bytes.fromhex(case["workload_seed"]), shape)
    return workload, bytes.fromhex(case["header"])


def check_vector_case(backend, case: dict) -> None:
    """Every listed ticket's J and digest, full MACs, and the product (both ways) of a case."""
    workload, header = case_inputs(case)
    backend.prepare(workload)
    j = backend.transcripts(header)
    for ticket in case["tickets"]:
        ti, tj = ticket["tile"]
        assert [int(x) for x in j[ti, tj]] == ticket["J"]
    all_win = backend.scan(header, 1 << 256, lambda: False)  # every tile wins: digests
    assert all_win.complete and all_win.macs == workload.shape.macs_per_header
    digests = {(ti, tj): d.hex() for ti, tj, d in all_win.winners}
    assert len(digests) == workload.shape.tiles
    for ticket in case["tickets"]:
        assert digests[tuple(ticket["tile"])] == ticket["digest"]
    seed = pow_seed(header)
    ab = denoise(backend.product(header), workload.a, workload.bt, seed, workload.shape.r)
    assert H(ab.astype("<i4").tobytes()).hex() == case["product_hash"]
    # the product in the same pass: the reference noisy product, with the same winners
    assert all_win.product is None  # not asked for
    with_product = backend.scan(header, 1 << 256, lambda: False, want_product=True)
    assert with_product.complete and with_product.winners == all_win.winners
    assert with_product.product.dtype == np.int32
    assert np.array_equal(with_product.product, mine_header(header, workload).noisy_product)
    ab = denoise(with_product.product, workload.a, workload.bt, seed, workload.shape.r)
    assert H(ab.astype("<i4").tobytes()).hex() == case["product_hash"]


def check_winners(backend, shape: Shape) -> None:
    """Under a target about half the tiles meet, the winners are exactly the reference's."""
    workload = Workload.synthetic(os.urandom(32), shape)
    header = os.urandom(128)
    work = mine_header(header, workload)
    values = sorted(digest_value(work.digest(ti, tj)) for ti, tj in np.ndindex(work.j.shape[:2]))
    target = values[len(values) // 2] // (256 * shape.k)
    expected = work.winners(target, shape.k)
    assert 0 < len(expected) < shape.tiles
    backend.prepare(workload)
    result = backend.scan(header, target, lambda: False, want_product=True)
    assert result.complete and result.winners == expected
    assert np.array_equal(result.product, work.noisy_product)
    assert np.array_equal(backend.transcripts(header), work.j)
    assert np.array_equal(backend.product(header), work.noisy_product)


def working_opencl_device() -> tuple[int, int]:
    """``(platform, device)`` of the first OpenCL device whose kernels build and pass the
    self-test; skips the calling test (module) with every device's reason when none does."""
    from worker.backends.opencl import probe_devices

    found = probe_devices()
    for info, reason in found:
        if reason is None:
            return info.platform_index, info.device_index
    reasons = "; ".join(f"{info.spec}: {reason}" for info, reason in found) or "none found"
    pytest.skip(f"no working OpenCL device ({reasons})", allow_module_level=True)
