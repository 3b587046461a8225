"""What every compute backend offers the worker: scan one header's tickets, or its product."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from blake3 import blake3

from protocol.target import ticket_limit
from protocol.workload import TILE, Workload


class BackendError(RuntimeError):
    """A backend cannot run: no such device, bad option, or no workload prepared."""


class DeviceUnusable(BackendError):
    """A device that cannot mine at all: its kernels do not build, or its results differ
    from the CPU reference. The worker skips it (once, with ``reason``) and never retries it."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"{device}: {reason}")
        self.device = device
        self.reason = reason


@dataclass
class ScanResult:
    """Outcome of scanning every ticket (tile) of one header."""

    winners: list[tuple[int, int, bytes]]  # (ti, tj, digest) meeting the share target
    macs: int  # multiply-accumulates actually done (partial if stopped)
    complete: bool  # False if should_stop() cut the scan short
    # the noisy product A'·B' (m × n int32) of the header: only when the scan was asked for
    # it (``want_product=True``) and completed; None otherwise
    product: np.ndarray | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device as the worker lists it."""

    platform_index: int
    device_index: int
    platform: str
    name: str
    driver: str
    compute_units: int
    memory: int  # bytes of global memory

    @property
    def spec(self) -> str:
        """``"<platform>:<device>"``, the form ``open_backends`` takes."""
        return f"{self.platform_index}:{self.device_index}"


@runtime_checkable
class Backend(Protocol):
    """A compute backend: one device (or the CPU's BLAS) mining mmpow-1 tickets."""

    name: str

    def prepare(self, workload: Workload) -> None:
        """Upload / cache the operands of ``workload`` (keyed by its work_root)."""

    def scan(
        self,
        header: bytes,
        share_target: int,
        should_stop: Callable[[], bool],
        want_product: bool = False,
    ) -> ScanResult:
        """Every ticket of ``header``; winners meet ``ticket_limit(share_target, k)``.

        ``want_product``: also return the header's noisy product ``A'·B'`` (the final
        accumulators, the same array ``product(header)`` gives) in ``ScanResult.product``
        when the scan completes, so useful work needs no second pass. A backend that cannot
        may leave it None; callers then fall back to ``product(header)``.
        """

    def transcripts(self, header: bytes) -> np.ndarray:
        """The transcript J (tiles_m × tiles_n × 16, uint32) of every ticket of ``header``."""

    def product(self, header: bytes) -> np.ndarray:
        """The final int32 accumulators ``A'·B'`` (m × n) of ``header`` (for denoising)."""


def never_stop() -> bool:
    """A ``should_stop`` that never stops."""
    return False


def limit_of(share_target: int, k: int) -> int:
    """The largest winning digest value; raises ``BackendError`` on a non-positive target."""
    if share_target <= 0:
        raise BackendError(f"share target must be positive, got {share_target}")
    return ticket_limit(share_target, k)


def winners_of(
    seed: bytes, j: np.ndarray, limit: int, ti0: int = 0, tj0: int = 0
) -> list[tuple[int, int, bytes]]:
    """Digest every transcript of a block of tiles ``j`` (tm × tn × 16) and keep the winners.

    Each digest is ``protocol.hashing.HK(seed, J)``; the keyed hasher is set up once and
    copied per tile (this runs for every tile of every header on the BLAS backend).
    """
    raw = np.ascontiguousarray(j, dtype="<u4").tobytes()
    tm, tn = j.shape[:2]
    keyed = blake3(key=seed)
    found = []
    for idx in range(tm * tn):
        digest = keyed.copy().update(raw[64 * idx : 64 * idx + 64]).digest()
        if int.from_bytes(digest, "little") <= limit:
            found.append((ti0 + idx // tn, tj0 + idx % tn, digest))
    return found


def require_prepared(workload: Workload | None) -> Workload:
    """The prepared workload, or ``BackendError`` if ``prepare`` was never called."""
    if workload is None:
        raise BackendError("no workload prepared: call prepare(workload) first")
    return workload


def check_header(header: bytes) -> None:
    """Raise ``BackendError`` unless ``header`` is 128 bytes."""
    if not isinstance(header, bytes | bytearray) or len(header) != 128:
        raise BackendError("header must be 128 bytes")


__all__ = [
    "TILE",
    "Backend",
    "BackendError",
    "DeviceInfo",
    "DeviceUnusable",
    "ScanResult",
    "check_header",
    "limit_of",
    "never_stop",
    "require_prepared",
    "winners_of",
]
