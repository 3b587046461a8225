"""A session's timeouts, sans-IO: the handshake deadline and the idle limit.

:class:`SessionWatchdog` tells the session when to look next (:meth:`next_check`: the
earliest deadline that could pass, so an idle connection wakes once per timeout rather
than every ``tick``) and, each time, whether the connection is overdue and why; the
session sends that reason to the miner and closes. (The vardiff idle sweep runs on the
same checks.) Every deadline only moves later (a message, the authorization, a new
vardiff window), so a check that comes early finds nothing and looks again.
"""

from __future__ import annotations

from pool.config import StratumConfig
from pool.miner_state import MinerState
from pool.vardiff import Vardiff


class SessionWatchdog:
    """Handshake and idle deadlines of one connection (``limits`` from ``[stratum]``)."""

    __slots__ = ("limits", "tick")

    def __init__(self, limits: StratumConfig, vardiff_idle_seconds: float) -> None:
        self.limits = limits
        self.tick = min(
            1.0, limits.idle_timeout / 4, limits.handshake_timeout / 4, vardiff_idle_seconds / 4
        )

    def next_check(
        self, now: float, miner: MinerState, authorized: bool, vardiff: Vardiff | None
    ) -> float:
        """When (trio clock) to call :meth:`overdue` next: the earliest of the idle deadline,
        the handshake deadline (before authorize) and the idle sweep of ``vardiff`` (when
        on); ``tick`` from ``now`` while one of them has passed without a change."""
        at = miner.last_message + self.limits.idle_timeout
        if not authorized:
            at = min(at, miner.connected_at + self.limits.handshake_timeout)
        sweep = None if vardiff is None else vardiff.idle_at()
        if sweep is not None:
            at = min(at, sweep)
        return at if at > now else now + self.tick

    def overdue(self, now: float, miner: MinerState, authorized: bool) -> str | None:
        """Why the connection must close now, or None while it is in time."""
        if not authorized and now - miner.connected_at > self.limits.handshake_timeout:
            return "did not subscribe and authorize in time"
        if now - miner.last_message > self.limits.idle_timeout:
            return f"idle for more than {self.limits.idle_timeout:g} s without a message"
        return None
