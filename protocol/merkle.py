"""Row Merkle commitments: one leaf per matrix row, BLAKE3 inner nodes."""

from __future__ import annotations

import numpy as np

from .hashing import H

EMPTY = bytes(32)


def row_leaf(row: bytes) -> bytes:
    """``H("mmpow1/row" ‖ row bytes)``."""
    return H(b"mmpow1/row", row)


def _node(left: bytes, right: bytes) -> bytes:
    return H(b"mmpow1/node", left, right)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    width = 1 << (len(leaves) - 1).bit_length()
    level = list(leaves) + [EMPTY] * (width - len(leaves))
    levels = [level]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def matrix_leaves(matrix: np.ndarray) -> list[bytes]:
    """Leaf hashes of the rows of a 2-D int8 matrix."""
    m = np.ascontiguousarray(matrix)
    return [row_leaf(m[i].tobytes()) for i in range(m.shape[0])]


def merkle_root(leaves: list[bytes]) -> bytes:
    """Root over ``leaves`` padded with 32 zero bytes to a power of two."""
    return _levels(leaves)[-1][0]


def rows_root(matrix: np.ndarray) -> bytes:
    """Merkle root over the rows of ``matrix``."""
    return merkle_root(matrix_leaves(matrix))


class RowTree:
    """A full row tree, for producing inclusion proofs of rows."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.levels = _levels(matrix_leaves(matrix))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from the leaf level up to (not including) the root."""
        if not 0 <= index < len(self.levels[0]):
            raise IndexError(index)
        path = []
        for level in self.levels[:-1]:
            path.append(level[index ^ 1])
            index >>= 1
        return path


def verify_proof(row: bytes, index: int, proof: list[bytes], root: bytes) -> bool:
    """True iff ``row`` is leaf ``index`` of the tree with ``root``."""
    if index < 0 or index >> len(proof):
        return False
    node = row_leaf(row)
    for sibling in proof:
        node = _node(sibling, node) if index & 1 else _node(node, sibling)
        index >>= 1
    return node == root
