"""How a model job's pass becomes mmpow-1 work (SPEC §12.12.3–§12.12.4).

Layer ``l`` of a unit of ``m`` input rows is one mmpow-1 workload: ``A`` = the unit's
activation ``A_l`` and ``Bᵀ`` = ``W_lᵀ``, both zero-padded to the layer's shape
``(round16(m), round16(n_l), padded_k(k_l, r_l), r_l)`` with ``r_l = choose_r(k_l, r)``.
The pool knows every ``b_root`` (its weights) and ``a_root_0`` (the inputs); the worker
computes ``a_root_l`` for ``l ≥ 1`` from the activations it computed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ProtocolError
from .hashing import H
from .merkle import rows_root
from .model import Model, check_input, layer_output, output_bytes
from .useful import choose_r, padded_k, round_up
from .workload import ALLOWED_R, TILE, Shape, Workload

UNIT_TAG = b"matmine/model-unit"
COMMIT_TAG = b"matmine/model-commit"
DEFAULT_R = 64


def layer_shape(model: Model, index: int, m: int, r: int = DEFAULT_R) -> Shape:
    """The mmpow-1 shape of layer ``index`` for a unit of ``m`` rows, preferred width ``r``."""
    if r not in ALLOWED_R:
        raise ProtocolError(f"r must be one of {ALLOWED_R}, got {r}")
    layer = model.layers[index]
    slab = choose_r(layer.k, r)
    return Shape(round_up(m, TILE), round_up(layer.n, TILE), padded_k(layer.k, slab), slab)


def pad_rows(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """``rows`` (int8) zero-padded to ``height × width``, C-contiguous."""
    out = np.zeros((height, width), dtype=np.int8)
    out[: rows.shape[0], : rows.shape[1]] = rows
    return out


def padded_activation(a: np.ndarray, shape: Shape) -> np.ndarray:
    """``A_l`` (m×k_l int8) as the layer's operand ``A`` (shape.m × shape.k)."""
    return pad_rows(a, shape.m, shape.k)


def padded_weights_t(model: Model, index: int, shape: Shape) -> np.ndarray:
    """``W_lᵀ`` as the layer's operand ``Bᵀ`` (shape.n × shape.k)."""
    return pad_rows(model.layers[index].w.T, shape.n, shape.k)


def layer_workload(model: Model, index: int, a: np.ndarray, r: int = DEFAULT_R) -> Workload:
    """The mmpow-1 workload of layer ``index`` whose (unpadded) activation is ``a``."""
    shape = layer_shape(model, index, a.shape[0], r)
    return Workload(shape, padded_activation(a, shape), padded_weights_t(model, index, shape))


def next_activation(model: Model, index: int, product: np.ndarray, m: int) -> np.ndarray:
    """``A_{index+1}`` (or the output ``Y``) from the layer's exact padded product (the
    denoised ``A·B`` of its workload, §11): the real ``m × n_l`` block through
    :func:`layer_output`. The padding of the product must be zero (it is, for zero-padded
    operands)."""
    layer = model.layers[index]
    if product.ndim != 2 or product.shape[0] < m or product.shape[1] < layer.n:
        raise ProtocolError(f"layer {index}'s product is {product.shape}, needs {m}x{layer.n}")
    return layer_output(layer, product[:m, : layer.n])


def weight_roots(model: Model, r: int = DEFAULT_R) -> tuple[bytes, ...]:
    """Every layer's ``b_root`` (independent of m: the padded ``W_lᵀ`` has no m)."""
    roots = []
    for index in range(model.depth):
        shape = layer_shape(model, index, TILE, r)
        roots.append(rows_root(padded_weights_t(model, index, shape)))
    return tuple(roots)


def unit_id(model: Model, x: np.ndarray, r: int = DEFAULT_R) -> bytes:
    """``H("matmine/model-unit" ‖ model_id ‖ u32 m ‖ u16 r ‖ a_root_0)``."""
    check_input(model, x)
    shape = layer_shape(model, 0, x.shape[0], r)
    a_root_0 = rows_root(padded_activation(x, shape))
    return H(UNIT_TAG, model.model_id, struct.pack("<IH", x.shape[0], r), a_root_0)


def commitments_digest(unit: bytes, a_roots: tuple[bytes, ...], output_hash: bytes) -> bytes:
    """``H("matmine/model-commit" ‖ unit_id ‖ u32 L ‖ a_root_1 ‖ … ‖ a_root_{L−1} ‖ H(Y))``."""
    if len(unit) != 32 or len(output_hash) != 32 or any(len(a) != 32 for a in a_roots):
        raise ProtocolError("unit id, roots and output hash must be 32 bytes each")
    depth = len(a_roots) + 1
    return H(COMMIT_TAG, unit, struct.pack("<I", depth), *a_roots, output_hash)


@dataclass(frozen=True, eq=False)
class UnitRecord:
    """What the pool holds of a unit once its commitments arrived: model, inputs, ``r``,
    the worker's roots ``a_root_1..a_root_{L−1}`` and the delivered output ``Y``."""

    model: Model
    x: np.ndarray
    r: int
    a_roots: tuple[bytes, ...]
    output: np.ndarray

    def __post_init__(self) -> None:
        check_input(self.model, self.x)
        if len(self.a_roots) != self.model.depth - 1:
            raise ProtocolError(
                f"a unit of a {self.model.depth}-layer model commits "
                f"{self.model.depth - 1} activation roots, got {len(self.a_roots)}"
            )
        want = (self.x.shape[0], self.model.output_width)
        dtype = np.int32 if self.model.int32_output else np.int8
        if self.output.shape != want or self.output.dtype != dtype:
            raise ProtocolError(
                f"output must be {np.dtype(dtype)} {want[0]}x{want[1]}, got "
                f"{self.output.dtype} {self.output.shape[0]}x{self.output.shape[-1]}"
            )

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def shape(self, index: int) -> Shape:
        return layer_shape(self.model, index, self.rows, self.r)

    @cached_property
    def unit_id(self) -> bytes:
        return unit_id(self.model, self.x, self.r)

    @cached_property
    def output_hash(self) -> bytes:
        return H(output_bytes(self.model, self.output))

    @cached_property
    def digest(self) -> bytes:
        """The commitments digest the audit's challenges are drawn from."""
        return commitments_digest(self.unit_id, self.a_roots, self.output_hash)

    @property
    def macs(self) -> int:
        """Useful MACs of the unit's pass, ``m·Σ k_l·n_l``."""
        return self.rows * self.model.macs_per_row
