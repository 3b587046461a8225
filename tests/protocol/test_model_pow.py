"""SPEC §12.12.5: the work of a slab when the miner chooses A is bounded by the noise's
per-slab rank ρ_s = rank(S_{A,s}), which is below r (about 0.83·r), not by r itself."""

import numpy as np
import pytest

from protocol.hashing import H
from protocol.noise import index_pairs, noise_factors


def slab_selector(f: np.ndarray, g: np.ndarray, s: int, r: int) -> np.ndarray:
    """The r×r block of S_A for slab s: column l = e_{f_l} − e_{g_l}."""
    block = np.zeros((r, r))
    cols = np.arange(r)
    block[f[s * r : (s + 1) * r], cols] += 1
    block[g[s * r : (s + 1) * r], cols] -= 1
    return block


@pytest.mark.parametrize("r", [32, 64, 128])
def test_noise_rank_per_slab_is_below_r(r):
    ratios = []
    for t in range(6):
        seed = H(b"rank", bytes([t]))
        k = 8 * r
        f, g = index_pairs(seed, "A", k, r)
        for s in range(k // r):
            block = slab_selector(f, g, s, r)
            rank = np.linalg.matrix_rank(block)
            # the columns e_f − e_g sum to zero: never more than r − 1
            assert rank <= r - 1
            ratios.append(rank / r)
    assert 0.76 < float(np.mean(ratios)) < 0.88  # SPEC §12.12.5: ≈ 0.82..0.835


def test_a_zero_activation_makes_each_slab_a_rank_deficient_product():
    """With A_s = 0, A'_s = EAL·S_{A,s} has rank ρ_s < r, so the slab's increment
    A'_s·B'_s is a product of inner dimension ρ_s; a random A_s gives full rank r."""
    r, m = 64, 128
    seed = H(b"zero activation")
    f, g = index_pairs(seed, "A", 4 * r, r)
    eal = noise_factors(seed, "A", 0, m, r).astype(np.float64)
    rng = np.random.default_rng(0)
    for s in range(4):
        block = slab_selector(f, g, s, r)
        rho = np.linalg.matrix_rank(block)
        noisy_zero = eal @ block  # A'_s for A_s = 0
        assert np.linalg.matrix_rank(noisy_zero) == rho < r
        a_s = rng.integers(-64, 65, (m, r)).astype(np.float64)
        assert np.linalg.matrix_rank(a_s + noisy_zero) == r
