"""PPLNS split: exact sums, window cut at N, unfilled windows, order."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool.pplns import PplnsPolicy, ShareScore, pplns_split

ADDRESSES = ["mmd1alice", "mmd1bob", "mmd1carol", "mmd1dave", "mmd1erin"]


def reference_split(shares, reward, fee_bps, factor):
    """An independent formulation: prefix sums over the list, each share clipped to N."""
    n = Fraction(factor)
    fee = reward * fee_bps // 10_000
    distributable = reward - fee
    contributions: dict[str, Fraction] = {}
    before = Fraction(0)
    for s in shares:
        score = Fraction(s.difficulty) / Fraction(s.network_difficulty)
        part = max(Fraction(0), min(score, n - before))
        if part > 0:
            contributions[s.address] = contributions.get(s.address, Fraction(0)) + part
        before += score
    total = sum(contributions.values(), Fraction(0))
    if total == 0:
        return {}, fee
    exact = {a: distributable * c / total for a, c in contributions.items()}
    return exact, fee


difficulties = st.one_of(
    st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.001, 0.1, 0.5, 1.0, 1.5, 3.0, 1024.0]),
).filter(lambda d: d > 0)
network_difficulties = st.one_of(
    st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 2.0, 10.0, 1e3, 1e6]),
).filter(lambda d: d > 0)


@st.composite
def histories(draw):
    """Share histories where the network difficulty changes now and then."""
    count = draw(st.integers(min_value=0, max_value=60))
    shares = []
    net = draw(network_difficulties)
    for _ in range(count):
        if draw(st.integers(0, 9)) == 0:
            net = draw(network_difficulties)
        shares.append(ShareScore(draw(st.sampled_from(ADDRESSES)), draw(difficulties), net))
    return shares


@settings(max_examples=300, deadline=None)
@given(
    shares=histories(),
    reward=st.integers(min_value=0, max_value=10**18),
    fee_bps=st.integers(min_value=0, max_value=10_000),
    factor=st.floats(min_value=1e-3, max_value=50, allow_nan=False),
)
@pytest.mark.slow
def test_split_is_exact_and_matches_reference(shares, reward, fee_bps, factor):
    split = pplns_split(iter(shares), reward, fee_bps, factor)
    assert sum(split.credits.values()) + split.fee + split.remainder == reward
    assert split.total == reward
    assert split.fee == reward * fee_bps // 10_000
    assert split.remainder >= 0
    assert all(isinstance(v, int) and v > 0 for v in split.credits.values())
    assert split.window_score <= Fraction(factor)

    exact, fee = reference_split(shares, reward, fee_bps, factor)
    assert split.fee == fee
    assert set(split.credits) <= set(exact)
    for address, value in exact.items():
        assert split.credits.get(address, 0) == math.floor(value)
    if exact:
        # Flooring loses less than one base unit per address in the window.
        assert split.remainder < len(exact)
    else:
        assert split.credits == {}
        assert split.remainder == reward - fee


def test_window_cut_exactly_at_n():
    shares = [
        ShareScore("mmd1alice", 1.5, 1.0),  # newest: all of its 1.5 counts
        ShareScore("mmd1bob", 1.0, 1.0),  # straddles N = 2: only 0.5 counts
        ShareScore("mmd1carol", 1.0, 1.0),  # outside the window
    ]
    split = pplns_split(shares, reward=2000, fee_bps=0, factor=2.0)
    assert split.credits == {"mmd1alice": 1500, "mmd1bob": 500}
    assert split.shares_used == 2
    assert split.window_score == 2
    assert split.remainder == 0


def test_share_exactly_filling_window_ends_it():
    shares = [ShareScore("mmd1alice", 2.0, 1.0), ShareScore("mmd1bob", 1.0, 1.0)]
    split = pplns_split(shares, reward=1000, fee_bps=0, factor=2.0)
    assert split.credits == {"mmd1alice": 1000}
    assert split.shares_used == 1


def test_unfilled_window_still_pays_whole_reward():
    shares = [ShareScore("mmd1alice", 0.125, 1.0), ShareScore("mmd1bob", 0.375, 1.0)]
    split = pplns_split(shares, reward=1_000_000, fee_bps=100, factor=2.0)
    assert split.fee == 10_000
    # 990_000 split 1:3 even though the window holds only 0.5 of N = 2.
    assert split.credits == {"mmd1alice": 247_500, "mmd1bob": 742_500}
    assert split.remainder == 0
    assert split.window_score == Fraction(1, 2)


def test_newest_first_order_is_respected():
    a_then_b = [ShareScore("mmd1alice", 2.0, 1.0), ShareScore("mmd1bob", 2.0, 1.0)]
    assert pplns_split(a_then_b, 100, 0).credits == {"mmd1alice": 100}
    assert pplns_split(list(reversed(a_then_b)), 100, 0).credits == {"mmd1bob": 100}


def test_network_difficulty_scales_score():
    # bob's share of difficulty 2 at network difficulty 2 scores 1, like alice's 1 at 1.
    shares = [ShareScore("mmd1alice", 1.0, 1.0), ShareScore("mmd1bob", 2.0, 2.0)]
    assert pplns_split(shares, 1000, 0, factor=10.0).credits == {
        "mmd1alice": 500,
        "mmd1bob": 500,
    }


def test_empty_window_goes_to_fee_account():
    split = pplns_split([], reward=5000, fee_bps=250)
    assert split == pplns_split(iter(()), reward=5000, fee_bps=250)
    assert split.credits == {}
    assert split.fee == 125
    assert split.remainder == 4875


def test_flooring_remainder_goes_to_fee_account():
    shares = [ShareScore(a, 1.0, 3.0) for a in ("mmd1alice", "mmd1bob", "mmd1carol")]
    split = pplns_split(shares, reward=1000, fee_bps=0, factor=2.0)
    assert split.credits == {"mmd1alice": 333, "mmd1bob": 333, "mmd1carol": 333}
    assert split.remainder == 1


def test_fractional_scores_do_not_round_in_float():
    # In float, 3e17 * 0.1 / (0.1 + 0.2) is not 1e17; the exact scores are exactly 1:2.
    shares = [ShareScore("mmd1alice", 0.1, 1.0), ShareScore("mmd1bob", 0.2, 1.0)]
    split = pplns_split(shares, reward=3 * 10**17, fee_bps=0, factor=10.0)
    assert int(3e17 * 0.1 / (0.1 + 0.2)) != 10**17
    assert split.credits == {"mmd1alice": 10**17, "mmd1bob": 2 * 10**17}
    assert split.remainder == 0


def test_stops_reading_at_the_window_edge():
    def shares():
        yield ShareScore("mmd1alice", 1.0, 1.0)
        yield ShareScore("mmd1bob", 1.0, 1.0)
        raise AssertionError("read past the window")

    assert pplns_split(shares(), 10, 0, 2.0).credits == {"mmd1alice": 5, "mmd1bob": 5}


@pytest.mark.parametrize(
    ("share", "reward", "fee_bps", "factor"),
    [
        (ShareScore("mmd1a", -1.0, 1.0), 10, 0, 2.0),
        (ShareScore("mmd1a", 0.0, 1.0), 10, 0, 2.0),
        (ShareScore("mmd1a", math.nan, 1.0), 10, 0, 2.0),
        (ShareScore("mmd1a", 1.0, 0.0), 10, 0, 2.0),
        (ShareScore("mmd1a", 1.0, math.inf), 10, 0, 2.0),
        (ShareScore("mmd1a", 1.0, 1.0), -1, 0, 2.0),
        (ShareScore("mmd1a", 1.0, 1.0), 10, 10_001, 2.0),
        (ShareScore("mmd1a", 1.0, 1.0), 10, -1, 2.0),
        (ShareScore("mmd1a", 1.0, 1.0), 10, 0, 0.0),
        (ShareScore("mmd1a", 1.0, 1.0), 10, 0, math.nan),
        (ShareScore("mmd1a", 1.0, 1.0), 10.5, 0, 2.0),
    ],
)
def test_bad_input_is_a_clear_error(share, reward, fee_bps, factor):
    with pytest.raises(ValueError):
        pplns_split([share], reward, fee_bps, factor)


def test_policy_validates():
    assert PplnsPolicy(factor=1.5, fee_bps=50, fee_address="mmd1x").fee_bps == 50
    with pytest.raises(ValueError):
        PplnsPolicy(fee_bps=20_000)
    with pytest.raises(ValueError):
        PplnsPolicy(factor=-1.0)
