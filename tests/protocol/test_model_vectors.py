"""protocol/vectors/model1.json against an independent implementation of SPEC §12.12.

Everything below is written from the SPEC text with numpy int64, Python integers and the
blake3 module only; it calls nothing in ``protocol/`` (the file is only compared with what
``tools/gen_vectors.py`` renders, in the first test).
"""

import json
import struct
from pathlib import Path

import numpy as np
from blake3 import blake3

from tools.gen_vectors import MODEL_VECTORS, render_model

DATA = json.loads(Path(MODEL_VECTORS).read_text())
LAYERS = DATA["model"]["layers"]
M = len(DATA["input"])


def h(*parts: bytes) -> bytes:
    return blake3(b"".join(parts)).digest()


def xof(key: bytes, label: bytes, n: int, seek: int) -> bytes:
    return blake3(label, key=key).digest(length=n, seek=seek)


def rows_root(matrix: np.ndarray) -> bytes:  # SPEC §3
    level = [h(b"mmpow1/row", bytes(row.astype(np.int8).tobytes())) for row in matrix]
    width = 1
    while width < len(level):
        width *= 2
    level += [bytes(32)] * (width - len(level))
    while len(level) > 1:
        level = [h(b"mmpow1/node", level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def round16(x: int) -> int:
    return 16 * -(-x // 16)


def slab_width(k: int, r: int) -> tuple[int, int]:  # SPEC §12.12.3: (r_l, k')
    best = None
    for rr in (32, 64, 128, 256, 512):
        if rr <= r:
            kk = max(4 * rr, -(-k // rr) * rr)
            if best is None or kk < best[1] or (kk == best[1] and rr > best[0]):
                best = (rr, kk)
    assert best is not None
    return best


def requant(z: int, scale: int, shift: int, relu: bool) -> int:  # SPEC §12.12.2
    p = z * scale
    if shift == 0:
        q = p
    else:
        q = (abs(p) + (1 << (shift - 1))) >> shift
        q = -q if p < 0 else q
    if relu:
        q = max(q, 0)
    return min(64, max(-64, q))


def forward(layer: dict, a: np.ndarray) -> np.ndarray:
    z = a.astype(np.int64) @ np.array(layer["w"], dtype=np.int64) + np.array(layer["b"])
    if layer["scale"] is None:
        return np.maximum(z, 0) if layer["relu"] else z
    out = np.empty(z.shape, dtype=np.int64)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            out[i, j] = requant(int(z[i, j]), layer["scale"][j], layer["shift"][j], layer["relu"])
    return out


def padded(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.int64)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def model_id() -> bytes:  # SPEC §12.12.1
    parts = [b"matmine/model1", struct.pack("<I", len(LAYERS))]
    for layer in LAYERS:
        requantised = layer["scale"] is not None
        parts.append(struct.pack("<IIB", layer["k"], layer["n"], layer["relu"] + 2 * requantised))
        parts.append(np.array(layer["w"], dtype=np.int8).tobytes())
        parts.append(np.array(layer["b"], dtype="<i4").tobytes())
        if requantised:
            parts.append(np.array(layer["scale"], dtype="<i4").tobytes())
            parts.append(np.array(layer["shift"], dtype=np.uint8).tobytes())
    return h(*parts)


def full_pass() -> list[np.ndarray]:
    acts = [np.array(DATA["input"], dtype=np.int64)]
    for layer in LAYERS:
        acts.append(forward(layer, acts[-1]))
    return acts


def test_model_vectors_file_is_what_the_code_produces():
    assert Path(MODEL_VECTORS).read_text() == render_model()


def test_requantisation_edge_cases():
    for case in DATA["requantisation"]:
        assert requant(case["z"], case["scale"], case["shift"], case["relu"]) == case["y"], case


def test_model_id():
    assert model_id().hex() == DATA["model"]["model_id"]


def test_pass_reproduces_every_activation_and_the_output():
    acts = full_pass()
    for index, expected in enumerate(DATA["activations"], start=1):
        assert acts[index].tolist() == expected
    assert acts[-1].tolist() == DATA["output"]
    assert LAYERS[-1]["scale"] is None  # raw int32 last layer, negatives kept
    assert np.min(acts[-1]) < -64 and np.max(np.abs(acts[-1])) > 64


def test_the_pass_exercises_ties_and_clamping():
    acts = full_pass()
    ties = clamped = 0
    for index, layer in enumerate(LAYERS[:-1]):
        z = acts[index] @ np.array(layer["w"], dtype=np.int64) + np.array(layer["b"])
        for j, (scale, shift) in enumerate(zip(layer["scale"], layer["shift"], strict=True)):
            if shift:
                p = z[:, j] * scale
                ties += int(np.sum(np.abs(p) % (1 << shift) == 1 << (shift - 1)))
        clamped += int(np.sum(np.abs(acts[index + 1]) == 64))
    assert ties >= 2 and clamped >= 10


def test_layer_roots_and_work_roots():
    acts = full_pass()
    r = DATA["r"]
    for index, (layer, vector) in enumerate(zip(LAYERS, DATA["layers"], strict=True)):
        rl, kk = slab_width(layer["k"], r)
        shape = [round16(M), round16(layer["n"]), kk, rl]
        assert vector["shape"] == shape
        a_root = rows_root(padded(acts[index], shape[0], kk))
        b_root = rows_root(padded(np.array(layer["w"]).T, shape[1], kk))
        dims = struct.pack("<IIIHH", *shape, 16)
        assert a_root.hex() == vector["a_root"]
        assert b_root.hex() == vector["b_root"]
        assert h(b"mmpow1/work", dims, a_root, b_root).hex() == vector["work_root"]


def test_unit_id_output_hash_and_commitments():
    acts = full_pass()
    unit = h(
        b"matmine/model-unit",
        bytes.fromhex(DATA["model"]["model_id"]),
        struct.pack("<IH", M, DATA["r"]),
        bytes.fromhex(DATA["layers"][0]["a_root"]),
    )
    assert unit.hex() == DATA["unit_id"]
    out = h(acts[-1].astype("<i4").tobytes())
    assert out.hex() == DATA["output_hash"]
    roots = [bytes.fromhex(layer["a_root"]) for layer in DATA["layers"][1:]]
    digest = h(b"matmine/model-commit", unit, struct.pack("<I", len(LAYERS)), *roots, out)
    assert digest.hex() == DATA["commitments"]


def test_audit_draws_and_cost():
    audit = DATA["audit"]
    seed = blake3(bytes.fromhex(DATA["commitments"]), key=bytes.fromhex(audit["pool_secret"]))
    seed_a = seed.digest()
    assert seed_a.hex() == audit["seed"]
    costs = [layer["k"] * layer["n"] for layer in LAYERS]
    pairs_total = len(LAYERS) * M
    stream = xof(seed_a, b"matmine/audit/draw", 8 * 64 * audit["draws"], 0)
    position = 0
    pairs: list[list[int]] = []
    for _ in range(audit["draws"]):
        while True:
            u = int.from_bytes(stream[position : position + 8], "little")
            position += 8
            if u < (1 << 64) - (1 << 64) % pairs_total:
                break
        pair = [(u % pairs_total) // M, (u % pairs_total) % M]
        if pair not in pairs:
            pairs.append(pair)
    assert pairs == audit["challenges"]
    assert sum(costs[layer] for layer, _ in pairs) == audit["cost"]
    # SPEC §12.12.7: c = max(floor(L), ⌊ppm·U / (10⁶·κ)⌋), floor(L) = 1 for L ≤ 4
    budget = audit["budget_ppm"] * M * sum(costs) // (10**6 * max(costs))
    assert audit["count"] == max(1, budget)
