"""Mining statistics: MAC/s over 10 s / 60 s / 15 min per device and in total, share counters.

Plain bookkeeping driven from the trio thread; the clock is passed in so tests can step it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOWS = (10.0, 60.0, 900.0)
SHARE_RESULTS = ("accepted", "rejected", "stale", "lost")
PING_SAMPLES = 32  # submit round trips the pool ping is the median of
USEFUL_RESULTS = ("verified", "rejected", "failed")
SCAN_KINDS = ("useful", "synthetic")
"""``useful``: headers of a unit before its product was taken, and every model layer's
header (its product is the layer's, SPEC §12.12.4); ``synthetic``: all else."""
DIRECTIONS = ("in", "out")  # useful-work bytes: operands in, results out


class RateWindow:
    """MACs in one-second buckets over the last 15 minutes; ``rate(window)`` in MAC/s.

    Over a window longer than the time since ``start``, the rate is taken over the
    time since ``start`` so that a fresh device does not read low for 15 minutes.
    """

    def __init__(self, start: float, horizon: float = WINDOWS[-1]) -> None:
        self._start = start
        self._horizon = horizon
        self._buckets: deque[list[float]] = deque()  # [second, macs]

    @property
    def start(self) -> float:
        return self._start

    def add(self, now: float, macs: float) -> None:
        second = float(int(now))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += macs
        else:
            self._buckets.append([second, macs])
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._horizon - 1:
            self._buckets.popleft()

    def rate(self, now: float, window: float) -> float:
        self._trim(now)
        span = min(window, max(now - self._start, 1e-9))
        since = now - span
        total = sum(macs for second, macs in self._buckets if second + 1 > since)
        return total / max(span, 1.0)


@dataclass
class DeviceStats:
    """Counters of one device."""

    name: str
    rate: RateWindow
    macs: int = 0
    scans: int = 0
    partial_scans: int = 0
    candidates: int = 0
    hw_errors: int = 0
    restarts: int = 0
    stalled: bool = False
    last_progress: float = 0.0
    peak: float = 0.0  # highest 10 s hashrate seen, MAC/s
    kernel: str = ""  # the kernel that mines (OpenCL: its configuration and inner product)
    shares: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHARE_RESULTS, 0))


@dataclass
class BestShare:
    difficulty: float = 0.0
    device: str = ""
    at: float = 0.0


