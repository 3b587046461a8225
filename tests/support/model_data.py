"""Model-job test data: random int8 models whose activations stay busy, headers per layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.hashing import H
from protocol.header import Header
from protocol.model import Model, model_from_arrays


def random_model(rng: np.random.Generator, widths: Sequence[int], raw_last: bool = False) -> Model:
    """Layers ``widths[l] → widths[l+1]``; scales chosen so requantised outputs spread
    over [-64, 64] instead of clamping; ReLU on every other layer."""
    arrays: dict[str, np.ndarray] = {}
    depth = len(widths) - 1
    relu = np.array([index % 2 == 1 for index in range(depth)], dtype=bool)
    for index in range(depth):
        k, n = widths[index], widths[index + 1]
        arrays[f"w{index}"] = rng.integers(-64, 65, size=(k, n), dtype=np.int8)
        arrays[f"b{index}"] = rng.integers(-5000, 5000, size=n, dtype=np.int32)
        if raw_last and index == depth - 1:
            continue
        spread = 32 * 32 * np.sqrt(k)  # about the spread of an accumulator
        arrays[f"scale{index}"] = rng.integers(1, 1 + int(2**16 * 40 / spread), size=n).astype(
            np.int32
        )
        arrays[f"shift{index}"] = np.full(n, 16, dtype=np.int32)
    arrays["relu"] = relu
    return model_from_arrays(arrays)


def random_inputs(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    return rng.integers(-64, 65, size=(rows, width), dtype=np.int8)


def layer_header(layer: int, work_root: bytes) -> bytes:
    """A header for one layer's ``work_root`` (its coinbase differs by layer)."""
    coinbase = H(b"test-coinbase", bytes([layer]))
    return Header(1, 7, bytes(32), coinbase, work_root, 1_700_000_000, 0x1D010000).encode()
