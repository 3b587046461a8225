"""The worker's fast exact denoising equals the reference ``protocol.denoise`` bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from protocol.denoise import denoise
from protocol.noise import pow_seed
from protocol.ticket import mine_header
from protocol.workload import Shape, Workload
from worker.model_denoise import check_product, exact_product


@pytest.mark.parametrize(
    "shape",
    [
        Shape(16, 16, 128, 32),
        Shape(48, 80, 256, 64),
        Shape(32, 48, 2048, 512),
        Shape(16, 32, 8192, 32),
    ],
    ids=str,
)
def test_exact_product_is_the_reference(shape):
    workload = Workload.synthetic(os.urandom(32), shape)
    header = os.urandom(128)
    noisy = mine_header(header, workload).noisy_product
    seed = pow_seed(header)
    fast = exact_product(noisy, workload.a, workload.bt, seed, shape.r)
    assert fast.dtype == np.int32
    assert np.array_equal(fast, denoise(noisy, workload.a, workload.bt, seed, shape.r))
    exact = workload.a.astype(np.int64) @ workload.bt.astype(np.int64).T
    assert np.array_equal(fast, exact)


def test_extreme_entries_stay_exact():
    """Every entry at ±64 (the largest sums the exactness bounds allow for)."""
    shape = Shape(16, 16, 65536, 512)
    a = np.full((16, shape.k), 64, dtype=np.int8)
    bt = np.full((16, shape.k), -64, dtype=np.int8)
    bt[::2] = 64
    workload = Workload(shape, a, bt)
    header = bytes(range(128))
    noisy = mine_header(header, workload).noisy_product
    fast = exact_product(noisy, a, bt, pow_seed(header), shape.r)
    assert np.array_equal(fast, a.astype(np.int64) @ bt.astype(np.int64).T)


@pytest.mark.parametrize("m, n, k", [(16, 16, 128), (256, 2048, 256), (16, 65536, 128)])
def test_check_product_accepts_the_product_and_refuses_any_wrong_entry(m, n, k):
    rng = np.random.default_rng(n)
    a = rng.integers(-64, 65, size=(m, k), dtype=np.int8)
    bt = rng.integers(-64, 65, size=(n, k), dtype=np.int8)
    a[0], bt[0] = 64, -64  # the largest magnitudes the bounds allow for
    bt32 = bt.astype(np.float32)
    c = (a.astype(np.int64) @ bt.astype(np.int64).T).astype(np.int32)
    assert check_product(a, bt32, c, rng)
    for delta in (1, -1, 1 << 10, -(1 << 20)):
        wrong = c.copy()
        wrong[rng.integers(m), rng.integers(n)] += delta
        assert not check_product(a, bt32, wrong, rng)
    assert not check_product(a, bt32, c[:, :-16], rng)  # wrong shape
