"""Dependency health: is the ledger up, is the chain up (SPEC §12.10).

:class:`DependencyHealth` keeps one up/down state per dependency, exports it as the gauge
``matmine_pool_dependency_up{dependency}`` (1 up, 0 down), logs each change once (not
once per failing call) and tells its listeners (the pool tells every miner with
``client.show_message``). ``/healthz`` answers "degraded" while anything is down.

Reporters call :meth:`DependencyHealth.down` on a failure and :meth:`DependencyHealth.up`
on a success; repeating either is free. Everything runs on the trio event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

log = logging.getLogger("pool.health")

LEDGER = "ledger"
CHAIN = "chain"
DEPENDENCIES = (LEDGER, CHAIN)


@dataclass(frozen=True)
class HealthChange:
    """One dependency going down (``up`` false, with ``reason``) or coming back."""

    dependency: str
    up: bool
    reason: str
    outage_seconds: float = 0.0  # for a recovery: how long it was down


Listener = Callable[[HealthChange], None]


class DependencyHealth:
    """Up/down per dependency, shown in ``gauge`` (``PoolMetrics.dependency_up``)."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self._down: dict[str, tuple[str, float]] = {}  # dependency -> (reason, since)
        self._listeners: list[Listener] = []
        self.outages: dict[str, int] = dict.fromkeys(DEPENDENCIES, 0)
        self._gauge = gauge

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` on every change (it must not block)."""
        self._listeners.append(listener)

    def is_up(self, dependency: str) -> bool:
        return dependency not in self._down

    def down_reasons(self) -> dict[str, str]:
        """What is down now, and why."""
        return {name: reason for name, (reason, _) in self._down.items()}

    def down(self, dependency: str, reason: str) -> None:
        """``dependency`` failed; a change only the first time."""
        if dependency in self._down:
            return
        self._down[dependency] = (reason, time.monotonic())
        self.outages[dependency] = self.outages.get(dependency, 0) + 1
        log.error("%s unavailable: %s", dependency, reason)
        self._changed(HealthChange(dependency, False, reason))

    def up(self, dependency: str) -> None:
        """``dependency`` answered; a change only if it was down."""
        entry = self._down.pop(dependency, None)
        if entry is None:
            return
        seconds = time.monotonic() - entry[1]
        log.warning("%s is back after %.1f s", dependency, seconds)
        self._changed(HealthChange(dependency, True, "", seconds))

    def _changed(self, change: HealthChange) -> None:
        if self._gauge is not None:
            self._gauge.labels(dependency=change.dependency).set(1 if change.up else 0)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("health listener failed")


def miner_message(change: HealthChange) -> str:
    """What miners are told about ``change`` (``client.show_message``)."""
    if change.dependency == LEDGER:
        if change.up:
            return "pool notice: the pool's database is back; shares are stored again"
        return (
            "pool notice: the pool's database is unavailable; shares are answered 20 "
            "(not stored) until it is back; keep mining and resubmit them"
        )
    if change.up:
        return f"pool notice: the {change.dependency} is back"
    return (
        f"pool notice: the pool cannot reach its {change.dependency} node; "
        "jobs may be stale until it is back"
    )
