"""One ticket checked fast (SPEC §7–§8 unchanged): the pool's path, equal to the reference
``protocol.ticket.verify_ticket`` bit for bit (the reasons are in :func:`digests_pass`).

What a header's tickets share is derived once (:class:`HeaderNoise`); a ticket then costs
its 4 KiB of noise table, one gather, three int8 passes, one int8→float32 conversion, the
16 slab sgemms, one float64 product for the running sums and one XOR reduction, in working
arrays kept from call to call (:class:`PassArrays`, one set per thread by default).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .hashing import HK
from .noise import header_gather, noise_table_into, noise_tables, pow_seed
from .workload import TILE


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

KEPT_SHAPES = 4
"""One-ticket working sets (:class:`TileArrays`) a :class:`PassArrays` keeps, newest first."""

KEPT_TILE_BYTES = 8 << 20
"""…and at most this many bytes of them (~192·k bytes a set: 0.43 MiB at k = 2048); a set
larger than this alone (k above ~43 000) is made for its call and not kept, so a thread's
default set stays small whatever the shapes it checks."""

LIFT = 1.5 * 2.0**52
"""Added to every running sum in float64: for |x| < 2⁵¹, ``LIFT + x`` is exact (unit spacing
in [2⁵², 2⁵³)) and the low 32 bits of its binary64 pattern are ``x`` as a two's-complement
u32, the word the fold reads (so no float64→int32 pass)."""

_LOW_WORD = 0 if sys.byteorder == "little" else 1
"""Which u32 of a native float64 holds its low 32 bits."""


@lru_cache(maxsize=8)
def lower_ones(slabs: int) -> np.ndarray:
    """The ``slabs × slabs`` lower triangle of ones (float64, read-only)."""
    tri = np.tril(np.ones((slabs, slabs)))
    tri.setflags(write=False)
    return tri


@lru_cache(maxsize=8)
def lifted_ones(slabs: int) -> np.ndarray:
    """:func:`lower_ones` with a column of ones added: times the slab products with a row of
    :data:`LIFT` added, the running sums plus LIFT (float64, read-only)."""
    tri = np.hstack([lower_ones(slabs), np.ones((slabs, 1))])
    tri.setflags(write=False)
    return tri


class TileArrays:
    """The working arrays of one ticket of ``(k, r)`` and the views :func:`tile_digest` writes
    through, made once (slabs ≤ :data:`LOWER_ONES_MAX`: the lifted running sums)."""

    def __init__(self, k: int, r: int) -> None:
        slabs = k // r
        self.table = np.empty((2 * r, TILE), dtype=np.int8)  # noise_tables of the ticket
        self.by_side = self.table.view(np.uint8).reshape(2, r, TILE)
        self.picked = np.empty((2, 2, k, TILE), dtype=np.int8)  # [E at f, at g][A, B]
        self.noisy, self.at_g = self.picked[0], self.picked[1]
        self.noisy_a, self.noisy_b = self.noisy[0], self.noisy[1]
        self.cols = np.empty((2, k, TILE), dtype=np.float32)
        sides = self.cols.reshape(2, slabs, r, TILE)
        self.lhs, self.rhs = sides[0].transpose(0, 2, 1), sides[1]
        self.slabs = slabs
        self.words = np.zeros(16, dtype=np.uint32)  # J before ti, tj (words ≥ slabs stay 0)
        self.lifted = np.empty((slabs + 1, TILE * TILE), dtype=np.float32)
        self.lifted[slabs] = LIFT
        self.parts = self.lifted[:slabs].reshape(slabs, TILE, TILE)
        lifted_slabs = slabs if slabs <= LOWER_ONES_MAX else 0  # else running_sums' arrays
        self.sums = np.empty((lifted_slabs, TILE * TILE))
        self.low = self.sums.view(np.uint32).reshape(lifted_slabs, TILE * TILE, 2)[..., _LOW_WORD]
        self.folds = self.words[:slabs] if slabs <= 16 else np.empty(slabs, dtype=np.uint32)
        self.tri = lifted_ones(slabs) if slabs <= LOWER_ONES_MAX else None

    @property
    def nbytes(self) -> int:
        kept = (self.table, self.picked, self.cols, self.lifted, self.sums)
        return sum(int(a.nbytes) for a in kept)


class PassArrays:
    """The working arrays of :func:`digests_pass` and :func:`tile_digest`, kept from pass to
    pass: one pass at k = 2048 needs ~0.5 MiB a ticket, and arrays that size, freed and
    allocated again, are handed back to the OS and faulted in again page by page on every
    pass (~100 page faults a ticket, several times the arithmetic). One per check lane:
    not thread-safe (:func:`thread_arrays` is this thread's)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._tiles: dict[tuple[int, int], TileArrays] = {}
        self._last: tuple[tuple[int, int], TileArrays] | None = None

    def get(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype``, the memory of ``name`` reused."""
        size = math.prod(shape)
        kept = self._arrays.get(name)
        if kept is None or kept.size < size or kept.dtype != dtype:
            kept = self._arrays[name] = np.empty(size, dtype=dtype)
        return kept[:size].reshape(shape)

    def tile(self, k: int, r: int) -> TileArrays:
        """The one-ticket working set of ``(k, r)`` (the newest :data:`KEPT_SHAPES` kept,
        :data:`KEPT_TILE_BYTES` at most)."""
        last = self._last
        if last is not None and last[0] == (k, r):
            return last[1]
        kept = self._tiles.pop((k, r), None) or TileArrays(k, r)
        if kept.nbytes > KEPT_TILE_BYTES:
            return kept
        self._tiles[(k, r)] = kept
        while len(self._tiles) > KEPT_SHAPES or (
            sum(t.nbytes for t in self._tiles.values()) > KEPT_TILE_BYTES
        ):
            del self._tiles[next(iter(self._tiles))]
        self._last = ((k, r), kept)
        return kept

    @property
    def nbytes(self) -> int:
        arrays = sum(int(a.nbytes) for a in self._arrays.values())
        return arrays + sum(t.nbytes for t in self._tiles.values())


_THREAD = threading.local()


def thread_arrays() -> PassArrays:
    """This thread's kept working arrays (made by its first check; they go with the thread)."""
    arrays: PassArrays | None = getattr(_THREAD, "arrays", None)
    if arrays is None:
        arrays = _THREAD.arrays = PassArrays()
    return arrays


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


def absorb_folds(j: np.ndarray, folds: np.ndarray) -> None:
    """``J[s mod 16] = rotl32(J[s mod 16], 13) XOR x_s`` for every slab ``s`` in order, in
    place (``j``: ``(..., 16)``, ``folds``: ``(..., slabs)``, u32)."""
    for first in range(0, folds.shape[-1], 16):  # one round = the next ≤ 16 slabs, a word each
        x = folds[..., first : first + 16]
        word = j[..., : x.shape[-1]]
        j[..., : x.shape[-1]] = ((word << np.uint32(13)) | (word >> np.uint32(19))) ^ x


def ticket_digest(seed: bytes, j: np.ndarray) -> bytes:
    """``HK(seed, J as 64 little-endian bytes)``."""
    return HK(seed, np.asarray(j, dtype="<u4").tobytes())


def _rotl13(word: int) -> int:
    return ((word << 13) | (word >> 19)) & 0xFFFFFFFF


class TileCheck(NamedTuple):
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
    ``arrays``: the working arrays to reuse (this thread's when none).

    Exact, so equal to :func:`verify_ticket` bit for bit: ``E[f] − E[g]`` is taken from
    ``b & 63`` (``s(b) + 32``: the offsets cancel), |E[f] − E[g]| ≤ 63 fits int8, and adding
    the rows in int8 wraps as §7's ``i8`` does (mod 2⁸ in any order); every noisy entry is
    an int8 value, so a product is at most 128² = 2¹⁴ and a slab's sum over r ≤ 512 of them
    at most 2²³ < 2²⁴: each partial sum is an integer float32 holds exactly, whatever order
    or FMA the BLAS uses; the running sums are integers below 2³¹ summed in float64 (with
    :data:`LIFT`, exact in any order) or int32."""
    arrays = arrays or thread_arrays()
    k, r = checks[0].noise.k, checks[0].noise.r
    slabs, count = k // r, len(checks)
    tables = arrays.get("tables", (count, 2 * r, TILE), np.int8)
    noise_tables([(c.noise.seed, *c.tile) for c in checks], r, tables)
    picked = arrays.get("picked", (count, 2, 2, k, TILE), np.int8)  # E at f, at g; A, B
    start = 0
    for stop in range(1, count + 1):
        if stop == count or checks[stop].noise is not checks[start].noise:
            gather = checks[start].noise.gather
            np.take(tables[start:stop], gather, axis=1, out=picked[start:stop], mode="wrap")
            start = stop
    noisy = picked[:, 0]  # (count, 2, k, 16): E[f] − E[g] in [-63, 63], then + the rows
    np.subtract(noisy, picked[:, 1], out=noisy)
    for i, c in enumerate(checks):
        np.add(noisy[i, 0], c.a_rows.T, out=noisy[i, 0], casting="unsafe")
        np.add(noisy[i, 1], c.bt_rows.T, out=noisy[i, 1], casting="unsafe")
    cols = arrays.get("cols", (count, 2, k, TILE), np.float32)
    np.copyto(cols, noisy, casting="unsafe")
    sides = cols.reshape(count, 2, slabs, r, TILE)
    if slabs <= LOWER_ONES_MAX:  # slab-major: one float64 product for the whole pass
        lifted = arrays.get("lifted", (slabs + 1, count, TILE * TILE), np.float32)
        lifted[slabs] = LIFT
        parts = lifted[:slabs].transpose(1, 0, 2).reshape(count, slabs, TILE, TILE)
        np.matmul(sides[:, 0].transpose(0, 1, 3, 2), sides[:, 1], out=parts)
        wide = arrays.get("wide", (slabs + 1, count * TILE * TILE), np.float64)
        np.copyto(wide, lifted.reshape(slabs + 1, -1))
        total = arrays.get("total", (slabs, count * TILE * TILE), np.float64)
        np.matmul(lifted_ones(slabs), wide, out=total)
        low = total.view(np.uint32).reshape(slabs, count, TILE * TILE, 2)[..., _LOW_WORD]
        folds = np.bitwise_xor.reduce(low, axis=2).T  # (count, slabs)
    else:
        products = arrays.get("parts", (count, slabs, TILE, TILE), np.float32)
        np.matmul(sides[:, 0].transpose(0, 1, 3, 2), sides[:, 1], out=products)
        sums = running_sums(products.reshape(count, slabs, TILE * TILE), arrays)
        folds = np.bitwise_xor.reduce(sums.view(np.uint32), axis=2)
    j = np.zeros((count, 16), dtype=np.uint32)
    j[:, :2] = [c.tile for c in checks]
    absorb_folds(j, folds)
    words = np.asarray(j, dtype="<u4").tobytes()
    return [HK(c.noise.seed, words[64 * i : 64 * i + 64]) for i, c in enumerate(checks)]


def tile_digest(
    noise: HeaderNoise,
    tile: tuple[int, int],
    a_rows: np.ndarray,
    bt_rows: np.ndarray,
    arrays: PassArrays | None = None,
) -> bytes:
    """The digest of ``tile`` from its rows: :func:`digests_pass` of one ticket, through the
    views of its kept :class:`TileArrays` (exact for the same reasons)."""
    ti, tj = tile
    r = noise.r
    arrays = arrays or thread_arrays()
    w = arrays.tile(noise.k, r)
    noise_table_into(noise.seed, ti, tj, r, w.by_side)
    np.take(w.table, noise.gather, axis=0, out=w.picked, mode="wrap")
    noisy = w.noisy  # (2, k, 16): E[f] − E[g] in [-63, 63], then + the rows
    np.subtract(noisy, w.at_g, out=noisy)
    np.add(w.noisy_a, a_rows.T, out=w.noisy_a, casting="unsafe")
    np.add(w.noisy_b, bt_rows.T, out=w.noisy_b, casting="unsafe")
    np.copyto(w.cols, noisy)
    np.matmul(w.lhs, w.rhs, out=w.parts)
    slabs = w.slabs
    if w.tri is not None:
        np.matmul(w.tri, w.lifted, out=w.sums)
        np.bitwise_xor.reduce(w.low, axis=1, out=w.folds)
    else:
        sums = running_sums(w.parts.reshape(slabs, TILE * TILE), arrays)
        np.bitwise_xor.reduce(sums.view(np.uint32), axis=1, out=w.folds)
    if slabs <= 16:  # one absorb a word: J[s] = rotl(J₀[s]) ^ x_s, J₀ = (ti, tj, 0, …)
        data = np.asarray(w.words, dtype="<u4").tobytes()
        head = int.from_bytes(data[:8], "little") ^ (_rotl13(ti) | _rotl13(tj) << 32)
        return HK(noise.seed, head.to_bytes(8, "little") + data[8:])
    j = np.zeros(16, dtype=np.uint32)
    j[0], j[1] = ti, tj
    absorb_folds(j, w.folds)
    return ticket_digest(noise.seed, j)


def tile_digests(checks: Sequence[TileCheck], arrays: PassArrays | None = None) -> list[bytes]:
    """:func:`tile_digest` of several tickets, in order, in :func:`digests_pass` passes of at
    most ``CHUNK_BYTES`` of working arrays each (one ``(k, r)`` a pass, the tickets of one
    ``HeaderNoise`` side by side; ``arrays`` reused by every pass): less per share than a
    call a ticket."""
    arrays = arrays or thread_arrays()
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
