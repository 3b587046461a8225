"""Shared parts of the worker tests: a real in-process pool, a real in-process worker, and
backend wrappers that misbehave on purpose (corrupt winners, stall, run long).

The wrappers wrap a real backend (the BLAS one); they only change what a real device
could get wrong, never the worker's own parts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from pool.app import PoolHandle, run_pool
from pool.config import PoolConfig, validate
from protocol.address import new_address
from worker.app import WorkerApp
from worker.backends.base import ScanResult
from worker.config import ConnectionConfig, PoolEndpoint, WorkerConfig

TEST_SHAPE = {"m": 64, "n": 64, "k": 256, "r": 64}
# One 64×64×256 header is 2²⁰ MACs; a share of difficulty D costs D·2³² MACs.
SHARE_DIFFICULTY = 2.0**-14  # ≈ 4 winners per header
NETWORK_DIFFICULTY = 2.0**-11  # ≈ one block per 2 headers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> None:
    """Poll ``predicate`` until true; ``trio.TooSlowError`` after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


def pool_config(
    data_dir: Path,
    port: int = 0,
    *,
    share_difficulty: float = SHARE_DIFFICULTY,
    network_difficulty: float = 1e9,
    **work: Any,
) -> PoolConfig:
    """A pool on 127.0.0.1 with tiny jobs, fixed difficulty and no HTTP port."""
    config = PoolConfig()
    config.pool.data_dir = str(data_dir)
    config.stratum.port = port
    config.http.enabled = False
    config.vardiff.enabled = False
    config.pool.start_difficulty = share_difficulty
    config.vardiff.min_difficulty = min(share_difficulty, config.vardiff.min_difficulty)
    config.pool.unlock_interval = 0.5
    config.pool.payout_interval = 3600.0
    shape = {**TEST_SHAPE, **work}
    for key, value in shape.items():
        setattr(config.work, key, value)
    config.chain.poll_interval = 0.1
    # Fixed tiny difficulties give hundreds of shares a second: these tests are not about
    # the flood limits (tests/pool/test_pool_abuse.py is), so they must not trip them.
    config.limits.messages_per_second = 100_000.0
    config.limits.message_burst = 100_000
    config.limits.checks_per_ip_per_second = 100_000.0
    config.limits.check_burst_per_ip = 100_000
    config.chain.node = {
        "start_difficulty": network_difficulty,
        "min_difficulty": min(network_difficulty, 1.0),
        "maturity": 1,
    }
    validate(config)
    return config


@dataclass
class RunningPool:
    handle: PoolHandle
    scope: trio.CancelScope

    @property
    def endpoint(self) -> PoolEndpoint:
        return PoolEndpoint("127.0.0.1", self.handle.stratum_port)

    async def shares_received(self) -> int:
        """Shares the pool has accepted and written to its ledger."""
        h = self.handle
        await trio.sleep(0.05)  # let the share log commit its batch
        return await trio.to_thread.run_sync(h.ledger.share_count, limiter=h.ledger_limiter)

    def sessions(self) -> int:
        return sum(1 for s in self.handle.context.sessions if s.address is not None)

    def stop(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def running_pool(data_dir: Path, port: int = 0, **options: Any) -> AsyncIterator[RunningPool]:
    """The real pool (``pool.app.run_pool``) in this trio run until the block exits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = pool_config(data_dir, port, **options)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_pool, config)
        running = RunningPool(handle, nursery.cancel_scope)
        yield running
        nursery.cancel_scope.cancel()


def fast_connection(**overrides: Any) -> ConnectionConfig:
    """Reconnect/backoff/probe timings short enough for tests."""
    base = ConnectionConfig(
        job_timeout=30.0,
        ping_interval=5.0,
        response_timeout=5.0,
        connect_timeout=2.0,
        backoff_initial=0.1,
        backoff_max=0.5,
        backoff_jitter=0.2,
        primary_retry=0.3,
    )
    return replace(base, **overrides)


def worker_config(endpoints: Sequence[PoolEndpoint], **overrides: Any) -> WorkerConfig:
    connection = overrides.pop("connection", fast_connection())
    config = WorkerConfig(
        pools=tuple(endpoints), login=f"{new_address()}.rig1", connection=connection
    )
    config = replace(
        config, metrics=replace(config.metrics, port=overrides.pop("metrics_port", -1))
    )
    return replace(config, **overrides).validate()


@asynccontextmanager
async def running_worker(
    endpoints: Sequence[PoolEndpoint], backends: Sequence[object], **overrides: Any
) -> AsyncIterator[WorkerApp]:
    """A real ``WorkerApp`` (no console) with the given backends until the block exits."""
    reopen = overrides.pop("reopen", None)
    app = WorkerApp(
        worker_config(endpoints, **overrides),
        backends,
        CollectorRegistry(),
        reopen=reopen,
        status=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        yield app
        nursery.cancel_scope.cancel()


class WrappedBackend:
    """Delegates to a real backend; subclasses change one thing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"{type(self).__name__.lower()}:{inner.name}"
        self.scans: list[ScanResult] = []
        self.product_calls = 0  # second passes (product(header)) the worker asked for

    def prepare(self, workload: Any) -> None:
        self.inner.prepare(workload)

    def transcripts(self, header: bytes) -> Any:
        return self.inner.transcripts(header)

    def product(self, header: bytes) -> Any:
        self.product_calls += 1
        return self.inner.product(header)

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool],
        want_product: bool = False,
    ) -> ScanResult:
        result = self.inner.scan(header, share_target, should_stop, want_product)
        self.scans.append(result)
        return result


