"""A session's timeouts, sans-IO: the handshake deadline and the idle limit.

:class:`SessionWatchdog` tells the session how often to look (``tick``) and, each time,
whether the connection is overdue and why; the session sends that reason to the miner
and closes. (The vardiff idle sweep runs on the same tick.)
"""

from __future__ import annotations

from pool.config import StratumConfig


class SessionWatchdog:
    """Handshake and idle deadlines of one connection (``limits`` from ``[stratum]``)."""

    def __init__(self, limits: StratumConfig, vardiff_idle_seconds: float) -> None:
        self.limits = limits
        self.tick = min(
            1.0, limits.idle_timeout / 4, limits.handshake_timeout / 4, vardiff_idle_seconds / 4
        )

    def overdue(
        self, now: float, *, authorized: bool, connected_at: float, last_message: float
    ) -> str | None:
        """Why the connection must close now, or None while it is in time."""
        if not authorized and now - connected_at > self.limits.handshake_timeout:
            return "did not subscribe and authorize in time"
        if now - last_message > self.limits.idle_timeout:
            return f"idle for more than {self.limits.idle_timeout:g} s without a message"
        return None
