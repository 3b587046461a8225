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
- :class:`AbusePolicy` — the pool's one place for the ladder's last step: it counts the
  drops of each IP (strikes) and bans an IP whose drops outweigh its honest sessions.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pool.session")

# An IP is banned only when its drops (within limits.ban_seconds) outweigh its honest
# sessions (live ones with an accepted share) this many times over (SPEC §12.9).
HONEST_SESSION_WEIGHT = 4


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
        bucket = self._buckets.get(ip)
        if bucket is not None:
            self._buckets.move_to_end(ip)  # (the same order as popping and adding it again)
        else:
            bucket = self._buckets[ip] = RateLimiter(self.rate, self.burst, now)
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
        earned = self._earned.get(session)
        if earned is None:
            self._keep(session, 1)
        else:  # (no new entry: nothing to forget)
            if earned < self.EARNED_MAX:
                self._earned[session] = earned + 1
            self._earned.move_to_end(session)

    def _keep(self, session: bytes, earned: int) -> None:
        self._earned[session] = earned
        while len(self._earned) > self.max_entries:
            self._earned.popitem(last=False)


class AbusePolicy:
    """Turns share verdicts into escalation steps, counting drops per IP in one place.

    :meth:`record` notes one verdict in the connection's :class:`ShareJudge` and returns
    the step due: NONE, RESEND_WORK, RECONNECT, DROP, or BAN (the IP is banned now, in
    ``bans``; the caller closes the IP's connections). Strikes count within the last
    ``window`` seconds; at most ``max_ips`` IPs keep them.
    """

    def __init__(
        self, bans: BanList, window: float, max_ips: int, metrics: Any | None = None
    ) -> None:
        self.bans = bans
        self.window = window
        self.max_ips = max_ips
        self.metrics = metrics
        self.strikes: OrderedDict[str, list[float]] = OrderedDict()

    def record(
        self,
        judge: ShareJudge,
        valid: bool,
        *,
        ip: str,
        login: str,
        honest: Callable[[], int],
        now: float,
    ) -> Escalation:
        """One share of ``login`` from ``ip`` was ``valid`` or not; ``honest`` counts the
        IP's other live sessions with an accepted share (asked only at a drop)."""
        step = judge.record(valid)
        if step < Escalation.DROP:
            return step
        strikes = self.strike(ip, now)
        if strikes < 2:
            return Escalation.DROP
        others = honest()
        banned = strikes > HONEST_SESSION_WEIGHT * others
        if self.metrics is not None:
            self.metrics.ban_decisions.labels("banned" if banned else "spared").inc()
        if not banned:
            log.warning(
                "not banning %s: its %d drop(s) do not outweigh its %d honest "
                "session(s); dropping %s only",
                ip,
                strikes,
                others,
                login,
            )
            return Escalation.DROP
        self.bans.ban(ip, now)
        if self.metrics is not None:
            self.metrics.bans.inc()
        return Escalation.BAN

    def strike(self, ip: str, now: float) -> int:
        """Count a drop for invalid shares against ``ip``; return its strikes within the
        last ``window`` seconds (bounded in IPs and in times kept)."""
        times = [t for t in self.strikes.pop(ip, []) if now - t < self.window]
        times = [*times[-63:], now]
        self.strikes[ip] = times
        while len(self.strikes) > self.max_ips:
            self.strikes.popitem(last=False)
        return len(times)
