"""The BLAS backend against the mmpow-1 vectors and the reference miner."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from protocol.denoise import denoise
from protocol.hashing import H
from protocol.noise import pow_seed
from protocol.target import digest_value
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from worker.backends import BackendError, BlasBackend, open_backends

VECTORS = Path(__file__).parent.parent / "protocol" / "vectors" / "mmpow1.json"
CASES = json.loads(VECTORS.read_text())["cases"]


def case_inputs(case):
    shape = Shape(case["m"], case["n"], case["k"], case["r"])
    workload = Workload.synthetic(bytes.fromhex(case["workload_seed"]), shape)
    return workload, bytes.fromhex(case["header"])


def median_target(work, k):
    """A per-MAC target that about half of the tiles meet (some, never all)."""
    values = sorted(digest_value(work.digest(ti, tj)) for ti, tj in np.ndindex(work.j.shape[:2]))
    return values[len(values) // 2] // (256 * k)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def backend(request):
    return BlasBackend(threads=request.param, block_rows=32, block_cols=48)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_tickets_and_product(case, backend):
    workload, header = case_inputs(case)
    backend.prepare(workload)
    j = backend.transcripts(header)
    seed = pow_seed(header)
    for ticket in case["tickets"]:
        ti, tj = ticket["tile"]
        assert [int(x) for x in j[ti, tj]] == ticket["J"]
    all_win = backend.scan(header, 1 << 256, lambda: False)
    assert all_win.complete
    assert all_win.macs == workload.shape.macs_per_header
    digests = {(ti, tj): d.hex() for ti, tj, d in all_win.winners}
    assert len(digests) == workload.shape.tiles
    for ticket in case["tickets"]:
        assert digests[tuple(ticket["tile"])] == ticket["digest"]
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


@pytest.mark.parametrize("shape", [Shape(64, 96, 256, 64), Shape(48, 32, 512, 128)])
def test_winners_are_exactly_the_reference_winners(shape, backend):
    workload = Workload.synthetic(os.urandom(32), shape)
    header = os.urandom(128)
    work = mine_header(header, workload)
    target = median_target(work, shape.k)
    expected = work.winners(target, shape.k)
    assert 0 < len(expected) < shape.tiles
    backend.prepare(workload)
    result = backend.scan(header, target, lambda: False, want_product=True)
    assert np.array_equal(result.product, work.noisy_product)
    assert result.winners == expected
    assert np.array_equal(backend.transcripts(header), work.j)
    assert np.array_equal(backend.product(header), work.noisy_product)


def test_should_stop_cuts_the_scan_short():
    shape = Shape(64, 64, 512, 32)
    workload = Workload.synthetic(bytes(32), shape)
    backend = BlasBackend(threads=1, block_rows=32, block_cols=32)
    backend.prepare(workload)
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) > 5

    result = backend.scan(os.urandom(128), 1 << 256, stop_after_five, want_product=True)
    assert not result.complete
    assert result.product is None  # a partial product is no product
    assert 0 < result.macs < shape.macs_per_header
    # a new job right after the switch is mined completely and correctly
    header = os.urandom(128)
    again = backend.scan(header, 1 << 256, lambda: False, want_product=True)
    assert again.complete and len(again.winners) == shape.tiles
    reference = mine_header(header, workload)
    assert again.winners == reference.winners(1 << 256, shape.k)
    assert np.array_equal(again.product, reference.noisy_product)


def test_bad_input_gets_clear_errors():
    backend = BlasBackend(threads=1)
    with pytest.raises(BackendError, match="prepare"):
        backend.scan(bytes(128), 1, lambda: False)
    backend.prepare(Workload.synthetic(bytes(32), Shape(16, 16, 128, 32)))
    with pytest.raises(BackendError, match="128 bytes"):
        backend.scan(bytes(127), 1, lambda: False)
    with pytest.raises(BackendError, match="positive"):
        backend.scan(bytes(128), 0, lambda: False)
    with pytest.raises(BackendError, match="multiples"):
        BlasBackend(block_rows=24)
    with pytest.raises(BackendError, match="threads"):
        BlasBackend(threads=0)
    with pytest.raises(BackendError, match="unknown backend"):
        open_backends("cuda", None)
    with pytest.raises(BackendError, match="device list"):
        open_backends("blas", ["0:0"])


def test_open_backends_blas():
    (backend,) = open_backends("blas", None)
    assert backend.name == "blas"
    shape = Shape(32, 16, 128, 32)
    workload = Workload.synthetic(bytes(range(32)), shape)
    backend.prepare(workload)
    header = bytes(range(128))
    assert np.array_equal(backend.transcripts(header), mine_header(header, workload).j)
