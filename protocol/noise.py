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


def pair_indices(u: np.ndarray, r: int, out: np.ndarray) -> None:
    """§7's ``(f, g)`` of every u32 word of ``u`` into ``out[0]`` (f) and ``out[1]`` (g), u32,
    in 6 cheap array operations and no remainder (numpy's ``%`` is a division per entry).

    Exact for every u32 ``u`` and every allowed r (a power of two, ``b = log₂ r ≤ 9``), with
    ``h = u >> 16``: ``f = u mod r = u & (r − 1)``, and since ``r − 1 ≡ −1 (mod r)``,
    ``h mod (r − 1) = h − (r − 1)·⌊h/(r − 1)⌋ ≡ h + ⌊h/(r − 1)⌋``, so
    ``g ≡ u + h + ⌊h/(r − 1)⌋ + 1 = u + ⌊(h·r + r − 1)/(r − 1)⌋ (mod r)``; and
    ``h·r + r − 1 = (u >> (16 − b)) | (r − 1)`` (its low b bits set whatever they were),
    below 2²⁵. The division is by one scalar (numpy divides by a multiply and shifts);
    ``u + ·`` may wrap mod 2³², which r divides."""
    mask = np.uint32(r - 1)
    np.bitwise_and(u, mask, out=out[0])
    g = out[1]
    np.right_shift(u, np.uint32(16 - (r.bit_length() - 1)), out=g)
    np.bitwise_or(g, mask, out=g)
    np.floor_divide(g, mask, out=g)
    np.add(g, u, out=g)
    np.bitwise_and(g, mask, out=g)


def header_gather(seed: bytes, k: int, r: int) -> np.ndarray:
    """Both sides' index pairs as one ``(2, 2, k)`` int16 gather: ``[f, g][side][l]``, side
    B's indices offset by ``r`` (they address the lower half of :func:`tile_tables`). Int16,
    not the intp ``np.take`` converts them to (~1.5 µs a take at k = 2048): a cache of them
    holds 4× the headers, and a check on a header seen a while ago reads 16 KiB of indices
    from memory, not 64 KiB (faster in the pool, whose other processes evict the caches)."""
    raw = X(seed, _LABELS["A"][1], 4 * k) + X(seed, _LABELS["B"][1], 4 * k)
    pairs = np.empty((2, 2, k), dtype=np.uint32)
    pair_indices(np.frombuffer(raw, dtype="<u4").reshape(2, k), r, pairs)
    side_b = pairs[:, 1]
    np.add(side_b, np.uint32(r), out=side_b)
    return pairs.astype(np.int16)


_MASK63 = np.uint8(63)


def tile_tables(seed: bytes, ti: int, tj: int, r: int) -> np.ndarray:
    """EAL rows ``16ti..`` and EBR rows ``16tj..`` transposed and stacked: ``(2r, 16)`` int8,
    row ``c`` = column ``c`` of the A side's factors, row ``r + c`` the B side's."""
    return noise_tables([(seed, ti, tj)], r)[0] - np.int8(32)


def noise_tables(
    seed_tiles: Sequence[tuple[bytes, int, int]], r: int, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`tile_tables` of each ``(seed, ti, tj)`` **plus 32** (``b & 63``, in [0, 63]),
    stacked: ``(count, 2r, 16)`` int8 (into ``out`` when given, a contiguous array of that
    shape). The offset cancels in ``E[f] − E[g]``, the only way the noise reads a factor
    (§7), so the tickets' digests do not see it."""
    count = len(seed_tiles)
    tables = np.empty((count, 2 * r, 16), dtype=np.int8) if out is None else out
    raw = b"".join(_factor_bytes(seed, ti, tj, r) for seed, ti, tj in seed_tiles)
    _write_masked(tables.view(np.uint8).reshape(count, 2, r, 16), raw)
    return tables


def noise_table_into(seed: bytes, ti: int, tj: int, r: int, by_side: np.ndarray) -> None:
    """:func:`noise_tables` of one ``(seed, ti, tj)`` written into ``by_side``, a contiguous
    ``(2, r, 16)`` uint8 view of the ``(2r, 16)`` table (no list, no join, no new array)."""
    _write_masked(by_side, _factor_bytes(seed, ti, tj, r))


def _factor_bytes(seed: bytes, ti: int, tj: int, r: int) -> bytes:
    """The XOF bytes of EAL rows ``16ti..`` and EBR rows ``16tj..`` (16 rows of r each)."""
    return X(seed, _LABELS["A"][0], 16 * r, 16 * ti * r) + X(
        seed, _LABELS["B"][0], 16 * r, 16 * tj * r
    )


def _write_masked(by_side: np.ndarray, raw: bytes) -> None:
    """``raw`` (rows of r bytes, 16 a side) transposed into ``by_side`` (``(..., 2, r, 16)``
    uint8), each byte ``& 63``."""
    r = by_side.shape[-2]
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(*by_side.shape[:-2], 16, r)
    np.copyto(by_side, rows.swapaxes(-1, -2))
    np.bitwise_and(by_side, _MASK63, out=by_side)
