"""The model format, its id and the exact integer semantics (SPEC §12.12.1–§12.12.2)."""

import io

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.model import (
    Model,
    check_input,
    layer_forward,
    load_model,
    model_arrays,
    model_from_arrays,
    reference_pass,
    requantise,
    save_model,
)

BIG_Z = (1 << 28) + (1 << 30)
SCALE_MAX = (1 << 31) - 1


def arrays_of(dims, relu=None, raw_last=False, seed=0):
    """Arrays of a random model with layer sizes ``dims`` = [(k, n), ...]."""
    rng = np.random.default_rng(seed)
    arrays = {"relu": np.array(relu if relu is not None else [True] * len(dims), dtype=bool)}
    for index, (k, n) in enumerate(dims):
        arrays[f"w{index}"] = rng.integers(-64, 65, (k, n)).astype(np.int8)
        arrays[f"b{index}"] = rng.integers(-5000, 5000, n).astype(np.int32)
        if not (raw_last and index == len(dims) - 1):
            arrays[f"scale{index}"] = rng.integers(1 << 29, 1 << 31, n).astype(np.int32)
            arrays[f"shift{index}"] = np.full(n, 38, dtype=np.int32)
    return arrays


def one_unit_model(z: int, scale: int, shift: int | None, relu: bool) -> tuple[Model, np.ndarray]:
    """One output whose pre-activation is exactly ``z``, and the input row that gives it:
    the bias when ``|z| ≤ 2³⁰``, else ``±2³⁰`` plus ``64·64`` per input of a long row."""
    bias = z if abs(z) <= 1 << 30 else (1 << 30 if z > 0 else -(1 << 30))
    k = max(1, abs(z - bias) // 4096)
    assert bias + (4096 * k if z - bias else 0) * (1 if z > 0 else -1) == z
    arrays = {
        "w0": np.full((k, 1), 64 if z > 0 else -64, dtype=np.int8),
        "b0": np.array([bias], dtype=np.int32),
        "relu": np.array([relu]),
    }
    if shift is not None:
        arrays["scale0"] = np.array([scale], dtype=np.int32)
        arrays["shift0"] = np.array([shift], dtype=np.int32)
    x = np.full((1, k), 64 if z != bias else 0, dtype=np.int8)
    return model_from_arrays(arrays), x


def run_one(z: int, scale: int = 1, shift: int | None = 0, relu: bool = False) -> int:
    model, x = one_unit_model(z, scale, shift, relu)
    return int(reference_pass(model, x).output[0, 0])


@pytest.mark.parametrize(
    ("z", "scale", "shift", "y"),
    [
        (5, 1, 1, 3),  # 2.5 → 3: half away from zero (half to even would give 2)
        (-5, 1, 1, -3),
        (1, 1, 1, 1),
        (-1, 1, 1, -1),
        (4, 1, 1, 2),
        (6, 1, 2, 2),  # 1.5 → 2
        (-6, 1, 2, -2),
        (5, 1, 2, 1),  # 1.25 → 1
        (-7, 1, 2, -2),  # -1.75 → -2
        (-10, 1, 2, -3),  # -2.5 → -3
        (7, 3, 3, 3),  # 21/8 = 2.625 → 3
        (128, 1, 1, 64),  # exactly 64: kept
        (130, 1, 1, 64),  # 65 → clamped
        (-128, 1, 1, -64),
        (-130, 1, 1, -64),
        (1000, 1, 0, 64),  # shift 0: no rounding, clamped
        (-1000, 1, 0, -64),
        (BIG_Z, SCALE_MAX, 0, 64),  # the largest product fits int64
        (-BIG_Z, SCALE_MAX, 0, -64),
        (BIG_Z, SCALE_MAX, 62, 1),
        (-BIG_Z, SCALE_MAX, 62, -1),
    ],
)
def test_requantisation_rounds_half_away_and_clamps(z, scale, shift, y):
    assert run_one(z, scale, shift) == y


def test_requantise_matches_python_integers_on_random_and_extreme_inputs():
    rng = np.random.default_rng(7)
    z = rng.integers(-BIG_Z, BIG_Z + 1, 3000)
    scale = rng.integers(1, SCALE_MAX + 1, 3000)
    shift = rng.integers(0, 63, 3000)
    z[:4], scale[:4], shift[:4] = [BIG_Z, -BIG_Z, BIG_Z, -BIG_Z], SCALE_MAX, [0, 0, 62, 1]
    got = requantise(z, scale, shift)
    for zi, si, hi, gi in zip(
        z.tolist(), scale.tolist(), shift.tolist(), got.tolist(), strict=True
    ):
        p = zi * si
        want = p if hi == 0 else (1 if p >= 0 else -1) * ((abs(p) + (1 << (hi - 1))) >> hi)
        assert gi == want


def test_relu_on_a_requantised_layer():
    assert run_one(-5, relu=True) == 0
    assert run_one(-130, 1, 1, relu=True) == 0
    assert run_one(9, relu=True) == 9


def test_raw_last_layer_is_int32_with_or_without_relu():
    model, x = one_unit_model(-BIG_Z, 1, None, relu=False)
    out = reference_pass(model, x).output
    assert out.dtype == np.int32 and int(out[0, 0]) == -BIG_Z
    assert run_one(-BIG_Z, shift=None, relu=True) == 0
    assert run_one(BIG_Z, shift=None, relu=True) == BIG_Z
    assert model.int32_output


def test_pass_is_the_int64_product_layer_by_layer():
    model = model_from_arrays(arrays_of([(40, 24), (24, 33), (33, 10)], [True, False, False], True))
    x = np.random.default_rng(3).integers(-64, 65, (20, 40)).astype(np.int8)
    run = reference_pass(model, x)
    assert [a.shape for a in run.activations] == [(20, 40), (20, 24), (20, 33)]
    assert all(a.dtype == np.int8 for a in run.activations)
    assert run.output.dtype == np.int32 and run.output.shape == (20, 10)
    assert int(run.activations[1].min()) >= 0  # ReLU
    assert int(run.activations[2].min()) < 0  # no ReLU on layer 1
    last = model.layers[-1]
    z = run.activations[-1].astype(np.int64) @ last.w.astype(np.int64) + last.bias
    assert np.array_equal(run.output, z)
    # rows are independent: one row alone gives the same row
    alone = reference_pass(model, x[5:6]).output
    assert np.array_equal(alone[0], run.output[5])
    assert np.array_equal(layer_forward(model.layers[0], x[:3]), run.activations[1][:3])


def test_save_load_round_trip_and_id_independent_of_the_file():
    arrays = arrays_of([(16, 8), (8, 4)], raw_last=True)
    model = model_from_arrays(arrays)
    assert load_model(save_model(model)).model_id == model.model_id
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **dict(reversed(list(arrays.items()))))
    assert load_model(compressed.getvalue()).model_id == model.model_id
    assert set(model_arrays(model)) == set(arrays)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a["w0"].__setitem__((3, 2), a["w0"][3, 2] ^ 1),
        lambda a: a["b1"].__setitem__(0, a["b1"][0] + 1),
        lambda a: a["scale0"].__setitem__(1, a["scale0"][1] - 1),
        lambda a: a["shift0"].__setitem__(7, 37),
        lambda a: a["relu"].__setitem__(1, not a["relu"][1]),
    ],
)
def test_model_id_changes_with_every_field(change):
    arrays = arrays_of([(16, 8), (8, 4)], raw_last=True)
    before = model_from_arrays(arrays).model_id
    arrays = {key: value.copy() for key, value in arrays.items()}
    change(arrays)
    assert model_from_arrays(arrays).model_id != before