class CorruptingBackend(WrappedBackend):
    """A broken device: flips a digest bit (``mode="digest"``) or reports the wrong tile."""

    def __init__(self, inner: Any, mode: str = "digest") -> None:
        super().__init__(inner)
        self.mode = mode
        self.corrupted = 0

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool],
        want_product: bool = False,
    ) -> ScanResult:
        result = super().scan(header, share_target, should_stop, want_product)
        bad = []
        for ti, tj, digest in result.winners:
            if self.mode == "digest":
                bad.append((ti, tj, bytes([digest[0] ^ 0x01]) + digest[1:]))
            else:
                bad.append((ti, (tj + 1) % 4, digest))
            self.corrupted += 1
        return ScanResult(bad, result.macs, result.complete, result.product)


class LongScanBackend(WrappedBackend):
    """A device with long launches: after the real scan it keeps "computing" for up to
    ``hold`` seconds, polling ``should_stop`` like a real kernel loop would."""

    def __init__(self, inner: Any, hold: float) -> None:
        super().__init__(inner)
        self.hold = hold
        self.in_scan = threading.Event()
        self.stopped_early = 0
        self.stop_latency: list[float] = []

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool],
        want_product: bool = False,
    ) -> ScanResult:
        result = self.inner.scan(header, share_target, should_stop, want_product)
        self.in_scan.set()
        deadline = time.monotonic() + self.hold
        try:
            while time.monotonic() < deadline:
                if should_stop():
                    self.stopped_early += 1
                    # a real device would report what it had found so far: the worker
                    # must drop these winners, their job is gone
                    out = ScanResult(result.winners, result.macs, False)  # no product
                    self.scans.append(out)
                    return out
                time.sleep(0.005)
        finally:
            self.in_scan.clear()
        self.scans.append(result)
        return result


class StallingBackend(WrappedBackend):
    """A device that hangs on its first ``stalls`` scans: it never polls ``should_stop``
    and only returns when ``release`` is set (or after ``limit`` seconds)."""

    def __init__(self, inner: Any, stalls: int = 1, limit: float = 10.0) -> None:
        super().__init__(inner)
        self.stalls = stalls
        self.limit = limit
        self.release = threading.Event()
        self.stalled_scans = 0

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool],
        want_product: bool = False,
    ) -> ScanResult:
        if self.stalled_scans < self.stalls:
            self.stalled_scans += 1
            self.release.wait(self.limit)
            return ScanResult([], 0, False)
        return super().scan(header, share_target, should_stop, want_product)
