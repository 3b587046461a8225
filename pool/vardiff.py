"""Per-session variable difficulty: sans-IO, the caller passes the clock in.

A :class:`Vardiff` watches the times of a session's accepted shares and proposes a new
share difficulty when the observed share interval is off target. The pool turns a
proposal into a new job (``clean = false``) carrying that difficulty (SPEC §12.4).

The estimate is the Poisson maximum-likelihood rate: ``n`` shares (weighted by their
difficulty relative to the current one) seen over ``t`` seconds since the window opened.
The window opens at every difficulty change and keeps at most ``window_shares`` shares, so
after convergence the estimate keeps sharpening instead of being recomputed from a handful
of noisy intervals. A change is proposed only when the estimate is outside ``±variance``
of the target *and* outside the sampling noise of ``n`` shares (``confidence / √n`` in log
space): far-off difficulties move fast (every step up to ``max_step``), a converged one
stays put instead of chasing Poisson noise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class VardiffConfig:
    """Vardiff tuning. All times are seconds; difficulties are share difficulties."""

    target_seconds: float = 10.0
    """Desired mean time between a session's shares."""
    retarget_shares: int = 8
    """Re-evaluate after this many new shares since the last evaluation."""
    retarget_seconds: float = 30.0
    """...or after this long since the last evaluation, whichever comes first."""
    variance: float = 0.3
    """Dead band: an estimated interval within ±variance of the target never changes D."""
    max_step: float = 4.0
    """A single change multiplies or divides the difficulty by at most this factor."""
    min_difficulty: float = 1e-6
    """Lowest difficulty ever assigned."""
    max_difficulty: float = 1e12
    """Highest difficulty ever assigned (also caps a miner's suggestion)."""
    idle_seconds: float = 60.0
    """A session silent this long has its difficulty lowered by the idle sweep."""
    window_shares: int = 64
    """Most recent shares kept for the rate estimate (older ones age out)."""
    confidence: float = 2.0
    """Extra dead band, in standard deviations of the log-rate estimate (≈ 1/√n)."""

    def __post_init__(self) -> None:
        positive = {
            "target_seconds": self.target_seconds,
            "retarget_seconds": self.retarget_seconds,
            "min_difficulty": self.min_difficulty,
            "max_difficulty": self.max_difficulty,
            "idle_seconds": self.idle_seconds,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"vardiff {name} must be a positive number, got {value!r}")
        if self.retarget_shares < 1 or self.window_shares < self.retarget_shares:
            raise ValueError("vardiff needs 1 <= retarget_shares <= window_shares")
        if not 0 <= self.variance < 1:
            raise ValueError(f"vardiff variance must be in [0, 1), got {self.variance!r}")
        if not self.max_step > 1:
            raise ValueError(f"vardiff max_step must be > 1, got {self.max_step!r}")
        if self.min_difficulty > self.max_difficulty:
            raise ValueError("vardiff min_difficulty exceeds max_difficulty")
        if not self.confidence >= 0:
            raise ValueError(f"vardiff confidence must be >= 0, got {self.confidence!r}")


