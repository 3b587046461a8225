"""Int8 models for model jobs (SPEC §12.12): the format, its id and the reference pass.

A model is a sequence of layers. Layer ``l`` has weights ``W_l`` (int8 ``k_l × n_l``,
entries in [-64, 64]), a bias ``b_l`` (int32, ``|b| ≤ 2³⁰``), a ReLU flag and, on every
layer but possibly the last, a per-output-column requantisation to int8 by an integer
multiplier ``scale`` (1..2³¹−1) and a right shift ``shift`` (0..62), rounding half away
from zero, clamped to [-64, 64]. A last layer without requantisation returns int32.

The file is a numpy ``.npz`` (no pickles) with exactly the arrays ``w{l}`` (int8 k×n),
``b{l}``, ``scale{l}``, ``shift{l}`` (int32, length n; ``scale``/``shift`` absent on a
raw last layer) and ``relu`` (bool, length L). The id is the BLAKE3 of a canonical
serialisation (:func:`canonical_bytes`), so it does not depend on how the file was
written.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ProtocolError
from .hashing import H
from .workload import ENTRY_MAX, ENTRY_MIN, MAX_K

MAX_LAYERS = 64
MAX_WIDTH = MAX_K
"""The most inputs or outputs of a layer (an output width is the next layer's k)."""
BIAS_LIMIT = 1 << 30
SCALE_MAX = (1 << 31) - 1
SHIFT_MAX = 62
MODEL_TAG = b"matmine/model1"
MAX_ARRAY_BYTES = 1 << 30
"""The most bytes a model file's arrays may hold once read (weights, biases, ...)."""

_KEY = re.compile(r"^(w|b|scale|shift)(0|[1-9][0-9]*)$")


@dataclass(frozen=True, eq=False)
class Layer:
    """One int8 layer; ``scale``/``shift`` are None on a raw (int32) last layer."""

    w: np.ndarray
    bias: np.ndarray
    scale: np.ndarray | None
    shift: np.ndarray | None
    relu: bool

    @property
    def k(self) -> int:
        return int(self.w.shape[0])

    @property
    def n(self) -> int:
        return int(self.w.shape[1])

    @property
    def requantised(self) -> bool:
        return self.scale is not None

    @property
    def macs_per_row(self) -> int:
        """Multiply-accumulates of one input row through this layer (``k·n``)."""
        return self.k * self.n


@dataclass(frozen=True, eq=False)
class Model:
    """A validated model; build it with :func:`model_from_arrays` or :func:`load_model`."""

    layers: tuple[Layer, ...]

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def input_width(self) -> int:
        return self.layers[0].k

    @property
    def output_width(self) -> int:
        return self.layers[-1].n

    @property
    def int32_output(self) -> bool:
        return not self.layers[-1].requantised

    @property
    def macs_per_row(self) -> int:
        """MACs of one input row through the whole pass, ``Σ k_l·n_l``."""
        return sum(layer.macs_per_row for layer in self.layers)

    @cached_property
    def model_id(self) -> bytes:
        """``H(canonical_bytes(model))``."""
        return H(canonical_bytes(self))


def _array(
    arrays: Mapping[str, np.ndarray], key: str, dtype: str, shape: tuple[int, ...]
) -> np.ndarray:
    value = arrays[key]
    if value.dtype != np.dtype(dtype):
        raise ProtocolError(f"model: {key} must be {dtype}, got {value.dtype}")
    if value.shape != shape:
        raise ProtocolError(f"model: {key} must have shape {shape}, got {value.shape}")
    return np.ascontiguousarray(value)


def _check_range(value: np.ndarray, key: str, low: int, high: int) -> None:
    if value.size and (int(value.min()) < low or int(value.max()) > high):
        raise ProtocolError(f"model: {key} has entries outside [{low}, {high}]")


def _depth(arrays: Mapping[str, np.ndarray]) -> int:
    indices: dict[str, set[int]] = {"w": set(), "b": set(), "scale": set(), "shift": set()}
    for key in arrays:
        if key == "relu":
            continue
        match = _KEY.match(key)
        if match is None:
            raise ProtocolError(f"model: unknown array {key!r}")
        indices[match.group(1)].add(int(match.group(2)))
    if not indices["w"]:
        raise ProtocolError("model: no layers (no array w0)")
    depth = max(indices["w"]) + 1
    if depth > MAX_LAYERS:
        raise ProtocolError(f"model: {depth} layers, at most {MAX_LAYERS}")
    expected = set(range(depth))
    for name in ("w", "b", "scale", "shift"):
        for index in sorted(indices[name] - expected):
            raise ProtocolError(f"model: {name}{index} names no layer (the last is w{depth - 1})")
        for index in sorted(expected - indices[name]):
            if name in ("w", "b") or index != depth - 1:
                raise ProtocolError(f"model: layer {index} has no {name}{index}")
    if "relu" not in arrays:
        raise ProtocolError("model: missing array relu (bool, one per layer)")
    return depth


def _layer(arrays: Mapping[str, np.ndarray], index: int, relu: bool, last: bool) -> Layer:
    w = arrays[f"w{index}"]
    if w.ndim != 2 or 0 in w.shape:
        raise ProtocolError(f"model: w{index} must be a non-empty 2-D matrix, got {w.shape}")
    k, n = (int(d) for d in w.shape)
    if k > MAX_WIDTH or n > MAX_WIDTH:
        raise ProtocolError(f"model: w{index} is {k}x{n}, at most {MAX_WIDTH} each way")
    w = _array(arrays, f"w{index}", "int8", (k, n))
    _check_range(w, f"w{index}", ENTRY_MIN, ENTRY_MAX)
    bias = _array(arrays, f"b{index}", "int32", (n,))
    _check_range(bias, f"b{index}", -BIAS_LIMIT, BIAS_LIMIT)
    has = (f"scale{index}" in arrays, f"shift{index}" in arrays)
    if has == (False, False) and last:
        return Layer(w, bias, None, None, relu)
    if not all(has):
        missing = "scale" if not has[0] else "shift"
        raise ProtocolError(f"model: layer {index} has no {missing}{index}")
    scale = _array(arrays, f"scale{index}", "int32", (n,))
    _check_range(scale, f"scale{index}", 1, SCALE_MAX)
    shift = _array(arrays, f"shift{index}", "int32", (n,))
    _check_range(shift, f"shift{index}", 0, SHIFT_MAX)
    return Layer(w, bias, scale, shift, relu)


def model_from_arrays(arrays: Mapping[str, np.ndarray]) -> Model:
    """The model the arrays describe; a one-line ``ProtocolError`` on anything off."""
    depth = _depth(arrays)
    relu = _array(arrays, "relu", "bool", (depth,))
    layers = tuple(
        _layer(arrays, index, bool(relu[index]), index == depth - 1) for index in range(depth)
    )
    for index in range(1, depth):
        if layers[index].k != layers[index - 1].n:
            raise ProtocolError(
                f"model: w{index} has {layers[index].k} rows, layer {index - 1} "
                f"gives {layers[index - 1].n} outputs"
            )
    return Model(layers)


def _declared_bytes(archive: zipfile.ZipFile) -> int:
    """The bytes the arrays of an ``.npz`` say they hold, from their ``.npy`` headers
    alone (so a small compressed file cannot make us inflate gigabytes)."""
    total = 0
    for name in archive.namelist():
        with archive.open(name) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        total += math.prod(shape) * dtype.itemsize
    return total


def load_model(data: bytes, max_array_bytes: int = MAX_ARRAY_BYTES) -> Model:
    """The model in the bytes of a ``.npz`` file (never unpickles; refuses arrays that
    would take more than ``max_array_bytes`` in all before inflating them)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as npz:
            if npz.zip is None:
                raise ValueError("the archive is closed")
            declared = _declared_bytes(npz.zip)
            if declared > max_array_bytes:
                raise ProtocolError(
                    f"model: its arrays hold {declared} bytes, at most {max_array_bytes}"
                )
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ProtocolError(f"model: not a readable .npz file ({exc})") from None
    return model_from_arrays(arrays)


def model_arrays(model: Model) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` layout (the inverse of :func:`model_from_arrays`)."""
    arrays: dict[str, np.ndarray] = {
        "relu": np.array([layer.relu for layer in model.layers], dtype=bool)
    }
    for index, layer in enumerate(model.layers):
        arrays[f"w{index}"] = layer.w
        arrays[f"b{index}"] = layer.bias
        if layer.scale is not None and layer.shift is not None:
            arrays[f"scale{index}"] = layer.scale
            arrays[f"shift{index}"] = layer.shift
    return arrays


def save_model(model: Model) -> bytes:
    """The model as the bytes of a ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez(buffer, **model_arrays(model))  # type: ignore[arg-type]
    return buffer.getvalue()


def canonical_bytes(model: Model) -> bytes:
    """``"matmine/model1" ‖ u32 L ‖`` per layer ``u32 k ‖ u32 n ‖ u8 flags ‖ W ‖ b
    [‖ scale ‖ shift]`` (SPEC §12.12.1): flags bit 0 = ReLU, bit 1 = requantised."""
    parts = [MODEL_TAG, struct.pack("<I", model.depth)]
    for layer in model.layers:
        flags = int(layer.relu) | (2 if layer.requantised else 0)
        parts.append(struct.pack("<IIB", layer.k, layer.n, flags))
        parts.append(layer.w.astype(np.int8).tobytes())
        parts.append(layer.bias.astype("<i4").tobytes())
        if layer.scale is not None and layer.shift is not None:
            parts.append(layer.scale.astype("<i4").tobytes())
            parts.append(layer.shift.astype(np.uint8).tobytes())
    return b"".join(parts)


def check_input(model: Model, x: np.ndarray) -> None:
    """Raise ``ProtocolError`` unless ``x`` is an int8 batch the model takes."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ProtocolError(f"input must be a non-empty 2-D batch, got shape {x.shape}")
    if x.shape[1] != model.input_width:
        raise ProtocolError(
            f"input rows have {x.shape[1]} entries, the model takes {model.input_width}"
        )
    if x.dtype != np.int8:
        raise ProtocolError(f"input must be int8, got {x.dtype}")
    _check_range(x, "input", ENTRY_MIN, ENTRY_MAX)


def requantise(z: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``round_half_away(z·scale / 2^shift)`` per column, int64 (before ReLU and clamp).

    ``z·scale`` fits int64 (``|z| < 2³¹``, ``scale < 2³¹``); for ``shift ≥ 1`` the result
    is ``sign(p)·⌊(|p| + 2^(shift−1)) / 2^shift⌋``, for ``shift = 0`` it is ``p``.
    """
    p = z.astype(np.int64) * scale.astype(np.int64)
    s = shift.astype(np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    magnitude = np.right_shift(np.abs(p) + half, s)
    return np.where(p < 0, -magnitude, magnitude)


def layer_forward(layer: Layer, a: np.ndarray) -> np.ndarray:
    """Rows of ``A_l`` (int8, m×k) through one layer: int8 (requantised) or int32 (raw)."""
    return layer_output(layer, a.astype(np.int64) @ layer.w.astype(np.int64))


def layer_output(layer: Layer, acc: np.ndarray) -> np.ndarray:
    """The layer's output from its exact product ``acc = A_l·W_l`` (m×n): bias, then
    requantisation, ReLU and clamp (int8), or bias and ReLU (raw, int32)."""
    if acc.ndim != 2 or acc.shape[1] != layer.n:
        raise ProtocolError(f"a product of this layer has {layer.n} columns, got {acc.shape}")
    z = acc.astype(np.int64) + layer.bias.astype(np.int64)
    if layer.scale is not None and layer.shift is not None:
        y = requantise(z, layer.scale, layer.shift)
        if layer.relu:
            y = np.maximum(y, 0)
        return np.clip(y, ENTRY_MIN, ENTRY_MAX).astype(np.int8)
    if layer.relu:
        z = np.maximum(z, 0)
    return z.astype(np.int32)


@dataclass(frozen=True, eq=False)
class Pass:
    """A whole pass: ``activations[l]`` = ``A_l`` (real rows and columns), and the output."""

    activations: tuple[np.ndarray, ...]
    output: np.ndarray


def reference_pass(model: Model, x: np.ndarray) -> Pass:
    """The reference pass in int64 numpy: ``A_0 = x``, ``A_{l+1} = layer_l(A_l)``."""
    check_input(model, x)
    activations = [np.ascontiguousarray(x)]
    for layer in model.layers[:-1]:
        activations.append(layer_forward(layer, activations[-1]))
    return Pass(tuple(activations), layer_forward(model.layers[-1], activations[-1]))


def output_bytes(model: Model, y: np.ndarray) -> bytes:
    """The delivered output as it is hashed and shipped: i8, or i32 little-endian."""
    dtype = np.dtype("<i4") if model.int32_output else np.dtype(np.int8)
    return np.ascontiguousarray(y, dtype=dtype).tobytes()
