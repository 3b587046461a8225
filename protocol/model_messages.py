"""Model jobs on the wire (SPEC §12.12.8): the job source ``kind: "model"``, the bounds of a
layer share's openings, and the layer blobs the weights travel in.

A model job's ``work`` is layer 0's workload (its shape, ``a_root_0``, ``b_root_0``) and
its source names the unit (model, rows, preferred ``r``, the input blob ``X``), every
layer's blob and ``b_root`` and the lease's data plane. The worker computes the other
layers' shapes from :meth:`LayerSpec.shape` and their ``a_root`` itself. A layer blob is
the layer's record of the canonical model bytes (§12.12.1), so its content hash names it
and the model id follows from the blobs (:func:`model_from_blobs`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .codec import Bin, Codec, Str, Struct, UInt, describe, wire_field
from .data_plane import MAX_DATA_URL, MAX_TOKEN, check_data_url
from .errors import ProtocolError
from .hashing import H
from .model import MAX_LAYERS, MAX_WIDTH, MODEL_TAG, Layer, Model, model_from_arrays
from .model_work import UNIT_TAG
from .useful import choose_r, padded_k, round_up
from .workload import ALLOWED_R, MAX_K, TILE, Shape

MODEL_CAPABILITY = "model-1"
"""Announced in ``mining.subscribe {capabilities}``: this miner takes model jobs."""
MAX_UNIT_ROWS = (1 << 32) - TILE
"""The most rows of a unit: its padded ``m'`` still fits a u32 (§3's ``work_root``)."""
MAX_LAYER = MAX_LAYERS - 1
"""The highest layer index a share may name."""
MIN_TILE_ROWS = TILE * 4 * ALLOWED_R[0]
"""Bytes of the 16 opened rows of the narrowest layer (``k' = 4·32``)."""
MAX_TILE_ROWS = TILE * MAX_K
"""Bytes of the 16 opened rows of the widest layer (``k' = 65536``)."""
TILE_LEVELS = (TILE - 1).bit_length()
"""A tile's 16 rows are a whole subtree of this height in the row tree (§3)."""
MAX_A_PROOF = 32 * (32 - TILE_LEVELS)
"""Bytes of a tile's proof when ``m'`` is as large as a u32 allows (28 hashes)."""
SUBMIT_SLACK = 1024
"""Bytes a layer share's frame needs beyond its opened rows and proof (envelope, fields)."""


def layer_shape_of(k: int, n: int, m: int, r: int) -> Shape:
    """The mmpow-1 shape of a ``k × n`` layer for ``m`` rows at preferred ``r`` (§12.12.3),
    from the dimensions alone (``model_work.layer_shape`` with the model)."""
    slab = choose_r(k, r)
    return Shape(round_up(m, TILE), round_up(n, TILE), padded_k(k, slab), slab)


def proof_hashes(shape: Shape) -> int:
    """Hashes in a tile's proof: the levels of the row tree above the tile's subtree."""
    return (shape.m - 1).bit_length() - TILE_LEVELS


def layer_submit_bytes(shape: Shape) -> int:
    """The largest frame a share on a layer of ``shape`` needs: a pool leases a model
    unit only to a session whose frames hold this for every layer (§12.12.8)."""
    return TILE * shape.k + 32 * proof_hashes(shape) + SUBMIT_SLACK


class StructList(Codec):
    """An array of ``min_items..max_items`` maps, each the struct ``cls``; a tuple in Python."""

    def __init__(self, cls: type[Struct], min_items: int, max_items: int) -> None:
        self.cls, self.min_items, self.max_items = cls, min_items, max_items
        self.what = f"an array of {min_items} to {max_items} maps"

    def _items(self, value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, tuple | list) or not (
            self.min_items <= len(value) <= self.max_items
        ):
            raise ProtocolError(f"{path} must be {self.what}, got {describe(value)}")
        return tuple(value)

    def check(self, value: Any, path: str) -> tuple[Any, ...]:
        items = self._items(value, path)
        for i, item in enumerate(items):
            if not isinstance(item, self.cls):
                raise ProtocolError(f"{path}[{i}] must be a {self.cls.__name__}")
        return items

    def decode(self, wire: Any, path: str) -> tuple[Any, ...]:
        items = self._items(wire, path)
        return tuple(self.cls._from_map(item, f"{path}[{i}]") for i, item in enumerate(items))

    def encode(self, value: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [item._to_map() for item in value]


@dataclass(frozen=True)
class LayerSpec(Struct):
    """One layer of a model job: its blob (content hash), dimensions and ``b_root``."""

    _where: ClassVar[str] = "work.source.layers[]"
    blob: bytes = wire_field(Bin(32))
    k: int = wire_field(UInt(32, lo=1, hi=MAX_WIDTH))
    n: int = wire_field(UInt(32, lo=1, hi=MAX_WIDTH))
    b_root: bytes = wire_field(Bin(32))

    def shape(self, m: int, r: int) -> Shape:
        return layer_shape_of(self.k, self.n, m, r)


def model_unit_id(model_id: bytes, m: int, r: int, a_root_0: bytes) -> bytes:
    """``H("matmine/model-unit" ‖ model_id ‖ u32 m ‖ u16 r ‖ a_root_0)`` (§12.12.3)."""
    return H(UNIT_TAG, model_id, struct.pack("<IH", m, r), a_root_0)


@dataclass(frozen=True)
class ModelSource(Struct):
    """The source of a model job (SPEC §12.12.8): the unit, its input blob ``x`` (``m × k_0``
    int8), each layer's blob and ``b_root``, and the lease's data plane (always given)."""

    kind: ClassVar[str] = "model"
    _where: ClassVar[str] = "work.source"
    model_id: bytes = wire_field(Bin(32))
    unit: bytes = wire_field(Bin(32))
    m: int = wire_field(UInt(32, lo=1, hi=MAX_UNIT_ROWS))
    r: int = wire_field(UInt(32))
    x: bytes = wire_field(Bin(32))
    layers: tuple[LayerSpec, ...] = wire_field(StructList(LayerSpec, 1, MAX_LAYERS))
    data: str = wire_field(Str(max_len=MAX_DATA_URL))
    token: str = wire_field(Str(max_len=MAX_TOKEN))

    def _check(self, where: str) -> None:
        if self.r not in ALLOWED_R:
            raise ProtocolError(f"{where}.r must be one of {ALLOWED_R}, got {self.r}")
        for index in range(1, len(self.layers)):
            if self.layers[index].k != self.layers[index - 1].n:
                raise ProtocolError(
                    f"{where}.layers[{index}].k must be layer {index - 1}'s n "
                    f"({self.layers[index - 1].n}), got {self.layers[index].k}"
                )
        check_data_url(self.data, where)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def shape(self, layer: int) -> Shape:
        """``shape_l`` of layer ``layer`` for this unit."""
        return self.layers[layer].shape(self.m, self.r)

    def check_work(self, shape: Shape, a_root: bytes, b_root: bytes, where: str) -> None:
        """The job's ``work`` must be layer 0's: ``shape_0``, ``b_root_0``, and ``unit``
        must be the unit id of the model, rows, ``r`` and ``a_root`` (= ``a_root_0``)."""
        if shape != self.shape(0):
            s = self.shape(0)
            raise ProtocolError(
                f"{where} of a model job must be layer 0's shape m={s.m} n={s.n} k={s.k} r={s.r}"
            )
        if b_root != self.layers[0].b_root:
            raise ProtocolError(f"{where}.b_root of a model job must be layer 0's b_root")
        if self.unit != model_unit_id(self.model_id, self.m, self.r, a_root):
            raise ProtocolError(
                f"{where}.source.unit is not the unit id of its model_id, m, r and a_root"
            )


# --- layer blobs: how the weights travel ------------------------------------------------

_LAYER_HEAD = struct.Struct("<IIB")


def layer_blob(layer: Layer) -> bytes:
    """``u32 k ‖ u32 n ‖ u8 flags ‖ W ‖ b [‖ scale ‖ shift]``: the layer's record of the
    canonical model bytes (§12.12.1); its content hash is ``LayerSpec.blob``."""
    flags = int(layer.relu) | (2 if layer.requantised else 0)
    parts = [_LAYER_HEAD.pack(layer.k, layer.n, flags), layer.w.astype(np.int8).tobytes()]
    parts.append(layer.bias.astype("<i4").tobytes())
    if layer.scale is not None and layer.shift is not None:
        parts.append(layer.scale.astype("<i4").tobytes())
        parts.append(layer.shift.astype(np.uint8).tobytes())
    return b"".join(parts)


def layer_blobs(model: Model) -> tuple[bytes, ...]:
    """Every layer's blob, in order."""
    return tuple(layer_blob(layer) for layer in model.layers)


def _layer_arrays(raw: bytes, index: int) -> dict[str, np.ndarray]:
    """The arrays of one layer blob, keyed as in the ``.npz`` layout (``relu`` aside)."""
    where = f"layer blob {index}"
    if len(raw) < _LAYER_HEAD.size:
        raise ProtocolError(f"{where} is {len(raw)} bytes, shorter than its header")
    k, n, flags = _LAYER_HEAD.unpack_from(raw)
    if not (1 <= k <= MAX_WIDTH and 1 <= n <= MAX_WIDTH) or flags > 3:
        raise ProtocolError(f"{where} has a bad header (k={k}, n={n}, flags={flags})")
    requantised = bool(flags & 2)
    size = _LAYER_HEAD.size + k * n + 4 * n + (5 * n if requantised else 0)
    if len(raw) != size:
        raise ProtocolError(f"{where} is {len(raw)} bytes, its header says {size}")
    pos = _LAYER_HEAD.size
    arrays = {f"w{index}": np.frombuffer(raw, np.int8, k * n, pos).reshape(k, n)}
    pos += k * n
    arrays[f"b{index}"] = np.frombuffer(raw, "<i4", n, pos).astype(np.int32)
    if requantised:
        arrays[f"scale{index}"] = np.frombuffer(raw, "<i4", n, pos + 4 * n).astype(np.int32)
        arrays[f"shift{index}"] = np.frombuffer(raw, np.uint8, n, pos + 8 * n).astype(np.int32)
    return arrays


def model_from_blobs(blobs: Sequence[bytes]) -> Model:
    """The model whose layer blobs these are, validated as a model file is (one-line
    ``ProtocolError``); its ``model_id`` is ``H("matmine/model1" ‖ u32 L ‖ blobs…)``."""
    if not 1 <= len(blobs) <= MAX_LAYERS:
        raise ProtocolError(f"a model has 1 to {MAX_LAYERS} layer blobs, got {len(blobs)}")
    arrays: dict[str, np.ndarray] = {}
    relu = []
    for index, raw in enumerate(blobs):
        arrays.update(_layer_arrays(raw, index))
        relu.append(bool(raw[8] & 1))
    arrays["relu"] = np.array(relu, dtype=bool)
    return model_from_arrays(arrays)


def model_id_of_blobs(blobs: Sequence[bytes]) -> bytes:
    """``model_id`` from the layer blobs alone: ``H("matmine/model1" ‖ u32 L ‖ blobs…)``."""
    return H(MODEL_TAG, struct.pack("<I", len(blobs)), *blobs)
