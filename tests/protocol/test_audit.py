"""The usefulness audit of a model-job unit (SPEC §12.12.6–§12.12.7)."""

import dataclasses

import numpy as np
import pytest

from protocol.audit import (
    RANK_GAP,
    AuditFailure,
    Challenge,
    ChallengeAnswer,
    Openings,
    RowOpening,
    audit_cost,
    audit_seed,
    catch_probability,
    challenge_count,
    challenges_for,
    check_audit,
    check_challenge,
    deterrence_floor,
    draw_challenges,
    faked_fraction,
    min_unit_rows,
)
from protocol.denoise import denoise
from protocol.errors import ProtocolError
from protocol.hashing import H
from protocol.header import Header
from protocol.merkle import RowTree
from protocol.model import layer_forward, model_from_arrays, reference_pass
from protocol.model_work import UnitRecord, layer_workload, next_activation
from protocol.noise import pow_seed
from protocol.ticket import mine_header

DIMS = [(40, 24), (24, 33), (33, 10)]
ROWS = 20
SECRET = H(b"test pool secret")


def make_model(dims=DIMS, raw_last=True):
    rng = np.random.default_rng(0)
    arrays = {"relu": np.array([True] + [False] * (len(dims) - 1))}
    for index, (k, n) in enumerate(dims):
        arrays[f"w{index}"] = rng.integers(-64, 65, (k, n)).astype(np.int8)
        arrays[f"b{index}"] = rng.integers(-5000, 5000, n).astype(np.int32)
        if not (raw_last and index == len(dims) - 1):
            arrays[f"scale{index}"] = rng.integers(1 << 29, 1 << 31, n).astype(np.int32)
            arrays[f"shift{index}"] = np.full(n, 38, dtype=np.int32)
    return model_from_arrays(arrays)


MODEL = make_model()
X = np.random.default_rng(1).integers(-64, 65, (ROWS, 40)).astype(np.int8)


def worker_unit(activations, output, model=MODEL, x=X):
    """The unit as a worker that computed ``activations`` (A_0..A_{L-1}) commits it."""
    roots = tuple(
        layer_workload(model, index, activations[index]).a_root for index in range(1, model.depth)
    )
    return UnitRecord(model, x, 64, roots, output)


def honest():
    run = reference_pass(MODEL, X)
    return list(run.activations), run.output


def every_pair(model=MODEL, rows=ROWS):
    return [Challenge(layer, row) for layer in range(model.depth) for row in range(rows)]


def failures(unit, openings, challenges):
    out = set()
    for challenge in challenges:
        try:
            check_challenge(unit, challenge, openings.answer(challenge))
        except AuditFailure:
            out.add(challenge)
    return out


def test_an_honest_unit_passes_every_challenge():
    activations, output = honest()
    unit = worker_unit(activations, output)
    openings = Openings(unit, activations)
    challenges = every_pair()
    check_audit(unit, challenges, [openings.answer(c) for c in challenges])


def test_a_faked_activation_row_is_caught_exactly_when_its_pair_is_challenged():
    activations, _ = honest()
    activations[2] = activations[2].copy()
    activations[2][7, 3] += 1  # the worker fakes row 7 of A_2 and carries on honestly
    output = layer_forward(MODEL.layers[2], activations[2])
    unit = worker_unit(activations, output)
    openings = Openings(unit, activations)
    assert failures(unit, openings, every_pair()) == {Challenge(1, 7)}
    with pytest.raises(AuditFailure, match=r"\(layer 1, row 7\): A_2 row is not layer 1 of A_1"):
        check_challenge(unit, Challenge(1, 7), openings.answer(Challenge(1, 7)))


def test_a_faked_output_row_is_caught():
    activations, output = honest()
    output = output.copy()
    output[12, 0] -= 1
    unit = worker_unit(activations, output)
    openings = Openings(unit, activations)
    assert failures(unit, openings, every_pair()) == {Challenge(2, 12)}
    with pytest.raises(AuditFailure, match="the delivered output row is not layer 2"):
        check_challenge(unit, Challenge(2, 12), openings.answer(Challenge(2, 12)))


def test_a_whole_layer_skipped_fails_every_challenge_of_that_layer():
    activations, _ = honest()
    activations[1] = np.zeros_like(activations[1])  # cheap to mine (SPEC §12.12.5)
    activations[2] = layer_forward(MODEL.layers[1], activations[1])
    output = layer_forward(MODEL.layers[2], activations[2])
    unit = worker_unit(activations, output)
    bad = failures(unit, Openings(unit, activations), every_pair())
    assert bad == {Challenge(0, row) for row in range(ROWS)}
    assert faked_fraction(MODEL, ROWS, sorted(bad)) == pytest.approx(1 / 3)


