"""The per-header seed and the rank-≤r noise that makes every header's product different."""

from __future__ import annotations

import numpy as np

from .hashing import H, X

_LABELS = {
    "A": (b"mmpow1/EAL", b"mmpow1/SA"),
    "B": (b"mmpow1/EBR", b"mmpow1/SB"),
}


def pow_seed(header: bytes) -> bytes:
    """``seed = H("mmpow1/seed" ‖ header)``."""
    return H(b"mmpow1/seed", header)


def index_pairs(seed: bytes, side: str, k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The inner-index pairs ``(f_l, g_l)`` for l in [0, k); ``side`` is "A" or "B"."""
    u = np.frombuffer(X(seed, _LABELS[side][1], 4 * k), dtype="<u4").astype(np.int64)
    f = u & (r - 1)
    g = (f + 1 + ((u >> 16) % (r - 1))) % r
    return f, g


def noise_factors(seed: bytes, side: str, start: int, count: int, r: int) -> np.ndarray:
    """Rows ``start..start+count`` of EAL (side "A") or EBR (side "B"), entries in [-32, 31]."""
    raw = np.frombuffer(X(seed, _LABELS[side][0], count * r, start * r), dtype=np.uint8)
    return ((raw & 63).astype(np.int16) - 32).reshape(count, r)


def add_noise(rows: np.ndarray, factors: np.ndarray, f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``rows[i, l] + E[i, f_l] − E[i, g_l]`` as int8 (fits: |entry| ≤ 64 + 63)."""
    return (rows.astype(np.int16) + factors[:, f] - factors[:, g]).astype(np.int8)


def noisy_rows(seed: bytes, side: str, rows: np.ndarray, start: int, r: int) -> np.ndarray:
    """Noise applied to rows ``start..start+len(rows)`` of A (side "A") or Bᵀ (side "B")."""
    count, k = rows.shape
    f, g = index_pairs(seed, side, k, r)
    return add_noise(rows, noise_factors(seed, side, start, count, r), f, g)