def _mutations():
    def drop(key):
        return lambda a: a.pop(key)

    def put(key, value):
        return lambda a: a.__setitem__(key, value)

    def poke(key, index, value):
        return lambda a: a[key].__setitem__(index, value)

    return [
        (drop("relu"), "missing array relu"),
        (put("bogus", np.zeros(1)), "unknown array 'bogus'"),
        (put("w01", np.zeros((1, 1), np.int8)), "unknown array 'w01'"),
        (drop("w1"), "layer 1 has no w1"),
        (drop("w2"), "b2 names no layer (the last is w1)"),
        (drop("b1"), "layer 1 has no b1"),
        (drop("scale0"), "layer 0 has no scale0"),
        (drop("shift1"), "layer 1 has no shift1"),
        (drop("shift2"), "layer 2 has no shift2"),
        (put("w5", np.zeros((4, 4), np.int8)), "layer 3 has no w3"),
        (put("w0", np.zeros((16, 8), np.int16)), "w0 must be int8"),
        (poke("w0", (0, 0), 65), "w0 has entries outside [-64, 64]"),
        (poke("w1", (2, 1), -65), "w1 has entries outside [-64, 64]"),
        (put("b0", np.zeros(8, np.int64)), "b0 must be int32"),
        (put("b0", np.zeros(7, np.int32)), "b0 must have shape (8,)"),
        (poke("b2", 0, (1 << 30) + 1), "b2 has entries outside"),
        (poke("scale0", 0, 0), "scale0 has entries outside [1, 2147483647]"),
        (poke("shift1", 3, 63), "shift1 has entries outside [0, 62]"),
        (poke("shift1", 3, -1), "shift1 has entries outside [0, 62]"),
        (put("relu", np.array([1, 1, 1], np.uint8)), "relu must be bool"),
        (put("relu", np.array([True, True])), "relu must have shape (3,)"),
        (put("w1", np.zeros((9, 6), np.int8)), "w1 has 9 rows, layer 0 gives 8 outputs"),
        (put("w0", np.zeros((16, 8, 1), np.int8)), "w0 must be a non-empty 2-D matrix"),
        (put("w0", np.zeros((0, 8), np.int8)), "w0 must be a non-empty 2-D matrix"),
    ]


