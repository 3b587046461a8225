"""The CPU re-check of every candidate before it is submitted.

A device's winner is recomputed from its 16 rows of A and 16 rows of Bᵀ with the reference
``protocol.ticket.verify_ticket``. A digest that differs, a tile outside the job, or a digest
that does not meet the share target is a hardware error of that device, and is not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from protocol.errors import ProtocolError
from protocol.target import meets_target, ticket_difficulty
from protocol.ticket import verify_ticket
from protocol.workload import TILE, Workload

from .stats import WorkerStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one re-check: ``ok`` means submit it."""

    ok: bool
    digest: bytes | None
    difficulty: float
    reason: str = ""


def check_candidate(
    workload: Workload, header: bytes, tile: tuple[int, int], claimed: bytes, share_target: int
) -> CheckResult:
    """Recompute one ticket on the CPU and compare it with what the device claimed."""
    shape = workload.shape
    ti, tj = tile
    if not (0 <= ti < shape.tiles_m and 0 <= tj < shape.tiles_n):
        return CheckResult(False, None, 0.0, f"tile {tile} outside {shape.tiles_m}x{shape.tiles_n}")
    try:
        digest = verify_ticket(
            header,
            shape,
            (ti, tj),
            workload.a[ti * TILE : (ti + 1) * TILE],
            workload.bt[tj * TILE : (tj + 1) * TILE],
        )
    except ProtocolError as exc:
        return CheckResult(False, None, 0.0, f"verify failed: {exc}")
    if digest != bytes(claimed):
        return CheckResult(False, digest, 0.0, "digest mismatch")
    if not meets_target(digest, share_target, shape.k):
        return CheckResult(False, digest, 0.0, "digest does not meet the share target")
    return CheckResult(True, digest, ticket_difficulty(digest, shape.k))


class Checker:
    """Runs ``check_candidate`` off the trio thread and books the result in ``stats``."""

    def __init__(self, stats: WorkerStats, threads: int = 1) -> None:
        self._stats = stats
        self._limiter = trio.CapacityLimiter(threads)

    async def check(
        self,
        device: str,
        workload: Workload,
        header: bytes,
        tile: tuple[int, int],
        claimed: bytes,
        share_target: int,
    ) -> CheckResult:
        result = await trio.to_thread.run_sync(
            check_candidate,
            workload,
            header,
            tile,
            claimed,
            share_target,
            limiter=self._limiter,
        )
        self._stats.add_candidate(device, result.ok, result.difficulty)
        if not result.ok:
            log.warning(
                "hardware error on %s: tile %s: %s (claimed %s, cpu %s); not submitted",
                device,
                tile,
                result.reason,
                bytes(claimed).hex()[:16],
                result.digest.hex()[:16] if result.digest else "-",
            )
        return result
