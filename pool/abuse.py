"""Abuse limits: message rates, escalation for bad shares, temporary IP bans.

Everything here is sans-IO (the caller passes the clock) and bounded in memory:

- :class:`RateLimiter` — a token bucket per connection (``rate`` per second, ``burst``).
- :class:`ShareJudge` — the last ``window`` share outcomes of a connection; when at least
  ``min_shares`` were seen and the invalid fraction reaches ``ratio``, it escalates one
  step per verdict: resend work → ``client.reconnect`` → drop → ban the IP (ckpool's
  ladder). A good stretch (the window back under the ratio) resets the ladder.
- :class:`BanList` — IP → expiry, at most ``max_entries`` (the oldest ban is forgotten
  first when full), and a per-IP connection counter, equally bounded.
- :class:`CheckBudget` — a token bucket per IP for full share checks (the pool's costly
  work), so no IP can take more than its share of the check threads (SPEC §12.9).
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque


class RateLimiter:
    """Token bucket: ``allow(now)`` is False once a client exceeds ``rate``/s over ``burst``.

    ``refused`` counts refusals since the bucket was last full (a flood's length).
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self.refused = 0

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= self.burst:
            self.refused = 0  # calm again: forget earlier refusals
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        return False


class Escalation(enum.IntEnum):
    """What to do with a connection whose shares are mostly invalid."""

    NONE = 0
    RESEND_WORK = 1
    RECONNECT = 2
    DROP = 3
    BAN = 4


class ShareJudge:
    """Judges a connection by the fraction of invalid shares among its recent submits."""

    def __init__(self, window: int, min_shares: int, ratio: float) -> None:
        self.min_shares = min(min_shares, window)
        self.ratio = ratio
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._invalid = 0
        self.level = Escalation.NONE

    @property
    def invalid_fraction(self) -> float:
        return self._invalid / len(self._outcomes) if self._outcomes else 0.0

    def record(self, valid: bool) -> Escalation:
        """Note one share; return the escalation step due now (NONE most of the time)."""
        if len(self._outcomes) == self._outcomes.maxlen and not self._outcomes[0]:
            self._invalid -= 1
        self._outcomes.append(valid)
        if not valid:
            self._invalid += 1
        if len(self._outcomes) < self.min_shares:
            return Escalation.NONE
        if self.invalid_fraction < self.ratio:
            self.level = Escalation.NONE
            return Escalation.NONE
        if valid:
            return Escalation.NONE
        self.level = Escalation(min(self.level + 1, Escalation.BAN))
        # Judge the next step on fresh evidence: forget the window, keep the level.
        self._outcomes.clear()
        self._invalid = 0
        return self.level


class BanList:
    """Temporarily banned IPs and live connections per IP, both bounded in size."""

    def __init__(self, ban_seconds: float, max_entries: int) -> None:
        self.ban_seconds = ban_seconds
        self.max_entries = max_entries
        self._bans: OrderedDict[str, float] = OrderedDict()
        self._connections: dict[str, int] = {}

    def ban(self, ip: str, now: float) -> None:
        self._bans.pop(ip, None)
        self._bans[ip] = now + self.ban_seconds
        while len(self._bans) > self.max_entries:
            self._bans.popitem(last=False)

    def is_banned(self, ip: str, now: float) -> bool:
        until = self._bans.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._bans[ip]
            return False
        return True

    def __len__(self) -> int:
        return len(self._bans)

    def connections(self, ip: str) -> int:
        """Live connections counted for ``ip``."""
        return self._connections.get(ip, 0)

    def connect(self, ip: str, limit: int | None = None) -> bool:
        """Count a new connection from ``ip``; False (and not counted) at ``limit`` or when
        the per-IP table is full."""
        count = self._connections.get(ip, 0)
        if (limit is not None and count >= limit) or (
            count == 0 and len(self._connections) >= self.max_entries
        ):
            return False
        self._connections[ip] = count + 1
        return True

    def disconnect(self, ip: str) -> None:
        count = self._connections.get(ip, 0) - 1
        if count > 0:
            self._connections[ip] = count
        else:
            self._connections.pop(ip, None)


class CheckBudget:
    """Full share checks per IP: ``rate`` per second over ``burst``.

    A session earns one check beyond its IP's budget with each acknowledged share (at most
    ``EARNED_MAX`` kept), so a miner that proves work is checked even while another client
    behind its IP floods; a flooder gets one bogus check per real share. At most
    ``max_entries`` IPs and sessions are remembered (the longest unused is forgotten first).
    """

    EARNED_MAX = 4

    def __init__(self, rate: float, burst: int, max_entries: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, RateLimiter] = OrderedDict()
        self._earned: OrderedDict[bytes, int] = OrderedDict()

    def allow(self, ip: str, session: bytes, now: float) -> bool:
        """Spend one check of ``ip``'s budget (or one ``session`` earned); False if none."""
        bucket = self._buckets.pop(ip, None) or RateLimiter(self.rate, self.burst, now)
        self._buckets[ip] = bucket
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        if bucket.allow(now):
            return True
        earned = self._earned.pop(session, 0)
        if earned:
            self._keep(session, earned - 1)
        return earned > 0

    def earn(self, session: bytes) -> None:
        """``session`` had a share acknowledged."""
        self._keep(session, min(self._earned.pop(session, 0) + 1, self.EARNED_MAX))

    def _keep(self, session: bytes, earned: int) -> None:
        self._earned[session] = earned
        while len(self._earned) > self.max_entries:
            self._earned.popitem(last=False)
