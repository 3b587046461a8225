"""The BLAS backend against the mmpow-1 vectors and the reference miner."""

import os

import numpy as np
import pytest

from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from tests.support.backend_checks import CASES, check_vector_case, check_winners
from worker.backends import BackendError, BlasBackend, open_backends


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def backend(request):
    return BlasBackend(threads=request.param, block_rows=32, block_cols=48)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_vector_tickets_and_product(case, backend):
    check_vector_case(backend, case)


@pytest.mark.parametrize("shape", [Shape(64, 96, 256, 64), Shape(48, 32, 512, 128)])
def test_winners_are_exactly_the_reference_winners(shape, backend):
    check_winners(backend, shape)


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


def test_float32_weights_are_kept_by_b_root_within_their_bound():
    shape = Shape(32, 48, 256, 64)
    rng = np.random.default_rng(4)
    bt = rng.integers(-64, 65, (shape.n, shape.k), dtype=np.int8)
    other = rng.integers(-64, 65, (shape.n, shape.k), dtype=np.int8)
    units = [rng.integers(-64, 65, (shape.m, shape.k), dtype=np.int8) for _ in range(3)]
    kept = BlasBackend(threads=1, block_rows=32, block_cols=48)
    tight = BlasBackend(threads=1, block_rows=32, block_cols=48, weights_bytes=bt.size * 4)
    for backend in (kept, tight):
        for a in units:  # three units on one B, then one on another B, then the first again
            for b in (bt, other, bt) if a is units[1] else (bt,):
                workload = Workload(shape, a, b)
                backend.prepare(workload)
                header = os.urandom(128)
                result = backend.scan(header, 1 << 256, lambda: False, want_product=True)
                reference = mine_header(header, workload)
                assert result.winners == reference.winners(1 << 256, shape.k)
                assert np.array_equal(result.product, reference.noisy_product)
    assert kept.weights_converted == 2  # each B once
    assert tight.weights_converted == 3  # room for one: the first B made again after the other


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


def test_units_on_one_shared_b_keep_its_float32_copy_and_stay_exact(backend):
    """Units of products on one B (same Bᵀ rows, other A) reuse B's float32 copy; a
    workload on another B makes a new one. Every product stays the reference's."""
    rng = np.random.default_rng(5)
    shape = Shape(32, 48, 256, 64)

    def operand(rows):
        return rng.integers(-64, 65, (rows, shape.k), dtype=np.int8)

    bt, other_bt = operand(shape.n), operand(shape.n)
    header = os.urandom(128)
    copies = []
    for a, b in ((operand(shape.m), bt), (operand(shape.m), bt), (operand(shape.m), other_bt)):
        workload = Workload(shape, a, b)
        backend.prepare(workload)
        copies.append(backend._b32)
        result = backend.scan(header, 1 << 256, lambda: False, want_product=True)
        assert np.array_equal(result.product, mine_header(header, workload).noisy_product)
    assert copies[1] is copies[0] and copies[2] is not copies[1]
