"""Layers as mmpow-1 work: shapes, padding, roots, commitments (SPEC §12.12.3–§12.12.4)."""

import numpy as np
import pytest

from protocol.denoise import denoise
from protocol.errors import ProtocolError
from protocol.hashing import H
from protocol.header import Header
from protocol.merkle import rows_root
from protocol.model import model_from_arrays, reference_pass, requantise
from protocol.model_work import (
    UnitRecord,
    commitments_digest,
    layer_shape,
    layer_workload,
    next_activation,
    padded_activation,
    unit_id,
    weight_roots,
)
from protocol.noise import pow_seed
from protocol.ticket import mine_header, verify_ticket
from protocol.workload import Shape, work_root


def make_model(dims, raw_last=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"relu": np.array([index % 2 == 0 for index in range(len(dims))])}
    for index, (k, n) in enumerate(dims):
        arrays[f"w{index}"] = rng.integers(-64, 65, (k, n)).astype(np.int8)
        arrays[f"b{index}"] = rng.integers(-5000, 5000, n).astype(np.int32)
        if not (raw_last and index == len(dims) - 1):
            arrays[f"scale{index}"] = rng.integers(1 << 29, 1 << 31, n).astype(np.int32)
            arrays[f"shift{index}"] = np.full(n, 38, dtype=np.int32)
    return model_from_arrays(arrays)


def batch(rows, width, seed=1):
    return np.random.default_rng(seed).integers(-64, 65, (rows, width)).astype(np.int8)


@pytest.mark.parametrize(
    ("k", "n", "m", "r", "shape"),
    [
        (40, 24, 20, 64, Shape(32, 32, 128, 32)),  # r 32 pads least; m, n to 16
        (300, 16, 16, 64, Shape(16, 16, 320, 64)),  # 300 → 320 with r 64 (384 with 128)
        (300, 16, 16, 32, Shape(16, 16, 320, 32)),  # never wider than the preferred r
        (1, 1, 1, 64, Shape(16, 16, 128, 32)),
        (4096, 17, 33, 512, Shape(48, 32, 4096, 512)),
    ],
)
def test_layer_shape(k, n, m, r, shape):
    model = make_model([(k, n)])
    assert layer_shape(model, 0, m, r) == shape


def test_padding_is_zero_and_roots_are_the_padded_rows():
    model = make_model([(40, 24), (24, 10)])
    x = batch(20, 40)
    workload = layer_workload(model, 0, x)
    s = workload.shape
    assert np.array_equal(workload.a[:20, :40], x)
    assert not workload.a[20:].any() and not workload.a[:, 40:].any()
    assert np.array_equal(workload.bt[:24, :40], model.layers[0].w.T)
    assert not workload.bt[24:].any() and not workload.bt[:, 40:].any()
    assert workload.a_root == rows_root(padded_activation(x, s))
    assert workload.work_root == work_root(s, workload.a_root, workload.b_root)


def test_weight_roots_do_not_depend_on_m_and_match_the_workloads():
    model = make_model([(40, 24), (24, 10)])
    roots = weight_roots(model)
    run = reference_pass(model, batch(50, 40))
    for index in range(model.depth):
        assert layer_workload(model, index, run.activations[index]).b_root == roots[index]
    assert weight_roots(model, 32) == roots  # both layers choose r = 32 anyway
    wide = make_model([(300, 16)])  # r 64 and r 32 both pad 300 to 320: same rows, same root
    assert weight_roots(wide, 64) == weight_roots(wide, 32)
    assert layer_shape(wide, 0, 16, 64) != layer_shape(wide, 0, 16, 32)


def test_a_mined_layer_denoises_to_the_product_that_feeds_the_next_layer():
    """The worker's path of SPEC §12.12.4 step 3: mine one header of the layer's
    work_root, denoise its noisy product, requantise: exactly the reference A_1."""
    model = make_model([(100, 20), (20, 10)])
    x = batch(16, 100)
    run = reference_pass(model, x)
    workload = layer_workload(model, 0, x)
    header = Header(1, 7, H(b"prev"), H(b"coinbase"), workload.work_root, 1_800_000_000, 0x1D010000)
    work = mine_header(header.encode(), workload)
    s = workload.shape
    product = denoise(work.noisy_product, workload.a, workload.bt, pow_seed(header.encode()), s.r)
    layer = model.layers[0]
    assert not product[:, 20:].any()
    assert layer.scale is not None and layer.shift is not None
    q = requantise(product[:16, :20].astype(np.int64) + layer.bias, layer.scale, layer.shift)
    a1 = np.clip(np.maximum(q, 0), -64, 64).astype(np.int8)
    assert np.array_equal(a1, run.activations[1])
    assert np.array_equal(next_activation(model, 0, product, 16), run.activations[1])
    # the next layer's workload is built from it, and its product gives the output
    second = layer_workload(model, 1, a1)
    exact = second.a.astype(np.int64) @ second.bt.astype(np.int64).T
    assert np.array_equal(next_activation(model, 1, exact, 16), run.output)
    with pytest.raises(ProtocolError, match="needs 16x10"):
        next_activation(model, 1, exact[:, :8], 16)
    # a share's ticket is checked from 16 rows of the padded A_l and of Wᵀ (SPEC §10)
    digest = verify_ticket(header.encode(), s, (0, 1), workload.a[:16], workload.bt[16:32])
    assert digest == work.digest(0, 1)


def test_unit_id_binds_model_rows_r_and_inputs():
    model = make_model([(40, 24), (24, 10)])
    x = batch(20, 40)
    base = unit_id(model, x)
    assert unit_id(model, x, 32) != base
    other = x.copy()
    other[19, 39] ^= 1
    assert unit_id(model, other) != base
    # a zero row and a padding row have the same leaf: m is in the id
    zero_tail = np.vstack([x, np.zeros((1, 40), np.int8)])
    assert unit_id(model, zero_tail) != base
    assert unit_id(make_model([(40, 24), (24, 10)], seed=5), x) != base


def test_unit_record_and_commitments():
    model = make_model([(40, 24), (24, 33), (33, 10)])
    x = batch(20, 40)
    run = reference_pass(model, x)
    roots = tuple(layer_workload(model, i, run.activations[i]).a_root for i in (1, 2))
    unit = UnitRecord(model, x, 64, roots, run.output)
    assert unit.macs == 20 * (40 * 24 + 24 * 33 + 33 * 10)
    assert unit.digest == commitments_digest(
        unit.unit_id, roots, H(run.output.astype("<i4").tobytes())
    )
    swapped = UnitRecord(model, x, 64, roots[::-1], run.output)
    assert swapped.digest != unit.digest
    changed = run.output.copy()
    changed[0, 0] += 1
    assert UnitRecord(model, x, 64, roots, changed).digest != unit.digest
    with pytest.raises(ProtocolError, match="commits 2 activation roots, got 1"):
        UnitRecord(model, x, 64, roots[:1], run.output)
    with pytest.raises(ProtocolError, match="output must be int32 20x10"):
        UnitRecord(model, x, 64, roots, run.output.astype(np.int8))
    with pytest.raises(ProtocolError, match="output must be int32 20x10"):
        UnitRecord(model, x, 64, roots, run.output[:19])
    with pytest.raises(ProtocolError, match="32 bytes"):
        commitments_digest(unit.unit_id, (b"short",), unit.output_hash)