def _answer(openings, challenge, **changes):
    answer = openings.answer(challenge)
    return dataclasses.replace(answer, **changes)


def test_openings_must_match_the_committed_roots():
    activations, output = honest()
    unit = worker_unit(activations, output)
    openings = Openings(unit, activations)
    c = Challenge(1, 4)
    good = openings.answer(c)
    assert good.a_row is not None and good.next_row is not None
    row = bytearray(good.a_row.row)
    row[0] ^= 1
    cases = [
        (dict(a_row=RowOpening(bytes(row), good.a_row.proof)), "does not match the committed"),
        (dict(a_row=RowOpening(good.a_row.row[:-1], good.a_row.proof)), "127 bytes, expected 128"),
        (dict(a_row=RowOpening(good.a_row.row, good.a_row.proof[:-1])), "proof must be 5 hashes"),
        (dict(a_row=openings.answer(Challenge(1, 5)).a_row), "does not match the committed"),
        (dict(next_row=good.a_row), "does not match the committed"),
        (dict(a_row=None), "A_1 row not opened"),
        (dict(next_row=None), "A_2 row not opened"),
    ]
    for changes, message in cases:
        with pytest.raises(AuditFailure, match=message):
            check_challenge(unit, c, _answer(openings, c, **changes))


def test_committed_rows_with_bad_padding_or_entries_fail():
    activations, output = honest()
    for poison in ("padding", "entry"):
        unit = worker_unit(activations, output)
        openings = Openings(unit, activations)
        matrix = openings.padded[0]  # padded A_1, committed by a dishonest worker
        if poison == "padding":
            matrix[3, 30] = 1
        else:
            matrix[3, 0] = 100
        openings.trees[0] = RowTree(matrix)
        unit = dataclasses.replace(unit, a_roots=(openings.trees[0].root, unit.a_roots[1]))
        with pytest.raises(AuditFailure, match="outside \\[-64, 64\\] or non-zero padding"):
            check_challenge(unit, Challenge(1, 3), openings.answer(Challenge(1, 3)))


def test_challenges_outside_the_unit_and_answer_count():
    activations, output = honest()
    unit = worker_unit(activations, output)
    empty = ChallengeAnswer(None, None)
    for c in (Challenge(3, 0), Challenge(0, ROWS), Challenge(-1, 0)):
        with pytest.raises(AuditFailure, match="outside the unit"):
            check_challenge(unit, c, empty)
    with pytest.raises(AuditFailure, match="1 answers to 2 challenges"):
        check_audit(unit, [Challenge(0, 0), Challenge(0, 1)], [empty])


def test_draws_depend_on_the_secret_and_every_commitment():
    activations, output = honest()
    unit = worker_unit(activations, output)
    seed = audit_seed(SECRET, unit.digest)
    draws = draw_challenges(MODEL, ROWS, seed, 40)
    assert draws == draw_challenges(MODEL, ROWS, seed, 40)
    five = draw_challenges(MODEL, ROWS, seed, 5)  # a prefix: repeats are dropped
    assert 1 <= len(five) <= 5 and draws[: len(five)] == five
    assert len(set(draws)) == len(draws)
    assert all(0 <= c.layer < 3 and 0 <= c.row < ROWS for c in draws)
    other_secret = draw_challenges(MODEL, ROWS, audit_seed(H(b"other"), unit.digest), 40)
    assert other_secret != draws
    changed = output.copy()
    changed[0, 0] += 1
    other_output = worker_unit(activations, changed)
    assert draw_challenges(MODEL, ROWS, audit_seed(SECRET, other_output.digest), 40) != draws
    with pytest.raises(ProtocolError, match="32 bytes"):
        audit_seed(b"short", unit.digest)


def test_draws_are_uniform_over_pairs_whatever_the_layer_costs():
    model = make_model([(64, 16), (16, 256), (256, 4)])  # costs 1024, 4096, 1024 per row
    counts = np.zeros((3, 8))
    trials = 1200
    for t in range(trials):
        for c in draw_challenges(model, 8, H(b"w", t.to_bytes(4, "little")), 1):
            counts[c.layer, c.row] += 1
    expected = trials / 24
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_catch_probability_matches_a_monte_carlo_of_the_real_draws():
    """Fake 3 pairs; the share of audit seeds whose draws hit one of them is
    1 − (1 − φ)^c within 4.5 standard deviations (bounded: 1500 seeds per c)."""
    faked = {Challenge(0, 3), Challenge(1, 11), Challenge(2, 19)}
    phi = faked_fraction(MODEL, ROWS, sorted(faked))
    assert phi == pytest.approx(3 / (3 * ROWS))
    for draws in (1, 5, 20):
        want = catch_probability(phi, draws)
        trials = 1500
        caught = sum(
            bool(
                faked
                & set(
                    draw_challenges(
                        MODEL, ROWS, H(b"mc", bytes([draws]), t.to_bytes(4, "little")), draws
                    )
                )
            )
            for t in range(trials)
        )
        sigma = np.sqrt(want * (1 - want) / trials)
        assert abs(caught / trials - want) < 4.5 * sigma + 1e-9, (draws, caught, want)


