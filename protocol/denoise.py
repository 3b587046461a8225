"""The useful result: exact ``A·B`` from the noisy product, and Freivalds' check of it."""

from __future__ import annotations

import numpy as np

from .noise import index_pairs, noise_factors


def _selector(f: np.ndarray, g: np.ndarray, r: int) -> np.ndarray:
    """S (r×k) with column l = e_f − e_g, as float64 for exact BLAS products."""
    k = len(f)
    s = np.zeros((r, k), dtype=np.float64)
    cols = np.arange(k)
    s[f, cols] += 1.0
    s[g, cols] -= 1.0
    return s


def denoise(
    noisy_product: np.ndarray, a: np.ndarray, bt: np.ndarray, seed: bytes, r: int
) -> np.ndarray:
    """``AB = A'B' − EAL·(S_A·B') − (A·S_Bᵀ)·EBRᵀ``, exact, as int32 (m×n)."""
    m, k = a.shape
    n = bt.shape[0]
    fa, ga = index_pairs(seed, "A", k, r)
    fb, gb = index_pairs(seed, "B", k, r)
    eal = noise_factors(seed, "A", 0, m, r).astype(np.float64)
    ebr = noise_factors(seed, "B", 0, n, r).astype(np.float64)
    s_a, s_b = _selector(fa, ga, r), _selector(fb, gb, r)
    b_noisy_t = bt.astype(np.float64) + ebr @ s_b  # B'ᵀ, n×k
    correction = eal @ (s_a @ b_noisy_t.T) + (a.astype(np.float64) @ s_b.T) @ ebr.T
    return (noisy_product.astype(np.int64) - np.rint(correction).astype(np.int64)).astype(np.int32)


def freivalds(
    a: np.ndarray, bt: np.ndarray, c: np.ndarray, rounds: int, rng: np.random.Generator
) -> bool:
    """Freivalds' test of ``C == A·B``, exact; false-accept ≤ 2^(−16·rounds).

    Each round draws x uniform in [0, 2¹⁶)ⁿ and compares ``C·x`` with ``A·(Bᵀᵀ·x)``.
    With |A|, |B| ≤ 64 every partial sum is below k·n·2²⁸ in magnitude, so when
    k·n < 2²⁵ all rounds run as one float64 BLAS product, still exact; otherwise int64.
    """
    if c.shape != (a.shape[0], bt.shape[0]):
        return False
    n, k = bt.shape
    x = rng.integers(0, 1 << 16, size=(n, rounds), dtype=np.int64)
    dtype = np.float64 if k * n < 1 << 25 else np.int64
    x = x.astype(dtype)
    left = c.astype(dtype) @ x
    right = a.astype(dtype) @ (bt.astype(dtype).T @ x)
    return bool(np.array_equal(left, right))
