"""The model-job vectors (``protocol/vectors/model1.json``, SPEC §12.12, §13).

Everything is derived from BLAKE3 streams (stable across numpy versions): a 3-layer
model whose columns include rounding ties, clamping at ±64 and shift 0, a batch of 20
rows (padded to 32), every layer's commitments, the output and an audit draw.
"""

from __future__ import annotations

import numpy as np

from protocol.audit import audit_cost, audit_seed, challenge_count, draw_challenges
from protocol.hashing import H, X
from protocol.model import Model, model_from_arrays, reference_pass, requantise
from protocol.model_work import UnitRecord, layer_workload

R = 64
ROWS = 20
DRAWS = 12
DIMS = [(40, 24, True), (24, 33, False), (33, 10, False)]  # k, n, relu; last one raw


def _stream(name: str, n: int) -> np.ndarray:
    return np.frombuffer(X(H(b"matmine/vectors/model1", name.encode()), b"v", n), np.uint8)


def _entries(name: str, rows: int, cols: int) -> np.ndarray:
    raw = _stream(name, rows * cols).reshape(rows, cols)
    return ((raw % 129).astype(np.int16) - 64).astype(np.int8)


def _u32(name: str, n: int) -> np.ndarray:
    return _stream(name, 4 * n).view("<u4").astype(np.int64)


def _requantisation(index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns 0..3: ties (scale 1 or 3, shift 3 and 4: their weights are small),
    clamping (shift 0), the largest scale; the rest a random scale in [2²⁹, 2³¹) with
    a shift of 37..39."""
    scale = (_u32(f"scale{index}", n) % (1 << 30)) + (1 << 29)
    shift = 37 + _u32(f"shift{index}", n) % 3
    scale[:4] = [1, 3, 1, (1 << 31) - 1]
    shift[:4] = [3, 4, 0, 62]
    return scale.astype(np.int32), shift.astype(np.int32)


def vector_model() -> Model:
    arrays: dict[str, np.ndarray] = {"relu": np.array([relu for _, _, relu in DIMS])}
    for index, (k, n, _) in enumerate(DIMS):
        w = _entries(f"w{index}", k, n)
        bias = (_u32(f"b{index}", n) % 20001) - 10000
        if index < len(DIMS) - 1:  # tie columns: weights in {-1, 0, 1}, bias in [-4, 4]
            w[:, :2] = (_stream(f"small{index}", 2 * k).reshape(k, 2) % 3).astype(np.int8) - 1
            bias[:2] = bias[:2] % 9 - 4
        arrays[f"w{index}"] = w
        arrays[f"b{index}"] = bias.astype(np.int32)
        if index < len(DIMS) - 1:
            arrays[f"scale{index}"], arrays[f"shift{index}"] = _requantisation(index, n)
    return model_from_arrays(arrays)


REQUANT_CASES = [  # z, scale, shift, relu
    (1, 1, 1, False),
    (-1, 1, 1, False),
    (3, 1, 1, False),
    (-3, 1, 1, False),
    (5, 1, 2, False),
    (6, 1, 2, False),
    (-6, 1, 2, False),
    (-10, 1, 2, False),
    (7, 3, 3, False),
    (129, 1, 1, False),
    (127, 1, 1, False),
    (-127, 1, 1, False),
    (-129, 1, 1, False),
    (1000, 1, 0, False),
    (-1000, 1, 0, False),
    (-5, 1, 0, True),
    (5, 1, 0, True),
    ((1 << 28) + (1 << 30), (1 << 31) - 1, 62, False),
    (-(1 << 28) - (1 << 30), (1 << 31) - 1, 62, False),
    ((1 << 28) + (1 << 30), (1 << 31) - 1, 55, False),
    (-(1 << 28) - (1 << 30), (1 << 31) - 1, 55, True),
    (123456789, 1518500250, 40, False),
    (-123456789, 1518500250, 40, False),
]


def _requant_case(z: int, scale: int, shift: int, relu: bool) -> dict:
    y = int(requantise(np.array([z]), np.array([scale]), np.array([shift]))[0])
    y = min(64, max(-64, max(y, 0) if relu else y))
    return {"z": z, "scale": scale, "shift": shift, "relu": relu, "y": y}


def _layer_json(model: Model, index: int) -> dict:
    layer = model.layers[index]
    return {
        "k": layer.k,
        "n": layer.n,
        "relu": layer.relu,
        "w": layer.w.tolist(),
        "b": layer.bias.tolist(),
        "scale": None if layer.scale is None else layer.scale.tolist(),
        "shift": None if layer.shift is None else layer.shift.tolist(),
    }


def build_model_vectors() -> dict:
    model = vector_model()
    x = _entries("input", ROWS, model.input_width)
    run = reference_pass(model, x)
    layers = []
    for index in range(model.depth):
        workload = layer_workload(model, index, run.activations[index], R)
        s = workload.shape
        layers.append(
            {
                "shape": [s.m, s.n, s.k, s.r],
                "a_root": workload.a_root.hex(),
                "b_root": workload.b_root.hex(),
                "work_root": workload.work_root.hex(),
            }
        )
    a_roots = tuple(bytes.fromhex(layer["a_root"]) for layer in layers[1:])
    unit = UnitRecord(model, x, R, a_roots, run.output)
    secret = H(b"matmine/vectors/model1/pool-secret")
    seed = audit_seed(secret, unit.digest)
    challenges = draw_challenges(model, ROWS, seed, DRAWS)
    return {
        "version": "matmine-model-1",
        "requantisation": [_requant_case(*case) for case in REQUANT_CASES],
        "model": {
            "layers": [_layer_json(model, i) for i in range(model.depth)],
            "model_id": model.model_id.hex(),
        },
        "r": R,
        "input": x.tolist(),
        "activations": [a.tolist() for a in run.activations[1:]],
        "output": run.output.tolist(),
        "layers": layers,
        "output_hash": unit.output_hash.hex(),
        "unit_id": unit.unit_id.hex(),
        "commitments": unit.digest.hex(),
        "audit": {
            "pool_secret": secret.hex(),
            "seed": seed.hex(),
            "budget_ppm": 100,
            "count": challenge_count(model, ROWS),
            "draws": DRAWS,
            "challenges": [[c.layer, c.row] for c in challenges],
            "cost": audit_cost(model, challenges),
        },
    }
