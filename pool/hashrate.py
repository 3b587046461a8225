"""Hashrate from accepted shares: exponentially weighted over 1m / 5m / 1h / 1d (as ckpool).

Each accepted share of difficulty D proves D·2³² MACs on average. For every window τ the
meter keeps ``S = Σ D·2³² · exp(−(now − tᵢ)/τ)``; ``S / τ`` is an exponentially weighted
average of the MAC rate. Until the meter has run for a few τ that average is biased low (the
stream is only ``t`` seconds old), so :meth:`HashrateMeter.rates` divides by
``1 − exp(−t/τ)``: a new miner's 1-day rate is right after minutes, not after a day.
Sans-IO: the caller passes the (monotonic) clock in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from protocol.target import MACS_PER_DIFF1

WINDOWS: dict[str, float] = {"1m": 60.0, "5m": 300.0, "1h": 3600.0, "1d": 86400.0}
"""The averaging windows, name → time constant in seconds."""

_DEFAULT_WINDOWS: Mapping[str, float] = MappingProxyType(dict(WINDOWS))  # shared, read-only


class HashrateMeter:
    """EWMA hashrate in MAC/s over :data:`WINDOWS` from accepted share difficulties."""

    __slots__ = ("_decayed", "_indices", "_names", "_taus", "_updated", "last_share", "start",
                 "total_difficulty", "windows")  # fmt: skip

    def __init__(self, now: float, windows: Mapping[str, float] | None = None) -> None:
        self.windows = _DEFAULT_WINDOWS if windows is None else MappingProxyType(dict(windows))
        if not self.windows or any(not tau > 0 for tau in self.windows.values()):
            raise ValueError("hashrate windows must be positive time constants")
        self.start = now
        self.last_share: float | None = None
        self.total_difficulty = 0.0
        self._updated = now
        # The windows as parallel lists (a share is a few float operations, no dict work):
        # ``_decayed[i]`` is S of window ``_names[i]`` at ``_updated``.
        self._names = tuple(self.windows)
        self._taus = tuple(self.windows.values())
        self._decayed = [0.0] * len(self._taus)
        self._indices = range(len(self._taus))

    def add(self, difficulty: float, now: float) -> None:
        """Count an accepted share of ``difficulty`` at ``now``."""
        if not (math.isfinite(difficulty) and difficulty > 0):
            raise ValueError(f"share difficulty must be positive, got {difficulty!r}")
        macs = difficulty * MACS_PER_DIFF1
        dt = now - self._updated
        decayed, taus, exp = self._decayed, self._taus, math.exp
        if dt > 0:  # (same tick, or a clock that went backwards: no decay, no time travel)
            for i in self._indices:
                decayed[i] = decayed[i] * exp(-dt / taus[i]) + macs
            self._updated = now
        else:
            for i in self._indices:
                decayed[i] += macs
        self.total_difficulty += difficulty
        last = self.last_share
        self.last_share = now if last is None or now > last else last

    def rates(self, now: float) -> dict[str, float]:
        """MAC/s per window at ``now`` (0.0 for a meter that has seen nothing)."""
        age = max(now - self.start, 0.0)
        dt = max(now - self._updated, 0.0)
        out: dict[str, float] = {}
        for name, tau, decayed in zip(self._names, self._taus, self._decayed, strict=True):
            coverage = -math.expm1(-age / tau)  # 1 − e^(−age/τ): share of the window seen
            if coverage <= 0:
                out[name] = 0.0
                continue
            out[name] = decayed * math.exp(-dt / tau) / tau / coverage
        return out
