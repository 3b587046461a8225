"""The checks of a share on a model job's layer, and the block it makes (SPEC §12.12.8).

Pure functions, no I/O: :func:`layer_header` runs the cheap rules of a ``mining.submit``
on a model job (its fields, the layer, the tile on that layer's grid, the time) and builds
the header with ``work_root(shape_l, a_root_l, b_root_l)``, so a pool can look the ticket
key ``(H(header), tile)`` up before the costly part; :func:`check_layer_share` then checks
the opened rows of ``A_l`` (tile proof, entries, zero padding) and the ticket, with the
pool's own 16 rows of ``Bᵀ = W_lᵀ``. A refusal is a one-line ``ProtocolError`` whose code is
the wire's (§12.5). :func:`layer_block` turns a share that meets the network target into a
``BlockSubmission`` the node checks like any blob block.

A tile's 16 rows ``16ti..16ti+15`` are the leaves of one whole subtree of height 4 of the
row tree (``m'`` is a multiple of 16), so their 16 proofs share every sibling above it: a
share carries those once (:class:`TileOpening`, ``path``) and the pool rebuilds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chain import BlockSubmission
from .errors import ErrorCode, ProtocolError
from .hashing import H
from .header import MAX_TIME_ROLL, Header, assemble_coinbase, coinbase_hash
from .merkle import RowTree, row_leaf
from .messages import Notify, Submit
from .model_messages import TILE_LEVELS, ModelSource, proof_hashes
from .target import meets_target, target_from_bits, target_from_difficulty
from .ticket import verify_ticket_fast
from .workload import ENTRY_MAX, ENTRY_MIN, TILE, Shape, work_root

_NODE = b"mmpow1/node"


@dataclass(frozen=True, eq=False)
class TileOpening:
    """16 rows of a padded matrix at a tile (``16 × k`` int8) and the tile's proof: the
    siblings above the tile's 16-leaf subtree, leaf side first."""

    rows: np.ndarray
    path: tuple[bytes, ...]

    @classmethod
    def of(cls, matrix: np.ndarray, tile_index: int, tree: RowTree | None = None) -> TileOpening:
        """The opening of rows ``16·tile_index..`` of ``matrix`` (worker side, or the pool's
        own ``A_0`` and ``Bᵀ``); ``tree`` saves building the row tree again."""
        tree = RowTree(matrix) if tree is None else tree
        rows = np.ascontiguousarray(matrix[TILE * tile_index : TILE * (tile_index + 1)])
        return cls(rows, tuple(tree.proof(TILE * tile_index)[TILE_LEVELS:]))

    @property
    def proof_bytes(self) -> bytes:
        """The path as it travels: ``a_proof``, the hashes concatenated."""
        return b"".join(self.path)


