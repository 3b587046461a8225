"""A float ReLU MLP (scikit-learn's ``MLPClassifier``) quantised to the int8 model format
of SPEC §12.12 (``protocol.model``).

Activations are int8 codes ``q = a·s`` with one scale ``s`` per layer boundary: the input
pixels 0..16 become ``q = 4·pixel`` (exact, ``s_0 = 64`` for the features ``pixel/16`` the
network was trained on), and each hidden layer's output gets ``s = 64 / c`` where ``c`` is a
high percentile of that layer's float activations on the training rows (rarer larger ones
are clamped to 64). Layer ``l``:

- weights: per output column ``j``, ``w_s[j] = 64 / max|W[:, j]|`` and
  ``W_q = round(W·w_s)`` in [-64, 64]; on the last layer one scale for all columns, so the
  int32 logits of every class are on the same scale and ``argmax(Y)`` is the prediction;
- bias: ``b_q = round(b·s_in·w_s)`` (int32), on the scale of the product ``A_q·W_q``;
- hidden layers: the real multiplier ``M[j] = s_out / (s_in·w_s[j])`` taking ``z = A_q·W_q
  + b_q`` to the next layer's codes becomes ``scale[j]·2^-shift[j]`` with ``scale`` in
  [2³⁰, 2³¹) (31 significant bits), then ReLU and the clamp to [0, 64] (SPEC §12.12.2);
- the last layer is raw: ``Y = z`` (int32 logits, no ReLU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protocol.model import BIAS_LIMIT, SCALE_MAX, SHIFT_MAX, Model, model_from_arrays

CODE_MAX = 64
"""The largest int8 code of the format (entries in [-64, 64])."""
PIXEL_MAX = 16
"""scikit-learn's digits have pixels 0..16."""


def quantise_input(pixels: np.ndarray) -> np.ndarray:
    """Pixels 0..16 as int8 codes 0..64 (``4·pixel``, exact)."""
    return (np.asarray(pixels, dtype=np.int64) * (CODE_MAX // PIXEL_MAX)).astype(np.int8)


def multiplier(m: float) -> tuple[int, int]:
    """``(scale, shift)`` with ``scale·2^-shift ≈ m``, ``scale`` in [2³⁰, 2³¹) when the
    shift allows it (``0 < m < 2³¹``)."""
    if not 0 < m < SCALE_MAX:
        raise ValueError(f"requantisation multiplier {m} out of range")
    shift = min(SHIFT_MAX, max(0, 30 - math.floor(math.log2(m))))
    scale = min(SCALE_MAX, max(1, round(m * 2.0**shift)))
    return scale, shift


def _weights(w: np.ndarray, per_column: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(W_q, w_s)``: int8 weights and their scale per column."""
    peak = np.abs(w).max(axis=0) if per_column else np.full(w.shape[1], np.abs(w).max())
    w_s = CODE_MAX / np.maximum(peak, 1e-12)
    w_q = np.clip(np.rint(w * w_s), -CODE_MAX, CODE_MAX).astype(np.int8)
    return w_q, w_s


def quantise_mlp(
    coefs: Sequence[np.ndarray],
    intercepts: Sequence[np.ndarray],
    train_features: np.ndarray,
    percentile: float = 99.99,
) -> Model:
    """The int8 model of a float ReLU MLP (``coefs[l]``: ``k×n``, ``intercepts[l]``: ``n``)
    whose inputs are ``pixel/16``; ``train_features`` (rows × k₀, in [0, 1]) calibrate the
    hidden activation scales."""
    arrays: dict[str, np.ndarray] = {}
    depth = len(coefs)
    s_in = float(CODE_MAX)  # the features pixel/16 are coded as 64·feature = 4·pixel
    a = np.asarray(train_features, dtype=np.float64)
    for index, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        last = index == depth - 1
        w_q, w_s = _weights(np.asarray(w, dtype=np.float64), per_column=not last)
        b_q = np.rint(np.asarray(b, dtype=np.float64) * s_in * w_s)
        if np.abs(b_q).max() > BIAS_LIMIT:
            raise ValueError(f"layer {index}: a bias does not fit [-2^30, 2^30]")
        arrays[f"w{index}"], arrays[f"b{index}"] = w_q, b_q.astype(np.int32)
        if last:
            break
        a = np.maximum(a @ w + b, 0.0)  # the float activations this layer outputs
        ceiling = float(np.percentile(a, percentile)) or 1.0
        s_out = CODE_MAX / ceiling
        pairs = [multiplier(s_out / (s_in * float(scale))) for scale in w_s]
        arrays[f"scale{index}"] = np.array([p[0] for p in pairs], dtype=np.int32)
        arrays[f"shift{index}"] = np.array([p[1] for p in pairs], dtype=np.int32)
        s_in = s_out
    arrays["relu"] = np.array([index < depth - 1 for index in range(depth)], dtype=bool)
    return model_from_arrays(arrays)
