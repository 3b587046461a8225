"""A unit's exact product out to the pool, in the background (SPEC §11, §12.7).

The miner hands a claimed header's noisy product ``A'·B'`` over with
:meth:`ResultDelivery.hand_over`, which never blocks: the product waits in a small queue
and the miner moves on at once. :meth:`ResultDelivery.run` (one task of the worker's
nursery) takes the products in order — at most one upload is in flight, a second unit's
product waits for it — denoises each in a worker thread (``protocol.denoise``; the next
one while the one before uploads) and sends the unit's C as int32 little-endian: ``PUT``
with resume over the lease's HTTP data plane when the job names one (the first ``PUT`` at
offset 0 ends the unit's mining on the pool, which sends the next job while the upload
goes on), else — or when that fails — in ``work.result`` chunks on the session that gave
the job. The verdict is booked (stats,
log) when the pool's answer arrives.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import trio

from protocol.denoise import denoise
from protocol.errors import ProtocolError
from protocol.noise import pow_seed
from protocol.useful import RESULT_DTYPE, chunks
from protocol.work_messages import WorkResultAck
from protocol.workload import Workload

from .client import Job
from .data_client import DataClient, DataPlane, DataPlaneError
from .outcomes import RequestFailed
from .stats import WorkerStats

log = logging.getLogger(__name__)

_T = TypeVar("_T")
RESULT_WINDOW = 8  # result chunks in flight at once (acks are collected in order)
WAITING = 2  # products waiting behind the upload in flight (more: the oldest is failed)


@dataclass(frozen=True)
class Product:
    """One claimed header's noisy product, on its way to becoming the unit's result."""

    job: Job
    workload: Workload
    header: bytes
    noisy: np.ndarray


class ResultDelivery:
    """Denoise and upload unit results, one at a time, off the miner's path."""

    def __init__(
        self,
        stats: WorkerStats,
        data: DataClient,
        chunk_max: int,
        plane_of: Callable[[Job], DataPlane | None],
        latest_job_id: Callable[[Job], str],
        on_outcome: Callable[[Job, str], None],
    ) -> None:
        self.stats = stats
        self.data = data
        self.chunk_max = chunk_max
        self._plane_of = plane_of
        self._latest_job_id = latest_job_id
        self._on_outcome = on_outcome
        self._waiting: deque[Product] = deque()
        self._wake = trio.Event()
        self.ahead = 0  # 1 while the next product is denoised ahead of the upload in flight
        self.uploading: bytes | None = None  # unit id of the upload in flight
        self.limiter = trio.CapacityLimiter(1)  # denoising, apart from operand loading

    @property
    def waiting(self) -> int:
        """Products waiting behind the upload in flight (queued, or denoised ahead)."""
        return len(self._waiting) + self.ahead

    def hand_over(self, product: Product) -> None:
        """Queue ``product`` for delivery; returns at once."""
        self._waiting.append(product)
        while len(self._waiting) + self.ahead > WAITING:
            dropped = self._waiting.popleft()
            self._finish(
                dropped.job,
                dropped.workload,
                "failed",
                f"unit {dropped.workload.work_root.hex()[:16]}…: too many results waiting"
                " for the upload in flight; dropped",
            )
        self._wake.set()

    async def run(self) -> None:
        """Deliver handed-over products in order until cancelled: the next one is denoised
        while the one before uploads, and waits (denoised) until that upload is done."""
        send, receive = trio.open_memory_channel[tuple[Product, bytes]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._denoise_loop, send)
            nursery.start_soon(self._upload_loop, receive)

    async def _denoise_loop(self, send: trio.MemorySendChannel[tuple[Product, bytes]]) -> None:
        while True:
            while not self._waiting:
                await self._wake.wait()
                self._wake = trio.Event()
            product = self._waiting.popleft()
            self.ahead = 1
            try:
                raw = await self._guarded(product, self._denoise(product))
                if raw is not None:
                    await send.send((product, raw))
            finally:
                self.ahead = 0

    async def _upload_loop(self, receive: trio.MemoryReceiveChannel[tuple[Product, bytes]]) -> None:
        async for product, raw in receive:
            self.uploading = product.workload.work_root
            try:
                await self._guarded(product, self._upload(product, raw))
            finally:
                self.uploading = None

    async def _guarded(self, product: Product, step: Awaitable[_T]) -> _T | None:
        """``await step``; a fault of one product is its outcome, never the worker's end."""
        try:
            return await step
        except Exception as exc:
            short = product.workload.work_root.hex()[:16]
            log.debug("unit %s… delivery failed", short, exc_info=True)
            self._finish(
                product.job, product.workload, "failed", f"unit {short}…: not delivered: {exc!r}"
            )
            return None

    async def _denoise(self, product: Product) -> bytes | None:
        """The unit's C from the product, in a worker thread (None: it failed, booked)."""
        try:
            return await trio.to_thread.run_sync(
                exact_product,
                product.workload,
                product.header,
                product.noisy,
                limiter=self.limiter,
            )
        except (ProtocolError, ValueError) as exc:  # pragma: no cover - a backend bug
            short = product.workload.work_root.hex()[:16]
            self._finish(
                product.job, product.workload, "failed", f"unit {short}…: cannot denoise: {exc}"
            )
            return None

    async def _upload(self, product: Product, raw: bytes) -> str:
        """Send C to the pool (HTTP, else stratum); the outcome."""
        job, workload = product.job, product.workload
        unit_id = workload.work_root
        short = unit_id.hex()[:16]
        plane = self._plane_of(job)
        if plane is not None:
            try:
                answer = await self.data.upload_result(plane, unit_id, raw)
            except DataPlaneError as exc:
                log.warning("unit %s…: %s; sending it over the stratum connection", short, exc)
            else:
                ack = WorkResultAck(
                    accepted=True,
                    received=int(answer.get("received", 0)),
                    verified=bool(answer["verified"]),
                    reason=None if answer.get("reason") is None else str(answer["reason"])[:256],
                )
                return self._verdict(job, workload, ack)
        return await self._deliver_stratum(job, workload, raw)

    async def _deliver_stratum(self, job: Job, workload: Workload, raw: bytes) -> str:
        """Send C in ``work.result`` chunks on the job's session; the outcome."""
        unit_id = workload.work_root
        short = unit_id.hex()[:16]
        client = job.client
        in_flight: deque[tuple[int, Callable[[], Awaitable[WorkResultAck]]]] = deque()
        try:
            for offset, data, final in chunks(raw, self.chunk_max):
                job_id = self._latest_job_id(job)
                in_flight.append(
                    (offset, await client.send_result(job_id, unit_id, offset, data, final))
                )
                self.stats.useful_bytes["out"] += len(data)
                # Up to RESULT_WINDOW chunks in flight; the final one waits for all before it.
                while in_flight and (len(in_flight) >= RESULT_WINDOW or final):
                    sent_at, ack_of = in_flight.popleft()
                    ack = await ack_of()
                    if not in_flight and final:
                        return self._verdict(job, workload, ack)
                    if not ack.accepted:
                        why = ack.reason or "no reason given"
                        return self._finish(
                            job,
                            workload,
                            "failed",
                            f"unit {short}…: pool refused the result chunk at {sent_at}: {why}",
                        )
        except RequestFailed as exc:
            return self._finish(
                job, workload, "failed", f"unit {short}…: result not delivered: {exc}"
            )
        raise AssertionError("chunks() always ends with a final chunk")  # pragma: no cover

    def _verdict(self, job: Job, workload: Workload, ack: WorkResultAck) -> str:
        """The outcome of a unit from the pool's answer to its final result chunk."""
        short = workload.work_root.hex()[:16]
        why = ack.reason or "no reason given"
        if ack.verified is None:
            what = (
                "took the final chunk but gave no verdict"
                if ack.accepted
                else (f"refused the final result chunk: {why}")
            )
            return self._finish(job, workload, "failed", f"unit {short}…: the pool {what}")
        if ack.verified and ack.accepted:
            self.stats.useful_macs += workload.shape.macs_per_header
            return self._finish(
                job,
                workload,
                "verified",
                f"unit {short}…: result verified by the pool ({ack.received} bytes)",
            )
        return self._finish(
            job,
            workload,
            "rejected",
            f"unit {short}…: the pool's check of the result failed: {why}",
        )

    def _finish(self, job: Job, workload: Workload, outcome: str, message: str) -> str:
        self._on_outcome(job, outcome)
        self.stats.useful_results[outcome] += 1
        (log.info if outcome == "verified" else log.error)("%s", message)
        return outcome


def exact_product(workload: Workload, header: bytes, noisy: np.ndarray) -> bytes:
    """The unit's C = A·B from one header's noisy product, as int32 LE bytes."""
    c = denoise(noisy, workload.a, workload.bt, pow_seed(header), workload.shape.r)
    return np.ascontiguousarray(c, dtype=RESULT_DTYPE).tobytes()


__all__ = ["Product", "ResultDelivery", "exact_product"]
