"""``deploy/model_demo.py`` on a subset of the digits: a real MLP trained and quantised
(``deploy/quantise.py``), its test rows inferred through a real pool and a real BLAS worker,
``Y`` equal to ``reference_pass`` bit for bit and the int8 accuracy within a few points of
the float network's."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
sys.path.insert(0, str(DEPLOY))

import model_demo  # noqa: E402
import quantise  # noqa: E402

from protocol.model import reference_pass  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits() -> model_demo.Digits:
    return model_demo.train((256, 256), 96, seed=0)


def test_the_quantised_model_is_sound(digits: model_demo.Digits) -> None:
    model = digits.model
    assert [(layer.k, layer.n) for layer in model.layers] == [(64, 256), (256, 256), (256, 10)]
    assert [layer.relu for layer in model.layers] == [True, True, False]
    assert model.int32_output and all(layer.requantised for layer in model.layers[:-1])
    y = reference_pass(model, digits.x_test).output
    int8_accuracy = float(np.mean(y.argmax(axis=1) == digits.y_test))
    assert digits.float_accuracy > 0.9
    assert abs(int8_accuracy - digits.float_accuracy) <= 0.03
    hidden = reference_pass(model, digits.x_test).activations[1:]
    assert all(int(a.max()) == 64 and int(a.min()) == 0 for a in hidden)  # the range in use


def test_input_codes_and_multipliers_are_exact() -> None:
    assert quantise.quantise_input(np.array([[0, 1, 16]])).tolist() == [[0, 4, 64]]
    for m in (1e-9, 3e-4, 0.5, 1.0, 7.25):
        scale, shift = quantise.multiplier(m)
        assert 1 << 30 <= scale < 1 << 31
        assert abs(scale / 2.0**shift - m) <= m * 2.0**-30
    with pytest.raises(ValueError):
        quantise.multiplier(0.0)


def test_the_demo_runs_the_batch_through_the_pool_bit_exact(
    digits: model_demo.Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(
        unit_rows=32, budget_ppm=10**6, difficulty=2.0**-14, threads=1, timeout=90.0
    )
    import trio

    outcome = trio.run(model_demo.run_demo, tmp_path, digits.model, digits.x_test, args)
    assert np.array_equal(outcome.y, reference_pass(digits.model, digits.x_test).output)
    assert outcome.units >= 2 and len(outcome.audits) == outcome.units
    assert all(verdict == (True, "") for verdict in outcome.audits)
    assert outcome.credited > 0 and outcome.voided == 0
    assert model_demo.report(digits, outcome)
    printed = capsys.readouterr().out
    assert "bit for bit: True" in printed and "audits passed" in printed
    wrong = outcome.y.copy()
    wrong[5, 3] ^= 1  # one bit off in one logit: the demo must say so
    outcome.y = wrong
    assert not model_demo.report(digits, outcome)


def test_the_demo_exits_zero_end_to_end(tmp_path: Path) -> None:
    assert model_demo.main(["--rows", "64", "--unit-rows", "32", "--workdir", str(tmp_path)]) == 0


def test_the_int8_logits_track_the_float_network() -> None:
    """A random ReLU MLP with biases that matter: the int8 logits are the float ones times
    one scale, within 5 % (a wrong bias or activation scale is far off)."""
    rng = np.random.default_rng(3)
    widths = (64, 256, 256, 10)
    coefs = [rng.standard_normal((k, n)) / np.sqrt(k) for k, n in itertools.pairwise(widths)]
    intercepts = [rng.standard_normal(n) * 0.5 for n in widths[1:]]
    pixels = rng.integers(0, 17, (300, 64))
    features = pixels / 16.0
    model = quantise.quantise_mlp(coefs, intercepts, features)
    logits = features
    for index, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        logits = logits @ w + b
        if index < len(coefs) - 1:
            logits = np.maximum(logits, 0.0)
    y = reference_pass(model, quantise.quantise_input(pixels)).output.astype(np.float64)
    scale = float(np.sum(y * logits) / np.sum(logits * logits))
    error = np.linalg.norm(y - scale * logits) / np.linalg.norm(scale * logits)
    assert scale > 0 and error < 0.05, error  # 0.024 here