def _subtree(rows: np.ndarray) -> list[list[bytes]]:
    """The levels of the 16-leaf subtree over ``rows``, leaves first, its root last."""
    level = [row_leaf(row.tobytes()) for row in rows]
    levels = [level]
    while len(level) > 1:
        level = [H(_NODE, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def tile_root(opening: TileOpening, tile_index: int) -> bytes:
    """The root the opening leads to: the subtree of its rows, then up its path."""
    node = _subtree(opening.rows)[-1][0]
    index = tile_index
    for sibling in opening.path:
        node = H(_NODE, sibling, node) if index & 1 else H(_NODE, node, sibling)
        index >>= 1
    return node


def row_proofs(opening: TileOpening) -> list[list[bytes]]:
    """The 16 per-row proofs of §3 (what a ``BlockSubmission`` carries): each row's
    siblings inside the tile's subtree, then the shared path."""
    levels = _subtree(opening.rows)
    proofs = []
    for i in range(TILE):
        inside = [levels[depth][(i >> depth) ^ 1] for depth in range(TILE_LEVELS)]
        proofs.append(inside + list(opening.path))
    return proofs


@dataclass(frozen=True)
class LayerHeader:
    """A layer share past the cheap rules: its layer, shape, root, coinbase and header."""

    layer: int
    shape: Shape
    a_root: bytes
    b_root: bytes
    work_root: bytes
    coinbase: bytes
    header: bytes


@dataclass(frozen=True, eq=False)
class LayerShare:
    """An accepted layer share: its header, the rows it opened and its ticket digest."""

    head: LayerHeader
    tile: tuple[int, int]
    a: TileOpening
    digest: bytes
    meets_network: bool


def _malformed(text: str) -> ProtocolError:
    return ProtocolError(f"mining.submit: {text}", ErrorCode.MALFORMED)


def check_submit_fields(job: Notify, submit: Submit) -> None:
    """A model job's submit must name a layer and its ``a_root``; any other job's must not
    (26 either way)."""
    is_model = isinstance(job.work.source, ModelSource)
    if is_model and not submit.is_layer_share:
        raise _malformed("a share on a model job needs params.layer and params.a_root")
    if not is_model and (submit.is_layer_share or submit.a_rows is not None):
        raise _malformed("params.layer, a_root and a_rows are only for model jobs")


def layer_header(job: Notify, extranonce1: bytes, submit: Submit) -> LayerHeader:
    """The cheap rules of a share on model job ``job`` (as sent, to the session of
    ``extranonce1``) and its header, built with ``work_root(shape_l, a_root, b_root_l)``."""
    check_submit_fields(job, submit)
    source = job.work.source
    assert isinstance(source, ModelSource) and submit.layer is not None
    assert submit.a_root is not None
    layer = submit.layer
    if layer >= source.depth:
        raise _malformed(f"params.layer {layer} is not a layer of the {source.depth}-layer model")
    shape = source.shape(layer)
    ti, tj = submit.tile
    if not (ti < shape.tiles_m and tj < shape.tiles_n):
        raise ProtocolError(
            f"tile {list(submit.tile)} is outside layer {layer}'s "
            f"{shape.tiles_m}x{shape.tiles_n} tiles",
            ErrorCode.OTHER,
        )
    if not job.time <= submit.time <= job.time + MAX_TIME_ROLL:
        raise ProtocolError(
            f"time {submit.time} is not within {MAX_TIME_ROLL} s from the job's time {job.time}",
            ErrorCode.BAD_TIME,
        )
    if layer == 0 and submit.a_root != job.work.a_root:
        raise _malformed("params.a_root of layer 0 must be the job's a_root (the unit's input)")
    if layer > 0 and submit.a_rows is None:
        raise _malformed(f"a share on layer {layer} needs params.a_rows and params.a_proof")
    if submit.a_rows is not None and submit.a_proof is not None:
        if len(submit.a_rows) != TILE * shape.k:
            raise _malformed(
                f"params.a_rows must be {TILE}x{shape.k} bytes for layer {layer}, "
                f"got {len(submit.a_rows)}"
            )
        if len(submit.a_proof) != 32 * proof_hashes(shape):
            raise _malformed(
                f"params.a_proof must be {proof_hashes(shape)} hashes for layer {layer}, "
                f"got {len(submit.a_proof) // 32}"
            )
    b_root = source.layers[layer].b_root
    root = work_root(shape, submit.a_root, b_root)
    coinbase = assemble_coinbase(job.coinbase1, extranonce1, submit.extranonce2, job.coinbase2)
    header = Header(
        job.version, job.height, job.prev_hash, coinbase_hash(coinbase), root, submit.time, job.bits
    ).encode()
    return LayerHeader(layer, shape, submit.a_root, b_root, root, coinbase, header)


def _submitted_opening(submit: Submit, shape: Shape) -> TileOpening:
    assert submit.a_rows is not None and submit.a_proof is not None
    rows = np.frombuffer(submit.a_rows, dtype=np.int8).reshape(TILE, shape.k)
    proof = submit.a_proof
    return TileOpening(rows, tuple(proof[i : i + 32] for i in range(0, len(proof), 32)))


def check_opening(
    head: LayerHeader, tile: tuple[int, int], a: TileOpening, source: ModelSource
) -> None:
    """The opened rows lead to ``a_root`` at the tile, their entries are in [-64, 64] and
    their padding (columns ``≥ k_l``, rows ``≥ m``) is zero; 26 otherwise."""
    ti = tile[0]
    if tile_root(a, ti) != head.a_root:
        raise _malformed(f"params.a_rows of tile {list(tile)} do not open params.a_root")
    rows = a.rows
    if int(rows.min()) < ENTRY_MIN or int(rows.max()) > ENTRY_MAX:
        raise _malformed(f"params.a_rows has entries outside [{ENTRY_MIN}, {ENTRY_MAX}]")
    width = source.layers[head.layer].k
    real = max(0, min(TILE, source.m - TILE * ti))
    if np.any(rows[:, width:]) or np.any(rows[real:]):
        raise _malformed(
            f"params.a_rows must be zero beyond layer {head.layer}'s {width} columns "
            f"and the unit's {source.m} rows"
        )


def check_layer_share(
    job: Notify,
    extranonce1: bytes,
    submit: Submit,
    bt_rows: np.ndarray,
    pool_a0: TileOpening | None = None,
) -> LayerShare:
    """Every rule of a share on a model job (§12.12.4 step 4), the ticket last: the
    header of :func:`layer_header`, the opened rows (:func:`check_opening`), then the
    ticket with ``bt_rows``, the pool's rows ``16tj..16tj+15`` of layer ``l``'s padded
    ``W_lᵀ``. ``pool_a0`` is the pool's own opening of ``A_0`` at the tile, used for a
    layer-0 share that opens no rows. A ticket that misses the job's difficulty is 23.
    CPU work (row hashes, the ticket): call it in a worker thread."""
    head = layer_header(job, extranonce1, submit)
    source = job.work.source
    assert isinstance(source, ModelSource)
    if submit.a_rows is not None:
        a = _submitted_opening(submit, head.shape)
        check_opening(head, submit.tile, a, source)
    elif pool_a0 is not None:
        a = pool_a0
    else:
        raise ValueError("a layer-0 share without rows needs the pool's opening of A_0")
    if bt_rows.shape != (TILE, head.shape.k) or bt_rows.dtype != np.int8:
        raise ValueError(f"the pool's B rows must be int8 16x{head.shape.k}, got {bt_rows.shape}")
    digest = verify_ticket_fast(head.header, head.shape, submit.tile, a.rows, bt_rows)
    if not meets_target(digest, target_from_difficulty(job.difficulty), head.shape.k):
        raise ProtocolError("ticket does not meet the job's difficulty", ErrorCode.LOW_DIFFICULTY)
    meets_network = meets_target(digest, target_from_bits(job.bits), head.shape.k)
    return LayerShare(head, submit.tile, a, digest, meets_network)


def layer_block(share: LayerShare, weights: TileOpening) -> BlockSubmission:
    """The block of a layer share that met the network target: the header, coinbase,
    ``shape_l``, and the 16 + 16 opened rows with their per-row proofs against
    ``a_root_l`` and ``b_root_l`` (``weights``: the pool's opening of ``W_lᵀ`` at ``tj``)."""
    head = share.head
    return BlockSubmission(
        head.header,
        head.coinbase,
        head.shape,
        share.tile,
        None,
        a_rows=share.a.rows.tobytes(),
        bt_rows=np.ascontiguousarray(weights.rows).tobytes(),
        a_proofs=row_proofs(share.a),
        b_proofs=row_proofs(weights),
        a_root=head.a_root,
        b_root=head.b_root,
    )
