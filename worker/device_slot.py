"""One device as the miner and the watchdog see it: ``DeviceSlot`` (its backend, its
extranonce2 counter, its scan in flight, its failures) and the ``StopFlag`` its scan polls.

extranonce2 = the device index (top byte), then a 7-byte counter kept per extranonce1
across jobs and resumed sessions, so no header is ever mined twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .backends.base import Backend

COUNTER_BYTES = 7


class StopFlag:
    """The ``should_stop`` handed to a backend; every call also counts as a heartbeat."""

    def __init__(self, stale: Callable[[], bool]) -> None:
        self._stale = stale
        self._stopped = False
        self.last_poll = time.monotonic()

    def set(self) -> None:
        self._stopped = True

    def __call__(self) -> bool:
        self.last_poll = time.monotonic()
        return self._stopped or self._stale()


@dataclass
class DeviceSlot:
    """One backend and everything the miner and the watchdog track about it."""

    index: int
    backend: Backend
    reopen: Callable[[], Backend] | None = None
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    prepared_root: bytes | None = None
    scope: trio.CancelScope | None = None
    flag: StopFlag | None = None
    scan_started: float | None = None
    restart_requested: bool = False
    failures: int = 0  # failures in a row since the last completed scan
    retired: str | None = None  # why the device no longer mines (None: it does)
    counter: int = 0
    extranonce1: bytes | None = None
    counters: dict[bytes, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.backend.name

    def use_extranonce1(self, extranonce1: bytes) -> None:
        """Switch the counter to a session's extranonce1; a resumed session (same
        extranonce1) continues where it was, so no header is mined twice."""
        if extranonce1 == self.extranonce1:
            return
        if self.extranonce1 is not None:
            self.counters[self.extranonce1] = self.counter
            while len(self.counters) > 16:
                self.counters.pop(next(iter(self.counters)))
        self.extranonce1 = extranonce1
        self.counter = self.counters.pop(extranonce1, 0)

    def next_extranonce2(self) -> bytes:
        """Top byte = device index, then a 7-byte big-endian counter."""
        value = self.counter
        self.counter += 1
        return bytes([self.index]) + (value % (1 << (8 * COUNTER_BYTES))).to_bytes(
            COUNTER_BYTES, "big"
        )

    def last_progress(self) -> float | None:
        """Monotonic time of the last sign of life of a scan in flight (``None``: idle)."""
        if self.scan_started is None:
            return None
        polled = self.flag.last_poll if self.flag is not None else 0.0
        return max(self.scan_started, polled)
