"""Ticket transcripts and digests: mining a header and verifying one tile (mmpow-1 §ticket)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ErrorCode, ProtocolError
from .noise import noisy_rows, pow_seed
from .target import digest_value, ticket_limit
from .ticket_check import (
    CHUNK_BYTES,
    HeaderNoise,
    PassArrays,
    TileCheck,
    digests_pass,
    running_sums,
    ticket_digest,
    tile_digest,
    tile_digests,
)
from .workload import TILE, Shape, Workload

__all__ = [  # the fast path (protocol.ticket_check) is importable from here too
    "CHUNK_BYTES",
    "HeaderNoise",
    "HeaderWork",
    "PassArrays",
    "TileCheck",
    "absorb_slab",
    "check_tile_rows",
    "digests_pass",
    "fold_tiles",
    "initial_transcripts",
    "mine_header",
    "running_sums",
    "ticket_digest",
    "tile_digest",
    "tile_digests",
    "transcripts",
    "verify_ticket",
    "verify_ticket_fast",
]


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


# -- the same ticket, checked fast: protocol.ticket_check (equal to verify_ticket, bit for bit)


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
