"""The per-header seed and the rank-≤r noise that makes every header's product different."""

from __future__ import annotations

from collections.abc import Sequence

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


# -- the same noise, laid out for checking one ticket fast (SPEC §7 unchanged) ------------


def header_gather(seed: bytes, k: int, r: int) -> np.ndarray:
    """Both sides' index pairs as one ``(2, 2, k)`` int16 gather: ``[side][f, g][l]``,
    side B's indices offset by ``r`` (they address the lower half of :func:`tile_tables`)."""
    raw = X(seed, _LABELS["A"][1], 4 * k) + X(seed, _LABELS["B"][1], 4 * k)
    u = np.frombuffer(raw, dtype="<u4").reshape(2, k)
    mask = np.uint32(r - 1)
    f = u & mask
    # (f + 1 + (u >> 16) mod (r − 1)) mod r, with mod r = & (r − 1): r is a power of two
    g = (f + np.uint32(1) + (u >> np.uint32(16)) % np.uint32(r - 1)) & mask
    gather = np.empty((2, 2, k), dtype=np.int16)
    gather[:, 0] = f
    gather[:, 1] = g
    gather[1] += np.int16(r)
    return gather


def tile_tables(seed: bytes, ti: int, tj: int, r: int) -> np.ndarray:
    """EAL rows ``16ti..`` and EBR rows ``16tj..`` transposed and stacked: ``(2r, 16)`` int8,
    row ``c`` = column ``c`` of the A side's factors, row ``r + c`` the B side's."""
    return noise_tables([(seed, ti, tj)], r)[0] - np.int8(32)


def noise_tables(seed_tiles: Sequence[tuple[bytes, int, int]], r: int) -> np.ndarray:
    """:func:`tile_tables` of each ``(seed, ti, tj)`` **plus 32** (``b & 63``, in [0, 63]),
    stacked: ``(count, 2r, 16)`` int8. The offset cancels in ``E[f] − E[g]``, the only way
    the noise reads a factor (§7), so the tickets' digests do not see it."""
    a_label, b_label = _LABELS["A"][0], _LABELS["B"][0]
    raw = b"".join(
        X(seed, a_label, 16 * r, 16 * ti * r) + X(seed, b_label, 16 * r, 16 * tj * r)
        for seed, ti, tj in seed_tiles
    )
    count = len(seed_tiles)
    masked = np.frombuffer(raw, dtype=np.uint8).reshape(count, 2, 16, r) & np.uint8(63)
    by_side = np.ascontiguousarray(masked.transpose(0, 1, 3, 2)).view(np.int8)
    return by_side.reshape(count, 2 * r, 16)
