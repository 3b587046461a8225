"""Ticket transcripts and digests: mining a header and verifying one tile (mmpow-1 §ticket)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import ErrorCode, ProtocolError
from .hashing import HK
from .noise import header_gather, noise_tables, noisy_rows, pow_seed
from .target import digest_value, ticket_limit
from .workload import TILE, Shape, Workload


def fold_tiles(acc: np.ndarray) -> np.ndarray:
    """XOR of the 256 accumulators (as u32) of every 16×16 tile of ``acc``."""
    rows, cols = acc.shape
    tiles = acc.view(np.uint32).reshape(rows // TILE, TILE, cols // TILE, TILE)
    return np.bitwise_xor.reduce(np.bitwise_xor.reduce(tiles, axis=3), axis=1)


def initial_transcripts(tiles_m: int, tiles_n: int, ti0: int = 0, tj0: int = 0) -> np.ndarray:
    """``J`` for a block of tiles: zeros, J[0] = ti, J[1] = tj."""
    j = np.zeros((tiles_m, tiles_n, 16), dtype=np.uint32)
    j[:, :, 0] = np.arange(ti0, ti0 + tiles_m, dtype=np.uint32)[:, None]
    j[:, :, 1] = np.arange(tj0, tj0 + tiles_n, dtype=np.uint32)[None, :]
    return j


def absorb_slab(j: np.ndarray, slab: int, folded: np.ndarray) -> None:
    """``J[s mod 16] = rotl32(J[s mod 16], 13) XOR x`` for every tile, in place."""
    word = j[:, :, slab % 16]
    j[:, :, slab % 16] = ((word << np.uint32(13)) | (word >> np.uint32(19))) ^ folded


def transcripts(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, ti0: int = 0, tj0: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Transcripts ``J`` of every tile of ``A'·B'`` and the final int32 accumulators.

    Each slab product is computed exactly in float32 (|partial| < 2²⁴), so this
    runs at BLAS speed. ``ti0``/``tj0`` give the tile index of the block's corner.
    """
    rows, k = a_noisy.shape
    cols = bt_noisy.shape[0]
    a32 = a_noisy.astype(np.float32)
    b32 = bt_noisy.astype(np.float32)
    acc = np.zeros((rows, cols), dtype=np.int32)
    j = initial_transcripts(rows // TILE, cols // TILE, ti0, tj0)
    for s in range(k // r):
        part = a32[:, s * r : (s + 1) * r] @ b32[:, s * r : (s + 1) * r].T
        acc += part.astype(np.int32)
        absorb_slab(j, s, fold_tiles(acc))
    return j, acc


def ticket_digest(seed: bytes, j: np.ndarray) -> bytes:
    """``HK(seed, J as 64 little-endian bytes)``."""
    return HK(seed, np.asarray(j, dtype="<u4").tobytes())


@dataclass
class HeaderWork:
    """Everything a miner gets from one header: transcripts, digests and ``A'·B'``."""

    seed: bytes
    j: np.ndarray
    noisy_product: np.ndarray

    def digest(self, ti: int, tj: int) -> bytes:
        return ticket_digest(self.seed, self.j[ti, tj])

    def winners(self, target: int, k: int) -> list[tuple[int, int, bytes]]:
        """Tiles whose ticket meets per-MAC ``target``, as (ti, tj, digest)."""
        limit = ticket_limit(target, k)
        found = []
        for ti in range(self.j.shape[0]):
            for tj in range(self.j.shape[1]):
                d = self.digest(ti, tj)
                if digest_value(d) <= limit:
                    found.append((ti, tj, d))
        return found


def mine_header(header: bytes, workload: Workload) -> HeaderWork:
    """The reference miner: the full transcript of every tile for one header."""
    seed = pow_seed(header)
    r = workload.shape.r
    a_noisy = noisy_rows(seed, "A", workload.a, 0, r)
    bt_noisy = noisy_rows(seed, "B", workload.bt, 0, r)
    j, acc = transcripts(a_noisy, bt_noisy, r)
    return HeaderWork(seed, j, acc)


def check_tile_rows(
    shape: Shape, tile: tuple[int, int], a_rows: np.ndarray, bt_rows: np.ndarray
) -> None:
    """``ProtocolError`` unless ``tile`` is on the grid and the rows are 16 × k each."""
    ti, tj = tile
    if not (0 <= ti < shape.tiles_m and 0 <= tj < shape.tiles_n):
        raise ProtocolError(
            f"tile {tile} outside {shape.tiles_m}x{shape.tiles_n}", code=ErrorCode.OTHER
        )
    if a_rows.shape != (TILE, shape.k) or bt_rows.shape != (TILE, shape.k):
        raise ProtocolError("verify_ticket needs 16 rows of A and 16 rows of Bᵀ of length k")


def verify_ticket(
    header: bytes, shape: Shape, tile: tuple[int, int], a_rows: np.ndarray, bt_rows: np.ndarray
) -> bytes:
    """Recompute one ticket's digest from its 16 rows of A and 16 rows of Bᵀ only."""
    ti, tj = tile
    check_tile_rows(shape, tile, a_rows, bt_rows)
    seed = pow_seed(header)
    a_noisy = noisy_rows(seed, "A", a_rows, ti * TILE, shape.r)
    bt_noisy = noisy_rows(seed, "B", bt_rows, tj * TILE, shape.r)
    j, _ = transcripts(a_noisy, bt_noisy, shape.r, ti, tj)
    return ticket_digest(seed, j[0, 0])


# -- the same ticket, checked fast: one vectorised pass (equal to verify_ticket, bit for bit)


@dataclass(frozen=True)
class HeaderNoise:
    """What every ticket of one header shares: its seed and the §7 index pairs of both sides
    (``noise.header_gather``); several shares on one header derive it once."""

    seed: bytes
    k: int
    r: int
    gather: np.ndarray

    @classmethod
    def of(cls, header: bytes, k: int, r: int) -> HeaderNoise:
        seed = pow_seed(header)
        return cls(seed, k, r, header_gather(seed, k, r))

    @property
    def nbytes(self) -> int:
        return int(self.gather.nbytes) + 128


LOWER_ONES_MAX = 16
"""Up to this many slabs the running sums are one float64 product with a triangle of ones;
beyond, log₂(slabs) in-place int32 passes cost less (the product grows with slabs²)."""

SMALL_BYTES = 32 << 10
"""Arrays up to this size are allocated afresh (cheaper than reusing them; they come from
the heap, never from pages mapped for them alone)."""

CHUNK_BYTES = 4 << 20
"""One pass of :func:`tile_digests` takes at most this many bytes of working arrays (about
224·k a ticket: the gathered factors, the noisy rows, their float32 copy), so a large batch
does not run out of cache and pay per share for it."""


@lru_cache(maxsize=8)
def lower_ones(slabs: int) -> np.ndarray:
    """The ``slabs × slabs`` lower triangle of ones (float64, read-only)."""
    tri = np.tril(np.ones((slabs, slabs)))
    tri.setflags(write=False)
    return tri


class PassArrays:
    """The working arrays of :func:`digests_pass`, kept from pass to pass: one pass at
    k = 2048 needs ~0.5 MiB a ticket, and arrays that size, freed and allocated again, are
    handed back to the OS and faulted in again page by page on every pass (~100 page faults
    a ticket, several times the arithmetic). One per check lane: not thread-safe."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype``, the memory of ``name`` reused."""
        size = math.prod(shape)
        kept = self._arrays.get(name)
        if kept is None or kept.size < size or kept.dtype != dtype:
            kept = self._arrays[name] = np.empty(size, dtype=dtype)
        return kept[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())


def running_sums(parts: np.ndarray, arrays: PassArrays | None = None) -> np.ndarray:
    """``acc`` after every slab as int32 ``(..., slabs, 256)``, from the exact float32 slab
    products ``(..., slabs, 256)``. Exact: every part is an integer (|part| ≤ 128²·r ≤ 2²³),
    every sum an integer below 2³¹ (|acc| ≤ 128²·k ≤ 2³⁰), which float64 and int32 hold."""
    slabs = parts.shape[-2]
    if slabs <= LOWER_ONES_MAX and (arrays is None or parts.nbytes <= SMALL_BYTES):
        return (lower_ones(slabs) @ parts.astype(np.float64)).astype(np.int32)
    arrays = arrays or PassArrays()
    sums = arrays.get("sums", parts.shape, np.int32)
    if slabs <= LOWER_ONES_MAX:
        wide = arrays.get("wide", parts.shape, np.float64)
        np.copyto(wide, parts)
        total = arrays.get("total", parts.shape, np.float64)
        np.matmul(lower_ones(slabs), wide, out=total)
        np.copyto(sums, total, casting="unsafe")
        return sums
    np.copyto(sums, parts, casting="unsafe")
    step = 1
    while step < slabs:  # after this pass, slab s holds the sum of slabs s − 2·step + 1 .. s
        sums[..., step:, :] += sums[..., :-step, :]  # overlap: numpy reads a copy (as if none)
        step *= 2
    return sums


@dataclass(frozen=True)
class TileCheck:
    """One ticket of a batch: its header's noise, its tile, its 16 + 16 rows."""

    noise: HeaderNoise
    tile: tuple[int, int]
    a_rows: np.ndarray
    bt_rows: np.ndarray


def digests_pass(checks: Sequence[TileCheck], arrays: PassArrays | None = None) -> list[bytes]:
    """The digests of several tickets of one ``(k, r)`` (rows 16 × k each, fastest as
    transposed views of contiguous k × 16 arrays) in one vectorised pass: the index pairs of
    each run of tickets on one ``HeaderNoise`` gathered by one call, the slab products of all
    in one batched sgemm, the folds in one reduction (§7–§8); only BLAKE3 is per ticket.
    ``arrays``: the working arrays to reuse (a fresh set when none).

    Exact, so equal to :func:`verify_ticket` bit for bit: ``E[f] − E[g]`` is taken from
    ``b & 63`` (``s(b) + 32``: the offsets cancel), |E[f] − E[g]| ≤ 63 fits int8, and adding
    the rows in int8 wraps as §7's ``i8`` does (mod 2⁸ in any order); every noisy entry is
    an int8 value, so a product is at most 128² = 2¹⁴ and a slab's sum over r ≤ 512 of them
    at most 2²³ < 2²⁴: each partial sum is an integer float32 holds exactly, whatever order
    or FMA the BLAS uses; :func:`running_sums` is exact too."""
    arrays = arrays or PassArrays()
    k, r = checks[0].noise.k, checks[0].noise.r
    slabs, count = k // r, len(checks)
    tables = noise_tables([(c.noise.seed, *c.tile) for c in checks], r)  # (count, 2r, 16)
    picked = arrays.get("picked", (count, 2, 2, k, TILE), np.int8)  # E at f, at g; A, B
    start = 0
    for stop in range(1, count + 1):
        if stop == count or checks[stop].noise is not checks[start].noise:
            gather = checks[start].noise.gather
            np.take(tables[start:stop], gather, axis=1, out=picked[start:stop], mode="clip")
            start = stop
    noisy = picked[:, :, 0]  # (count, 2, k, 16): E[f] − E[g] in [-63, 63], then + the rows
    np.subtract(noisy, picked[:, :, 1], out=noisy)
    for i, c in enumerate(checks):
        np.add(noisy[i, 0], c.a_rows.T, out=noisy[i, 0], casting="unsafe")
        np.add(noisy[i, 1], c.bt_rows.T, out=noisy[i, 1], casting="unsafe")
    cols = arrays.get("cols", (count, 2, k, TILE), np.float32)
    np.copyto(cols, noisy, casting="unsafe")
    sides = cols.reshape(count, 2, slabs, r, TILE)
    parts = arrays.get("parts", (count, slabs, TILE, TILE), np.float32)
    np.matmul(sides[:, 0].transpose(0, 1, 3, 2), sides[:, 1], out=parts)
    sums = running_sums(parts.reshape(count, slabs, TILE * TILE), arrays)
    folds = np.bitwise_xor.reduce(sums.view(np.uint32), axis=2)  # (count, slabs)
    j = np.zeros((count, 16), dtype=np.uint32)
    j[:, :2] = [c.tile for c in checks]
    for first in range(0, slabs, 16):  # one round = the next ≤ 16 slabs, one word each
        x = folds[:, first : first + 16]
        word = j[:, : x.shape[1]]
        j[:, : x.shape[1]] = ((word << np.uint32(13)) | (word >> np.uint32(19))) ^ x
    return [ticket_digest(c.noise.seed, j[i]) for i, c in enumerate(checks)]


def tile_digest(
    noise: HeaderNoise,
    tile: tuple[int, int],
    a_rows: np.ndarray,
    bt_rows: np.ndarray,
    arrays: PassArrays | None = None,
) -> bytes:
    """The digest of ``tile`` from its rows: :func:`digests_pass` of one ticket, with the
    fewer and flatter calls that one ticket needs (exact for the same reasons)."""
    arrays = arrays or PassArrays()
    ti, tj = tile
    k, r = noise.k, noise.r
    slabs = k // r
    table = noise_tables([(noise.seed, ti, tj)], r)[0]  # (2r, 16)
    picked = arrays.get("picked", (2, 2, k, TILE), np.int8)
    np.take(table, noise.gather, axis=0, out=picked, mode="clip")
    noisy = picked[:, 0]  # (2, k, 16): E[f] − E[g] in [-63, 63], then + the rows
    np.subtract(noisy, picked[:, 1], out=noisy)
    np.add(noisy[0], a_rows.T, out=noisy[0], casting="unsafe")
    np.add(noisy[1], bt_rows.T, out=noisy[1], casting="unsafe")
    cols = arrays.get("cols", (2, k, TILE), np.float32)
    np.copyto(cols, noisy, casting="unsafe")
    sides = cols.reshape(2, slabs, r, TILE)
    parts = np.matmul(sides[0].transpose(0, 2, 1), sides[1]).reshape(slabs, TILE * TILE)
    folds = np.bitwise_xor.reduce(running_sums(parts, arrays).view(np.uint32), axis=1)
    j = np.zeros(16, dtype=np.uint32)
    j[0], j[1] = ti, tj
    for first in range(0, slabs, 16):  # one round = the next ≤ 16 slabs, one word each
        x = folds[first : first + 16]
        word = j[: len(x)]
        j[: len(x)] = ((word << np.uint32(13)) | (word >> np.uint32(19))) ^ x
    return ticket_digest(noise.seed, j)


def tile_digests(checks: Sequence[TileCheck], arrays: PassArrays | None = None) -> list[bytes]:
    """:func:`tile_digest` of several tickets, in order, in :func:`digests_pass` passes of at
    most ``CHUNK_BYTES`` of working arrays each (one ``(k, r)`` a pass, the tickets of one
    ``HeaderNoise`` side by side; ``arrays`` reused by every pass): less per share than a
    call a ticket."""
    arrays = arrays or PassArrays()
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, c in enumerate(checks):
        groups.setdefault((c.noise.k, c.noise.r, id(c.noise)), []).append(i)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for (k, r, _), members in groups.items():
        by_shape.setdefault((k, r), []).extend(members)
    digests = [b""] * len(checks)
    for (k, _), order in by_shape.items():
        per_pass = max(1, CHUNK_BYTES // (224 * k))
        for first in range(0, len(order), per_pass):
            part = order[first : first + per_pass]
            if len(part) == 1:  # one ticket: its own, leaner path
                c = checks[part[0]]
                found = [tile_digest(c.noise, c.tile, c.a_rows, c.bt_rows, arrays)]
            else:
                found = digests_pass([checks[i] for i in part], arrays)
            for i, digest in zip(part, found, strict=True):
                digests[i] = digest
    return digests


def verify_ticket_fast(
    header: bytes,
    shape: Shape,
    tile: tuple[int, int],
    a_rows: np.ndarray,
    bt_rows: np.ndarray,
    noise: HeaderNoise | None = None,
) -> bytes:
    """:func:`verify_ticket`'s digest in one vectorised pass; ``noise`` (of this header and
    shape, e.g. from a cache) saves deriving the index pairs again."""
    check_tile_rows(shape, tile, a_rows, bt_rows)
    if noise is None:
        noise = HeaderNoise.of(header, shape.k, shape.r)
    elif (noise.k, noise.r) != (shape.k, shape.r) or noise.seed != pow_seed(header):
        raise ValueError("verify_ticket_fast: the noise given is not this header's")
    return tile_digest(noise, tile, a_rows, bt_rows)
