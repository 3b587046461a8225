"""The exact ``A·B`` from a header's noisy product, with a quarter of the reference's work.

``protocol.denoise.denoise`` (the reference) builds ``B'ᵀ`` in float64 (``n·r·k`` MACs)
and multiplies it by the dense selector ``S_A`` (``r·k·n`` more), as much work as a third
of a model layer's mining. Here the noise of ``B'`` is moved to the small side:

    S_A·B' = S_A·B + (S_A·S_Bᵀ)·EBRᵀ
    AB     = P − [EAL | A·S_Bᵀ] · [S_A·B' | EBR]ᵀ

so the only large product is ``S_A·B`` (``r·k·n`` MACs in float32) and the rest is
``m·n·2r`` (float64) plus ``r²·(k + n)``. Exact: the float32 products hold integers below
2²⁴ (``|S_A·B|, |A·S_Bᵀ| ≤ 64·k ≤ 2²²``, ``|S_A·S_Bᵀ| ≤ k``), the float64 ones below 2⁵³
(``≤ 2r·2²³·32``), so the result equals the reference bit for bit.

:func:`check_product` is Freivalds' test (SPEC §11) on the same float32 ``Bᵀ``: ``x`` has
``b = 18 − bitlen(n)`` random bits per entry, so ``|B·x| < 2⁶·2ᵇ·n ≤ 2²⁴`` is exact in
float32 (and ``C·x``, ``A·(B·x)`` below 2⁵³ in float64); a wrong row ``e ≠ 0`` gives
``e·x = 0`` with probability at most ``2⁻ᵇ`` per column, and ``⌈32/b⌉`` columns make a wrong
product pass with probability at most ``2⁻³²``.
"""

from __future__ import annotations

import numpy as np

from protocol.noise import index_pairs, noise_factors


def selector(f: np.ndarray, g: np.ndarray, r: int) -> np.ndarray:
    """``S`` (r × k float32), column ``l`` = ``e_{f_l} − e_{g_l}``."""
    k = len(f)
    s = np.zeros((r, k), dtype=np.float32)
    columns = np.arange(k)
    s[f, columns] += 1.0
    s[g, columns] -= 1.0
    return s


def exact_product(
    noisy_product: np.ndarray,
    a: np.ndarray,
    bt: np.ndarray,
    seed: bytes,
    r: int,
    bt32: np.ndarray | None = None,
) -> np.ndarray:
    """``A·B`` (m × n int32) from ``A'·B'``; equal to ``protocol.denoise.denoise``.
    ``bt32``: ``bt`` as float32 already (shared with :func:`check_product`)."""
    m, k = a.shape
    n = bt.shape[0]
    s_a = selector(*index_pairs(seed, "A", k, r), r)
    s_b = selector(*index_pairs(seed, "B", k, r), r)
    ebr = noise_factors(seed, "B", 0, n, r).astype(np.float64)  # n × r
    if bt32 is None:
        bt32 = bt.astype(np.float32)
    s_a_b = s_a @ bt32.T  # r × n, S_A·B
    cross = (s_a @ s_b.T).astype(np.float64)  # r × r, S_A·S_Bᵀ
    left = np.empty((m, 2 * r), dtype=np.float64)
    left[:, :r] = noise_factors(seed, "A", 0, m, r)  # EAL
    left[:, r:] = a.astype(np.float32) @ s_b.T  # A·S_Bᵀ
    right = np.empty((2 * r, n), dtype=np.float64)
    right[:r] = s_a_b
    right[:r] += cross @ ebr.T  # S_A·B'
    right[r:] = ebr.T
    correction = (left @ right).astype(np.int64)
    return (noisy_product.astype(np.int64) - correction).astype(np.int32)


CHECK_BITS = 32
"""A wrong product passes :func:`check_product` with probability at most ``2^-CHECK_BITS``."""


def check_product(a: np.ndarray, bt32: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> bool:
    """Freivalds' test of ``C = A·B`` (A int8, ``bt32`` = Bᵀ as float32, entries in
    [-64, 64]); exact; a wrong ``C`` passes with probability at most ``2^-CHECK_BITS``."""
    m, k = a.shape
    n = bt32.shape[0]
    if c.shape != (m, n) or bt32.shape[1] != k:
        return False
    bits = max(1, 18 - n.bit_length())
    columns = -(-CHECK_BITS // bits)
    x = rng.integers(0, 1 << bits, size=(n, columns)).astype(np.float32)
    b_x = (bt32.T @ x).astype(np.float64)  # k × columns, |·| < 2^24: exact
    right = a.astype(np.float64) @ b_x  # |·| < 2^46
    return bool(np.array_equal(c.astype(np.float64) @ x.astype(np.float64), right))