def _check_difficulty(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


class Vardiff:
    """Variable difficulty of one mining session.

    ``record_share`` and ``check_idle`` return the new difficulty when a change is due
    (and adopt it), or ``None``. ``suggest`` applies ``mining.suggest_difficulty``.
    """

    __slots__ = (
        "_floor", "_last_check", "_last_share", "_shares", "_since_check", "_weight",
        "_window_start", "config", "difficulty",
    )  # fmt: skip

    def __init__(
        self, config: VardiffConfig, start_difficulty: float, now: float | None = None
    ) -> None:
        """``now`` opens the first window; without it the first share (or idle check) does."""
        self.config = config
        self._floor = config.min_difficulty
        self.difficulty = self._clamp(_check_difficulty(start_difficulty, "start difficulty"))
        self._window_start: float | None = None
        self._last_check = self._last_share = self._weight = 0.0
        self._since_check = 0
        self._shares: deque[tuple[float, float]] | None = None  # made at the first share
        self._open_window(now)

    # -- public -------------------------------------------------------------------------

    def suggest(self, difficulty: float, now: float | None = None) -> float | None:
        """Honour a miner's suggested difficulty as a floor (clamped to the pool's range).

        Returns the new difficulty if the current one had to rise to the floor.
        """
        wanted = _check_difficulty(difficulty, "suggested difficulty")
        cfg = self.config
        self._floor = min(max(wanted, cfg.min_difficulty), cfg.max_difficulty)
        if self.difficulty < self._floor:
            return self._change(self._floor, now)
        return None

    def record_share(self, now: float, difficulty: float | None = None) -> float | None:
        """Note an accepted share at ``now``; return the new difficulty if a change is due.

        ``difficulty`` is the share's own (job) difficulty; shares of an older job still in
        flight after a change are weighted by their difficulty relative to the current one.
        """
        weight = 1.0
        if difficulty is not None:
            weight = _check_difficulty(difficulty, "share difficulty") / self.difficulty
        if self._window_start is None:
            self._open_window(now)  # the first share only starts the clock
            return None
        self._last_share = max(self._last_share, now)
        if self._shares is None:
            self._shares = deque()
        self._shares.append((now, weight))
        self._weight += weight
        while len(self._shares) > self.config.window_shares:
            dropped_time, dropped_weight = self._shares.popleft()
            self._weight -= dropped_weight
            self._window_start = max(self._window_start, dropped_time)
        self._since_check += 1
        due = self._since_check >= self.config.retarget_shares or (
            now - self._last_check >= self.config.retarget_seconds
        )
        if not due:
            return None
        self._since_check = 0
        self._last_check = now
        return self._retarget(now)

    def check_idle(self, now: float) -> float | None:
        """Idle sweep: lower the difficulty of a session silent for ``idle_seconds``."""
        cfg = self.config
        if self._window_start is None:
            self._open_window(now)
            return None
        if now - max(self._last_share, self._window_start) < cfg.idle_seconds:
            return None
        # Rate over the window including the silence, with the same dead band as a
        # retarget: a long Poisson gap in an otherwise steady stream changes nothing. With
        # no shares at all the ratio is 0 and the step bound makes it "divide by max_step".
        ratio = cfg.target_seconds * self._weight / (now - self._window_start)
        if ratio > 0 and -math.log(ratio) <= self._band():
            return None
        return self._change(self.difficulty * max(ratio, 1 / cfg.max_step), now)

    def idle_at(self) -> float | None:
        """The earliest time :meth:`check_idle` can change anything (None: no window yet)."""
        if self._window_start is None:
            return None
        return max(self._last_share, self._window_start) + self.config.idle_seconds

    def estimated_interval(self, now: float) -> float | None:
        """Current estimate of the mean share interval at the current difficulty."""
        if self._window_start is None or self._weight <= 0 or now <= self._window_start:
            return None
        return (now - self._window_start) / self._weight

    # -- internals ----------------------------------------------------------------------

    def _retarget(self, now: float) -> float | None:
        cfg = self.config
        assert self._window_start is not None, "a retarget needs an open window"
        elapsed = now - self._window_start
        if elapsed <= 0 or self._weight <= 0:
            # A burst within one clock tick: the rate is huge, step up by the maximum.
            ratio = cfg.max_step if self._weight > 0 else 1.0
        else:
            ratio = cfg.target_seconds * self._weight / elapsed
        log_ratio = math.log(ratio)
        if abs(log_ratio) <= self._band():
            return None
        # Step to the near end of the estimate's noise interval, not to the point estimate:
        # a change triggered by an unlucky run of shares does not overshoot the other way.
        log_step = math.copysign(abs(log_ratio) - self._noise(), log_ratio)
        step = min(max(math.exp(log_step), 1 / cfg.max_step), cfg.max_step)
        return self._change(self.difficulty * step, now)

    def _noise(self) -> float:
        """``confidence`` standard deviations of the log-rate estimate from the window."""
        return self.config.confidence / math.sqrt(max(self._weight, 1.0))

    def _band(self) -> float:
        """Half-width, in log space, of "close enough": variance plus sampling noise."""
        return math.log1p(self.config.variance) + self._noise()

    def _change(self, wanted: float, now: float | None) -> float | None:
        new = self._clamp(wanted)
        if new == self.difficulty:
            return None
        self.difficulty = new
        self._open_window(now)
        return new

    def _clamp(self, difficulty: float) -> float:
        return min(max(difficulty, self._floor), self.config.max_difficulty)

    def _open_window(self, now: float | None) -> None:
        self._window_start = now
        self._last_check = now if now is not None else 0.0
        self._last_share = now if now is not None else 0.0
        self._since_check = 0
        self._shares = None
        self._weight = 0.0