@pytest.mark.parametrize(("mutate", "message"), _mutations())
def test_validation_errors_are_one_line_and_name_the_array(mutate, message):
    arrays = {key: value.copy() for key, value in arrays_of([(16, 8), (8, 6), (6, 4)]).items()}
    mutate(arrays)
    with pytest.raises(ProtocolError) as caught:
        model_from_arrays(arrays)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_too_many_layers_and_too_wide():
    arrays = arrays_of([(2, 2)] * 65)
    with pytest.raises(ProtocolError, match="65 layers, at most 64"):
        model_from_arrays(arrays)
    wide = arrays_of([(2, 2)])
    wide["w0"] = np.zeros((65537, 1), np.int8)
    wide["b0"], wide["scale0"], wide["shift0"] = (np.ones(1, np.int32) for _ in range(3))
    with pytest.raises(ProtocolError, match="at most 65536"):
        model_from_arrays(wide)


def test_unreadable_files_are_refused_in_one_line():
    for data in (b"", b"not a zip at all", b"PK\x03\x04broken"):
        with pytest.raises(ProtocolError, match=r"not a readable \.npz") as caught:
            load_model(data)
        assert "\n" not in str(caught.value)
    single = io.BytesIO()
    np.save(single, np.zeros((2, 2), np.int8))
    with pytest.raises(ProtocolError, match=r"a single \.npy array, not an \.npz archive"):
        load_model(single.getvalue())
    pickled = io.BytesIO()
    arrays = arrays_of([(4, 4)])
    arrays["w0"] = np.array([[object()]], dtype=object)
    np.savez(pickled, **arrays)
    with pytest.raises(ProtocolError, match=r"not a readable \.npz"):
        load_model(pickled.getvalue())


def test_arrays_are_sized_from_their_headers_before_they_are_inflated():
    bomb = io.BytesIO()  # 64 MiB of zeros compress to about 64 KiB
    arrays = arrays_of([(2, 2)])
    arrays["w0"] = np.zeros((8192, 8192), np.int8)
    np.savez_compressed(bomb, **arrays)
    assert len(bomb.getvalue()) < 1 << 20
    with pytest.raises(ProtocolError, match=r"its arrays hold 671088\d\d bytes, at most 1048576"):
        load_model(bomb.getvalue(), max_array_bytes=1 << 20)
    small = save_model(model_from_arrays(arrays_of([(16, 8)])))
    assert load_model(small, max_array_bytes=1 << 20).input_width == 16


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 15), np.int8), "have 15 entries, the model takes 16"),
        (np.zeros((2, 16), np.int16), "input must be int8"),
        (np.full((2, 16), 65, np.int8), "input has entries outside"),
        (np.zeros((0, 16), np.int8), "non-empty 2-D batch"),
        (np.zeros(16, np.int8), "non-empty 2-D batch"),
    ],
)
def test_bad_inputs(x, message):
    model = model_from_arrays(arrays_of([(16, 8)]))
    with pytest.raises(ProtocolError, match=message):
        check_input(model, x)
    with pytest.raises(ProtocolError, match=message):
        reference_pass(model, x)