def test_the_rank_gap_attack_is_caught_at_least_as_often_as_it_pays():
    """SPEC §12.12.7: zeroing a layer's activation pays at most RANK_GAP of that layer's
    mining and needs ≥ 1 − RANK_GAP of its rows faked; at the floor's draws the chance of
    being caught is at least RANK_GAP, whatever L."""
    for depth in range(1, 65):
        c = deterrence_floor(depth)
        assert catch_probability((1 - RANK_GAP) / depth, c) >= RANK_GAP - 1e-12
        assert c == 1 or catch_probability((1 - RANK_GAP) / depth, c - 1) < RANK_GAP
    assert [deterrence_floor(d) for d in (1, 4, 5, 8, 64)] == [1, 1, 2, 3, 18]


def test_catch_probability_and_challenges_for():
    assert catch_probability(0.3, 0) == 0
    assert catch_probability(1.0, 1) == 1
    assert catch_probability(0.1, 1) == pytest.approx(0.1)
    assert catch_probability(0.1, 16) == pytest.approx(1 - 0.9**16)
    for phi, confidence in ((0.01, 0.99), (0.1, 0.5), (0.5, 0.999), (0.001, 0.9)):
        c = challenges_for(phi, confidence)
        assert catch_probability(phi, c) >= confidence > catch_probability(phi, c - 1)
    with pytest.raises(ValueError):
        catch_probability(1.5, 1)


@pytest.mark.parametrize(
    "dims",
    [DIMS, [(512, 512)] * 3, [(4096, 64), (64, 4096), (4096, 16)], [(256, 256)] * 8],
)
def test_challenge_count_keeps_the_cost_within_the_budget(dims):
    model = make_model(dims)
    kappa = max(k * n for k, n in dims)
    floor = deterrence_floor(len(dims))
    m_min = min_unit_rows(model)
    for rows in (m_min, m_min + 1, 3 * m_min + 7, 20 * m_min):
        c = challenge_count(model, rows)
        units_macs = rows * model.macs_per_row
        assert c >= floor and c * kappa * 10**6 <= 100 * units_macs  # the worst draws fit
        draws = draw_challenges(model, rows, H(b"cost", rows.to_bytes(4, "little")), c)
        assert audit_cost(model, draws) * 10**4 <= units_macs
    # one row fewer than m_min: the floor's draws may cost more than the budget
    assert challenge_count(model, m_min - 1) == floor
    assert floor * kappa * 10**6 > 100 * (m_min - 1) * model.macs_per_row
    assert challenge_count(model, 20 * m_min) >= 20 * floor


def test_min_unit_rows_for_equal_layers():
    assert min_unit_rows(make_model([(512, 512)] * 3)) == 3334  # ⌈10⁴ / 3⌉
    assert min_unit_rows(make_model([(512, 512)] * 3), challenges=3) == 10_000
    assert min_unit_rows(make_model([(256, 256)] * 8)) == 3750  # 3 draws: ⌈3·10⁴ / 8⌉


def test_a_mined_pass_passes_its_audit():
    """The whole worker path of SPEC §12.12.4 in sans-IO: each layer mined as one header of
    its work_root, denoised, requantised into the next; then delivery, draws and answers."""
    activations = [X]
    for index in range(MODEL.depth):
        workload = layer_workload(MODEL, index, activations[-1])
        header = Header(
            1, 9, H(b"prev"), H(b"cb", bytes([index])), workload.work_root, 1, 0x1D010000
        )
        work = mine_header(header.encode(), workload)
        product = denoise(
            work.noisy_product, workload.a, workload.bt, pow_seed(header.encode()), workload.shape.r
        )
        activations.append(next_activation(MODEL, index, product, ROWS))
    output = activations.pop()
    reference = reference_pass(MODEL, X)
    assert np.array_equal(output, reference.output)
    unit = worker_unit(activations, output)
    openings = Openings(unit, activations)
    draws = draw_challenges(MODEL, ROWS, audit_seed(SECRET, unit.digest), 30)
    check_audit(unit, draws, [openings.answer(c) for c in draws])
