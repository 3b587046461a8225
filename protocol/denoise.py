"""The useful result: exact ``A·B`` from the noisy product, and Freivalds' check of it."""

from __future__ import annotations

import numpy as np

from .noise import index_pairs, noise_factors

ENTRY_BOUND = 64
"""|entry| of A and B (SPEC §2: entries in [-64, 64])."""


def _selector(f: np.ndarray, g: np.ndarray, r: int) -> np.ndarray:
    """S (r×k) with column l = e_f − e_g, as float32 for exact BLAS products."""
    k = len(f)
    s = np.zeros((r, k), dtype=np.float32)
    cols = np.arange(k)
    s[f, cols] += 1.0
    s[g, cols] -= 1.0
    return s


def denoise(
    noisy_product: np.ndarray, a: np.ndarray, bt: np.ndarray, seed: bytes, r: int
) -> np.ndarray:
    """``AB = A'B' − EAL·(S_A·B') − (A·S_Bᵀ)·EBRᵀ``, exact, as int32 (m×n).

    The selector products run in float32 BLAS: each is a sum of ±entries of B' (|·| ≤ 127)
    or of A over at most k ≤ ``MAX_K`` = 2¹⁶ terms, so every partial sum is an integer
    below 2²⁴ in magnitude, which float32 holds exactly. The two rank-r products run in
    float64 (terms and sums far below 2⁵³)."""
    m, k = a.shape
    n = bt.shape[0]
    fa, ga = index_pairs(seed, "A", k, r)
    fb, gb = index_pairs(seed, "B", k, r)
    eal = noise_factors(seed, "A", 0, m, r).astype(np.float64)
    ebr = noise_factors(seed, "B", 0, n, r)
    s_a, s_b = _selector(fa, ga, r), _selector(fb, gb, r)
    b_noisy_t = bt.astype(np.float32) + ebr.astype(np.float32) @ s_b  # B'ᵀ, n×k
    sa_b = (b_noisy_t @ s_a.T).astype(np.float64)  # (S_A·B')ᵀ, n×r
    a_sb = (a.astype(np.float32) @ s_b.T).astype(np.float64)  # A·S_Bᵀ, m×r
    correction = eal @ sa_b.T + a_sb @ ebr.astype(np.float64).T
    return (noisy_product.astype(np.int64) - np.rint(correction).astype(np.int64)).astype(np.int32)


X_BITS = 16
"""Freivalds' vectors are uniform in [0, 2¹⁶): each round false-accepts with p ≤ 2⁻¹⁶."""
_EXACT = 1 << 53  # float64 holds every integer of magnitude below this exactly
BLOCK_ENTRIES = 1 << 18  # entries converted to float64 at once (2 MiB: stays in cache)


