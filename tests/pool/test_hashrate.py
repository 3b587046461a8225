"""HashrateMeter against synthetic Poisson share streams of known MAC rate."""

from __future__ import annotations

import math
import random

import pytest

from pool.hashrate import WINDOWS, HashrateMeter
from protocol.target import MACS_PER_DIFF1, hashrate


def feed(
    meter: HashrateMeter,
    rng: random.Random,
    rate_macs: float,
    difficulty: float,
    start: float,
    seconds: float,
) -> tuple[float, list[float]]:
    """Shares of a miner doing ``rate_macs`` at ``difficulty`` for ``seconds``."""
    now = start
    diffs: list[float] = []
    for _ in range(1_000_000):  # bounded; the time limit ends it long before
        now += rng.expovariate(rate_macs / (difficulty * MACS_PER_DIFF1))
        if now > start + seconds:
            break
        meter.add(difficulty, now)
        diffs.append(difficulty)
    return start + seconds, diffs


RATE = 40e9  # 40 GMAC/s
DIFF = 20.0  # ≈ 0.47 shares/s


def test_steady_stream_converges_in_every_window() -> None:
    rng = random.Random(1)
    meter = HashrateMeter(now=0.0)
    end, diffs = feed(meter, rng, RATE, DIFF, 0.0, 3 * 3600)
    rates = meter.rates(end)
    assert set(rates) == set(WINDOWS)
    # Relative noise of the τ-window EWMA ≈ 1/√(2λτ): ~13 % for 1m at λ≈0.47/s.
    assert rates["1m"] == pytest.approx(RATE, rel=0.45)
    assert rates["5m"] == pytest.approx(RATE, rel=0.2)
    assert rates["1h"] == pytest.approx(RATE, rel=0.07)
    assert rates["1d"] == pytest.approx(RATE, rel=0.05)
    # The 1d window of a 3-hour-old meter is the plain average so far, bias-corrected.
    assert rates["1d"] == pytest.approx(hashrate(diffs, end), rel=0.03)


@pytest.mark.parametrize("seed", range(5))
def test_young_meter_is_not_biased_low(seed: int) -> None:
    rng = random.Random(seed)
    meter = HashrateMeter(now=1000.0)
    end, _ = feed(meter, rng, RATE, DIFF, 1000.0, 600)
    rates = meter.rates(end)
    # Ten minutes in, the hour and day windows already read the true rate (≈ 280 shares).
    assert rates["1h"] == pytest.approx(RATE, rel=0.2)
    assert rates["1d"] == pytest.approx(RATE, rel=0.2)


def test_mixed_difficulties_measure_macs_not_shares() -> None:
    rng = random.Random(7)
    meter = HashrateMeter(now=0.0)
    t, _ = feed(meter, rng, RATE, 5.0, 0.0, 1800)
    t, _ = feed(meter, rng, RATE, 80.0, t, 1800)
    assert meter.rates(t)["1h"] == pytest.approx(RATE, rel=0.1)


def test_rate_step_is_followed_fast_by_short_windows_only() -> None:
    rng = random.Random(3)
    meter = HashrateMeter(now=0.0)
    t, _ = feed(meter, rng, RATE, DIFF, 0.0, 2 * 3600)
    t, _ = feed(meter, rng, 4 * RATE, DIFF, t, 600)
    rates = meter.rates(t)
    assert rates["1m"] == pytest.approx(4 * RATE, rel=0.3)
    assert rates["5m"] == pytest.approx(4 * RATE * (1 - 0.75 * math.exp(-2)), rel=0.25)
    assert 1.1 * RATE < rates["1h"] < 2.0 * RATE


def test_silence_decays_short_windows() -> None:
    rng = random.Random(4)
    meter = HashrateMeter(now=0.0)
    t, _ = feed(meter, rng, RATE, DIFF, 0.0, 3600)
    later = meter.rates(t + 600)
    assert later["1m"] < 1e-3 * RATE  # e^-10 of the rate
    # Decays with e^(-Δt/τ); the bias correction also relaxes as the meter ages.
    coverage = [1 - math.exp(-age / 3600) for age in (t, t + 600)]
    expected = meter.rates(t)["1h"] * math.exp(-600 / 3600) * coverage[0] / coverage[1]
    assert later["1h"] == pytest.approx(expected)
    assert later["1d"] > 0.5 * RATE


def test_empty_meter_and_bad_input() -> None:
    meter = HashrateMeter(now=5.0)
    assert meter.rates(5.0) == dict.fromkeys(WINDOWS, 0.0)
    assert meter.rates(100.0) == dict.fromkeys(WINDOWS, 0.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            meter.add(bad, 6.0)
    assert meter.total_difficulty == 0.0 and meter.last_share is None
    with pytest.raises(ValueError):
        HashrateMeter(now=0.0, windows={"bad": 0.0})


def test_clock_going_backwards_does_not_corrupt() -> None:
    meter = HashrateMeter(now=0.0)
    meter.add(1.0, 100.0)
    meter.add(1.0, 50.0)  # out of order: counted, no negative decay
    rates = meter.rates(100.0)
    assert all(v > 0 for v in rates.values())
    assert meter.total_difficulty == 2.0 and meter.last_share == 100.0
    assert rates["1d"] == pytest.approx(2 * MACS_PER_DIFF1 / 100.0, rel=0.01)


def test_rates_are_the_closed_form_sums_of_every_window() -> None:
    """Each window's rate is Σ D·2³²·e^(−(now−tᵢ)/τ) / τ / (1 − e^(−age/τ)), shares at the
    same tick included; a share from a clock that went back counts undecayed."""
    windows = {"a": 7.0, "b": 60.0, "c": 900.0}
    meter = HashrateMeter(10.0, windows)
    shares = [(11.0, 2.0), (11.0, 0.5), (12.5, 1.0), (40.0, 3.0), (41.0, 0.25)]
    for t, d in shares:
        meter.add(d, t)
    now = 45.0
    rates = meter.rates(now)
    assert list(rates) == ["a", "b", "c"]
    for name, tau in windows.items():
        total = sum(d * MACS_PER_DIFF1 * math.exp(-(now - t) / tau) for t, d in shares)
        expected = total / tau / -math.expm1(-(now - 10.0) / tau)
        assert rates[name] == pytest.approx(expected, rel=1e-12)
    meter.add(1.0, 30.0)  # before the last share: counted as at 41.0, not decayed further
    later = meter.rates(now)
    for name, tau in windows.items():
        extra = MACS_PER_DIFF1 * math.exp(-(now - 41.0) / tau) / tau
        assert later[name] - rates[name] == pytest.approx(extra / -math.expm1(-35.0 / tau))
    assert meter.last_share == 41.0 and meter.total_difficulty == pytest.approx(7.75)
