"""Vardiff against simulated Poisson share streams from miners of fixed hashrate."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from pool.vardiff import Vardiff, VardiffConfig
from protocol.target import MACS_PER_DIFF1

SWEEP_SECONDS = 15.0  # how often the simulated pool runs the idle sweep


@dataclass
class Run:
    """What a simulated session saw: every change as (time, new difficulty)."""

    changes: list[tuple[float, float]] = field(default_factory=list)
    shares: int = 0
    end: float = 0.0


def ideal_difficulty(rate_macs: float, cfg: VardiffConfig) -> float:
    return rate_macs * cfg.target_seconds / MACS_PER_DIFF1


def simulate(
    vd: Vardiff,
    rate_macs: float,
    rng: random.Random,
    *,
    max_shares: int,
    max_seconds: float,
    start: float = 0.0,
) -> Run:
    """Drive ``vd`` with shares of a miner doing ``rate_macs`` MAC/s until either bound.

    Share intervals are Exp(D·2³² / rate) at the difficulty in force when mining the
    share; the idle sweep runs every SWEEP_SECONDS of simulated time.
    """
    run = Run()
    now = start
    next_sweep = start + SWEEP_SECONDS
    while run.shares < max_shares and now < start + max_seconds:
        arrival = now + rng.expovariate(rate_macs / (vd.difficulty * MACS_PER_DIFF1))
        while next_sweep < arrival and next_sweep < start + max_seconds:
            new = vd.check_idle(next_sweep)
            if new is not None:
                run.changes.append((next_sweep, new))
                # Memorylessness: the miner restarts its wait at the new difficulty.
                arrival = next_sweep + rng.expovariate(rate_macs / (vd.difficulty * MACS_PER_DIFF1))
            next_sweep += SWEEP_SECONDS
        if arrival >= start + max_seconds:
            now = start + max_seconds
            break
        now = arrival
        run.shares += 1
        new = vd.record_share(now)
        if new is not None:
            run.changes.append((now, new))
    run.end = now
    return run


CFG = VardiffConfig(min_difficulty=1e-6, max_difficulty=1e9)
RATE = 50e9  # 50 GMAC/s: ideal difficulty ≈ 116 at 10 s per share


def within(d: float, ideal: float, factor: float) -> bool:
    return ideal / factor <= d <= ideal * factor


@pytest.mark.parametrize("start_factor", [1e-4, 1e-2, 1e2, 1e4])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_from_far_above_and_below(start_factor: float, seed: int) -> None:
    rng = random.Random(seed)
    ideal = ideal_difficulty(RATE, CFG)
    vd = Vardiff(CFG, ideal * start_factor, now=0.0)
    run = simulate(vd, RATE, rng, max_shares=400, max_seconds=3 * 3600)
    # Each retarget moves by up to max_step (4×): 1e4 needs ≥ 7 steps; allow a few more.
    assert len(run.changes) <= math.ceil(math.log(1e4, CFG.max_step)) + 6
    assert within(vd.difficulty, ideal, 2.0), (vd.difficulty, ideal, run.changes)
    # And every step was bounded.
    previous = ideal * start_factor
    for _, new in run.changes:
        assert 1 / CFG.max_step - 1e-12 <= new / previous <= CFG.max_step + 1e-12
        previous = new


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_converged_session_does_not_oscillate(seed: int) -> None:
    rng = random.Random(seed)
    ideal = ideal_difficulty(RATE, CFG)
    vd = Vardiff(CFG, ideal * 30, now=0.0)
    warmup = simulate(vd, RATE, rng, max_shares=300, max_seconds=4 * 3600)
    assert within(vd.difficulty, ideal, 2.0)
    # ~3000 more shares (≈ 8 simulated hours): a handful of corrections at most.
    run = simulate(vd, RATE, rng, max_shares=3000, max_seconds=12 * 3600, start=warmup.end)
    assert run.shares > 2000
    assert len(run.changes) <= 4, run.changes
    assert all(within(d, ideal, 2.0) for _, d in run.changes)


def test_mean_interval_close_to_target_after_convergence() -> None:
    rng = random.Random(5)
    ideal = ideal_difficulty(RATE, CFG)
    vd = Vardiff(CFG, ideal / 50, now=0.0)
    warmup = simulate(vd, RATE, rng, max_shares=300, max_seconds=4 * 3600)
    run = simulate(vd, RATE, rng, max_shares=2000, max_seconds=12 * 3600, start=warmup.end)
    mean_interval = (run.end - warmup.end) / run.shares
    assert 0.6 * CFG.target_seconds <= mean_interval <= 1.6 * CFG.target_seconds


def test_follows_a_hashrate_change() -> None:
    rng = random.Random(8)
    vd = Vardiff(CFG, ideal_difficulty(RATE, CFG), now=0.0)
    first = simulate(vd, RATE, rng, max_shares=200, max_seconds=3600)
    simulate(vd, RATE * 20, rng, max_shares=600, max_seconds=3600, start=first.end)
    assert within(vd.difficulty, ideal_difficulty(RATE * 20, CFG), 2.0)


def test_dead_band_keeps_difficulty_when_on_target() -> None:
    vd = Vardiff(CFG, 100.0, now=0.0)
    # Exactly on target, and then 25 % fast (inside ±30 %): never a change.
    for i in range(1, 201):
        assert vd.record_share(i * CFG.target_seconds) is None
    t = 200 * CFG.target_seconds
    for i in range(1, 201):
        assert vd.record_share(t + i * 0.8 * CFG.target_seconds) is None
    assert vd.difficulty == 100.0


def test_regular_fast_shares_raise_by_bounded_step() -> None:
    vd = Vardiff(CFG, 100.0, now=0.0)
    results = [vd.record_share(i * 0.01) for i in range(1, CFG.retarget_shares + 1)]
    assert results[:-1] == [None] * (CFG.retarget_shares - 1)
    assert results[-1] == pytest.approx(100.0 * CFG.max_step)
    assert vd.difficulty == pytest.approx(400.0)


def test_respects_min_and_max() -> None:
    cfg = VardiffConfig(min_difficulty=1.0, max_difficulty=1000.0)
    vd = Vardiff(cfg, 5000.0, now=0.0)
    assert vd.difficulty == 1000.0  # start clamped
    rng = random.Random(3)
    # Far too fast a miner: pinned at max.
    simulate(vd, 1e18, rng, max_shares=200, max_seconds=3600)
    assert vd.difficulty == 1000.0
    # Far too slow a miner: pinned at min, never below.
    vd = Vardiff(cfg, 2.0, now=0.0)
    run = simulate(vd, 1e6, rng, max_shares=50, max_seconds=6 * 3600)
    assert vd.difficulty == 1.0
    assert all(d >= 1.0 for _, d in run.changes)


def test_suggest_is_a_floor_clamped_to_max() -> None:
    cfg = VardiffConfig(min_difficulty=1.0, max_difficulty=1e6)
    vd = Vardiff(cfg, 10.0, now=0.0)
    assert vd.suggest(500.0, now=0.0) == 500.0
    assert vd.difficulty == 500.0
    # A slow miner would be lowered towards ~0.1, but not below its suggestion.
    rng = random.Random(4)
    simulate(vd, 1e8, rng, max_shares=100, max_seconds=6 * 3600)
    assert vd.difficulty == 500.0
    # A suggestion below the current difficulty changes nothing now.
    assert vd.suggest(100.0, now=1.0) is None
    # Above max: clamped.
    assert vd.suggest(1e9, now=2.0) == 1e6
    with pytest.raises(ValueError):
        vd.suggest(0.0)
    with pytest.raises(ValueError):
        vd.suggest(float("nan"))


def test_idle_sweep_lowers_silent_miner() -> None:
    vd = Vardiff(CFG, 100.0, now=0.0)
    assert vd.check_idle(CFG.idle_seconds - 1) is None
    first = vd.check_idle(CFG.idle_seconds + 1)
    assert first == pytest.approx(100.0 / CFG.max_step)
    # The next sweep waits another idle period from the change.
    assert vd.check_idle(CFG.idle_seconds + 2) is None
    second = vd.check_idle(2 * CFG.idle_seconds + 2)
    assert second == pytest.approx(100.0 / CFG.max_step**2)


def test_idle_sweep_leaves_active_miner_alone() -> None:
    vd = Vardiff(CFG, 100.0, now=0.0)
    for i in range(1, 7):
        vd.record_share(i * CFG.target_seconds)
    assert vd.check_idle(6 * CFG.target_seconds + 5) is None


def test_lazy_start_and_weighted_stale_difficulty_shares() -> None:
    vd = Vardiff(CFG, 100.0)  # no clock yet: the first share opens the window
    assert vd.record_share(1_000_000.0) is None
    assert vd.estimated_interval(1_000_000.0) is None
    # Shares of an old job at a quarter of the difficulty count a quarter each.
    vd.record_share(1_000_010.0, difficulty=25.0)
    assert vd.estimated_interval(1_000_010.0) == pytest.approx(40.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_seconds": 0},
        {"variance": 1.0},
        {"max_step": 1.0},
        {"min_difficulty": 10.0, "max_difficulty": 1.0},
        {"retarget_shares": 0},
        {"window_shares": 4, "retarget_shares": 8},
        {"idle_seconds": float("inf")},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        VardiffConfig(**kwargs)


def test_bad_difficulties_are_rejected() -> None:
    with pytest.raises(ValueError):
        Vardiff(CFG, -1.0)
    vd = Vardiff(CFG, 1.0, now=0.0)
    with pytest.raises(ValueError):
        vd.record_share(1.0, difficulty=0.0)
    with pytest.raises(ValueError):
        vd.suggest(True)  # type: ignore[arg-type]
