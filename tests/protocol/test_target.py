"""Difficulty ↔ target ↔ compact bits, the ticket test and hashrate."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.target import (
    DIFF1_TARGET,
    MAX_DIGEST,
    bits_from_target,
    difficulty_from_bits,
    difficulty_from_target,
    hashrate,
    meets_target,
    share_macs,
    target_from_bits,
    target_from_difficulty,
    ticket_difficulty,
    ticket_limit,
)

DIFFS = st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(DIFFS)
def test_difficulty_target_round_trip(d):
    assert math.isclose(difficulty_from_target(target_from_difficulty(d)), d, rel_tol=1e-12)


@given(DIFFS)
def test_bits_round_trip_within_compact_precision(d):
    target = target_from_difficulty(d)
    bits = bits_from_target(target)
    decoded = target_from_bits(bits)
    assert decoded <= target
    assert (target - decoded) / target < 2**-15
    assert bits_from_target(decoded) == bits
    assert math.isclose(difficulty_from_bits(bits), d, rel_tol=2**-15)


@given(st.integers(min_value=1, max_value=2**300))
def test_bits_of_any_target_is_canonical(target):
    bits = bits_from_target(target)
    assert not bits & 0x00800000
    assert bits_from_target(target_from_bits(bits)) == bits


def test_difficulty_one():
    assert target_from_difficulty(1) == DIFF1_TARGET
    assert target_from_difficulty(0.5) == 2 * DIFF1_TARGET
    assert share_macs(1) == 2**32


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1", None, True])
def test_bad_difficulty(bad):
    with pytest.raises(ProtocolError):
        target_from_difficulty(bad)


@pytest.mark.parametrize("bits", [0, 0x04800001, 0x03000000, 2**32])
def test_bad_bits(bits):
    with pytest.raises(ProtocolError):
        target_from_bits(bits)


def test_ticket_limit_normalises_work_and_caps():
    t = target_from_difficulty(1)
    assert ticket_limit(t, 1024) == t * 256 * 1024
    assert ticket_limit(target_from_difficulty(1e-9), 65536) == MAX_DIGEST


def test_meets_target_boundary():
    t, k = target_from_difficulty(2.5), 512
    limit = ticket_limit(t, k)
    assert meets_target(limit.to_bytes(32, "little"), t, k)
    assert not meets_target((limit + 1).to_bytes(32, "little"), t, k)
    assert math.isclose(ticket_difficulty(limit.to_bytes(32, "little"), k), 2.5, rel_tol=1e-9)


def test_hashrate():
    assert hashrate([1.0, 2.0, 1.0], 4.0) == 2**32
    assert hashrate([5.0], 0) == 0.0