def exact_product(left: np.ndarray, right: np.ndarray, term_bound: int) -> np.ndarray:
    """``left @ right`` of integer matrices, exactly, as int64, by float64 BLAS.

    ``term_bound`` bounds ``|left[i, j] · right[j, c]|``. The inner dimension is cut into
    blocks of at most ``(2⁵³ − 1) // term_bound`` terms, so every block's sum is below 2⁵³
    in magnitude and float64 computes it exactly; the blocks are summed in int64 (the
    caller keeps the whole sum below 2⁶³). ``right`` holds integers below 2⁵³ (exact in
    float64). ``left`` is converted a few rows at a time, so the scratch stays small.
    """
    rows, inner = left.shape
    span = max(1, min(inner, (_EXACT - 1) // max(1, term_bound)))
    right_f = right.astype(np.float64, copy=False)
    out = np.empty((rows, right.shape[1]), dtype=np.int64)
    step = max(1, BLOCK_ENTRIES // max(1, inner))
    for r0 in range(0, rows, step):
        block = left[r0 : r0 + step]
        if span >= inner:
            converted = block.astype(np.float64)
            out[r0 : r0 + step] = converted @ right_f
            del converted  # before the next one is made: one block of scratch at a time
            continue
        acc = np.zeros((len(block), right.shape[1]), dtype=np.int64)
        for j in range(0, inner, span):
            acc += (block[:, j : j + span].astype(np.float64) @ right_f[j : j + span]).astype(
                np.int64
            )
        out[r0 : r0 + step] = acc
    return out


class FreivaldsRows:
    """Freivalds' test of ``C == A·B`` row block by row block, exact; false-accept ≤
    ``2^(−16·rounds)``.

    At construction it draws ``x`` (n × rounds, uniform in [0, 2¹⁶)) from ``rng`` and
    computes ``B·x`` (k × rounds) and ``A·(B·x)`` (m × rounds): ``(m + n)·k·rounds`` MACs,
    the operands read a block of rows at a time. :meth:`rows` then checks any rows of C
    against it, ``C_rows·x == A_rows·(B·x)``, in ``rows·n·rounds`` MACs: C never needs to be
    whole in memory. Rows with an entry beyond ``64²·k`` (no product of entries in
    [-64, 64] has one) fail at once; with that bound every sum is below ``k·n·2²⁸`` in
    magnitude, which int64 holds for ``k·n < 2³⁵`` (unit shapes are far below: n ≤ 2¹⁴,
    k ≤ 2¹⁶ give 2⁵⁸), and :func:`exact_product` keeps each float64 partial sum below 2⁵³.
    """

    def __init__(self, a: np.ndarray, bt: np.ndarray, rounds: int, rng: np.random.Generator):
        m, k = a.shape
        n = bt.shape[0]
        if bt.shape[1] != k:
            raise ValueError(f"A is {m}×{k} but Bᵀ is {bt.shape[0]}×{bt.shape[1]}")
        if k * n >= 1 << 35:
            raise ValueError(f"a {k}×{n} Freivalds check could overflow int64")
        self.m, self.n, self.k = m, n, k
        x_max = (1 << X_BITS) - 1
        self.c_bound = ENTRY_BOUND * ENTRY_BOUND * k
        self._x = rng.integers(0, 1 << X_BITS, size=(n, rounds), dtype=np.int64)
        self._x_f = self._x.astype(np.float64)
        self._c_term = self.c_bound * x_max
        # B·x = Bᵀᵀ·x, over blocks of Bᵀ's rows: each |B·x| entry ≤ 64·n·x_max < 2⁵³
        bx = np.zeros((k, rounds), dtype=np.int64)
        step = max(1, BLOCK_ENTRIES // max(1, k))
        for r0 in range(0, n, step):  # each block's sums ≤ step·64·x_max < 2⁵³: exact
            block = bt[r0 : r0 + step].astype(np.float64)
            bx += (self._x_f[r0 : r0 + step].T @ block).T.astype(np.int64)
            del block  # before the next one is made: one block of scratch at a time
        self._expected = exact_product(a, bx, ENTRY_BOUND * ENTRY_BOUND * n * x_max)

    def rows(self, first: int, c_rows: np.ndarray) -> bool:
        """Whether rows ``first … first + len(c_rows)`` of C pass every round."""
        if c_rows.ndim != 2 or c_rows.shape[1] != self.n or first + len(c_rows) > self.m:
            return False
        if not len(c_rows):
            return True
        if int(c_rows.min()) < -self.c_bound or int(c_rows.max()) > self.c_bound:
            return False
        left = exact_product(c_rows, self._x_f, self._c_term)
        return bool(np.array_equal(left, self._expected[first : first + len(c_rows)]))


def freivalds(
    a: np.ndarray, bt: np.ndarray, c: np.ndarray, rounds: int, rng: np.random.Generator
) -> bool:
    """Freivalds' test of ``C == A·B`` for a whole C, exact; false-accept ≤ 2^(−16·rounds).

    Each round draws x uniform in [0, 2¹⁶)ⁿ and compares ``C·x`` with ``A·(Bᵀᵀ·x)``
    (:class:`FreivaldsRows` over all of C's rows).
    """
    if c.shape != (a.shape[0], bt.shape[0]):
        return False
    return FreivaldsRows(a, bt, rounds, rng).rows(0, c)