@dataclass
class WorkerStats:
    """Everything the console, the metrics and ``/api/summary`` read."""

    clock: Callable[[], float] = time.monotonic
    devices: dict[str, DeviceStats] = field(default_factory=dict)
    shares: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHARE_RESULTS, 0))
    rejects_by_code: dict[int, int] = field(default_factory=dict)
    accepted_difficulty: float = 0.0
    blocks: int = 0
    best: BestShare = field(default_factory=BestShare)
    pool: str = ""
    pool_connected: bool = False
    job_id: str = ""
    job_difficulty: float = 0.0
    started: float = 0.0
    blob_bytes: int = 0  # operand bytes downloaded with work.get_blob
    blobs_rejected: int = 0  # blob jobs dropped because an operand failed verification
    useful_results: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USEFUL_RESULTS, 0))
    useful_macs: int = 0  # MACs (padded unit shape) of results the pool verified
    scanned_macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCAN_KINDS, 0))
    useful_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    peak: float = 0.0  # highest 10 s hashrate of all devices together, MAC/s
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=PING_SAMPLES))

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._total = RateWindow(self.started)

    def device(self, name: str) -> DeviceStats:
        dev = self.devices.get(name)
        if dev is None:
            now = self.clock()
            dev = DeviceStats(name, RateWindow(now), last_progress=now)
            self.devices[name] = dev
        return dev

    def add_scan(self, name: str, macs: int, complete: bool, kind: str = "synthetic") -> None:
        """Count one scan of device ``name``: its MACs, by ``kind`` (``SCAN_KINDS``)."""
        if kind not in self.scanned_macs:
            raise ValueError(f"unknown scan kind {kind!r}")
        self.scanned_macs[kind] += macs
        now = self.clock()
        dev = self.device(name)
        dev.macs += macs
        dev.scans += 1
        dev.partial_scans += 0 if complete else 1
        dev.last_progress = now
        dev.stalled = False
        dev.rate.add(now, macs)
        self._total.add(now, macs)
        # a peak over a full window only: a young window's rate reads high
        if now - dev.rate.start >= WINDOWS[0]:
            dev.peak = max(dev.peak, dev.rate.rate(now, WINDOWS[0]))
        if now - self.started >= WINDOWS[0]:
            self.peak = max(self.peak, self._total.rate(now, WINDOWS[0]))

    def add_candidate(self, name: str, ok: bool, difficulty: float = 0.0) -> None:
        dev = self.device(name)
        dev.candidates += 1
        if not ok:
            dev.hw_errors += 1
        elif difficulty > self.best.difficulty:
            self.best = BestShare(difficulty, name, self.clock())

    def add_share(
        self,
        result: str,
        difficulty: float = 0.0,
        code: int | None = None,
        block: bool = False,
        device: str | None = None,
        latency: float | None = None,
    ) -> None:
        """Count one submit outcome: accepted / rejected / stale / lost (no answer), for
        ``device`` too if given; ``latency`` is the submit's round trip in seconds."""
        if result not in self.shares:
            raise ValueError(f"unknown share result {result!r}")
        self.shares[result] += 1
        if device is not None:
            self.device(device).shares[result] += 1
        if latency is not None and result != "lost":
            self.latencies.append(latency)
        if result == "accepted":
            self.accepted_difficulty += difficulty
            self.blocks += 1 if block else 0
        if code is not None and result in ("rejected", "stale"):
            self.rejects_by_code[code] = self.rejects_by_code.get(code, 0) + 1

    def hashrate(self, window: float, name: str | None = None) -> float:
        """MAC/s over ``window`` seconds for device ``name`` (``None`` = all devices)."""
        now = self.clock()
        if name is None:
            return self._total.rate(now, window)
        return self.device(name).rate.rate(now, window)

    @property
    def ping(self) -> float | None:
        """The median round trip of the recent submits, seconds (None before the first)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]

    @property
    def useful_fraction(self) -> float | None:
        """The share of scanned MACs that were useful (None before any scan)."""
        total = sum(self.scanned_macs.values())
        return None if total == 0 else self.scanned_macs["useful"] / total

    @property
    def uptime(self) -> float:
        return self.clock() - self.started

    @property
    def hw_errors(self) -> int:
        return sum(d.hw_errors for d in self.devices.values())

    def summary(self) -> dict:
        """A JSON-ready snapshot (the body of ``/api/summary``)."""
        now = self.clock()
        ping = self.ping

        def rates(name: str | None) -> dict[str, float]:
            return {f"{int(w)}s": round(self.hashrate(w, name), 3) for w in WINDOWS}

        return {
            "uptime_s": round(now - self.started, 3),
            "ping_ms": None if ping is None else round(ping * 1000, 1),
            "peak_hashrate_macs": round(self.peak, 3),
            "pool": {
                "url": self.pool,
                "connected": self.pool_connected,
                "job_id": self.job_id,
                "difficulty": self.job_difficulty,
            },
            "hashrate_macs": rates(None),
            "shares": dict(self.shares),
            "rejects_by_code": {str(k): v for k, v in sorted(self.rejects_by_code.items())},
            "hw_errors": self.hw_errors,
            "accepted_difficulty": self.accepted_difficulty,
            "blocks": self.blocks,
            "best_share": {"difficulty": self.best.difficulty, "device": self.best.device},
            "useful": {
                "blob_bytes": self.blob_bytes,
                "blobs_rejected": self.blobs_rejected,
                "results": dict(self.useful_results),
                "macs": self.useful_macs,
                "scanned_macs": dict(self.scanned_macs),
                "useful_fraction": self.useful_fraction,
                "bytes": dict(self.useful_bytes),
            },
            "devices": [
                {
                    "name": d.name,
                    "kernel": d.kernel,
                    "hashrate_macs": rates(d.name),
                    "peak_hashrate_macs": round(d.peak, 3),
                    "shares": dict(d.shares),
                    "macs": d.macs,
                    "scans": d.scans,
                    "partial_scans": d.partial_scans,
                    "candidates": d.candidates,
                    "hw_errors": d.hw_errors,
                    "restarts": d.restarts,
                    "stalled": d.stalled,
                    "idle_s": round(now - d.last_progress, 3),
                }
                for d in self.devices.values()
            ],
        }
