"""Operand bytes served to leases (SPEC §12.7): ``work.get_blob`` and the byte budget.

:class:`BlobServing` answers ``work.get_blob`` for a session's current lease and counts the
bytes each lease was served over either plane against its budget (4 × the unit's operand
bytes; beyond → 27 / 429). A reservation fetches under a stand-in lease of negative id;
its bytes move to the lease it becomes (:meth:`BlobServing.move`). Whole blobs served make
their session a holder (:class:`~pool.useful.affinity.BlobHolders`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.affinity import BlobHolders
from pool.useful.blobstore import BlobStore
from pool.useful.queue import Lease
from protocol.errors import ErrorCode, ProtocolError
from protocol.work_messages import GetBlob, GetBlobResult

BLOB_BUDGET_FACTOR = 4
"""A lease may fetch its operand blobs this many times over before ``work.get_blob`` is 27."""


class BlobServing:
    """Blob bytes served per lease; ``call`` runs a blocking function in a worker thread."""

    def __init__(
        self,
        config: UsefulConfig,
        blobs: BlobStore,
        metrics: UsefulMetrics,
        holders: BlobHolders,
        call: Callable[..., Awaitable[Any]],
    ) -> None:
        self.config = config
        self.blobs = blobs
        self.metrics = metrics
        self.holders = holders
        self._call = call
        self._served: dict[int, int] = {}  # lease id → blob bytes served

    async def get_blob(self, lease: Lease | None, msg: GetBlob, now: float) -> GetBlobResult:
        """Answer ``work.get_blob`` for the session's current ``lease``; ``ProtocolError``
        with the wire code when refused."""
        if (
            lease is None
            or msg.hash not in (lease.unit.a_blob, lease.unit.b_blob)
            or (lease.deadline < now)
        ):
            raise ProtocolError(
                f"work.get_blob: blob {msg.hash.hex()[:16]}… is not an operand "
                "of this session's current work unit",
                code=ErrorCode.STALE,
            )
        asked = min(msg.length, self.config.chunk_max)
        self.charge(lease, asked)
        try:
            data, total = await self._call(
                self.blobs.read_chunk, msg.hash, msg.offset, msg.length, self.config.chunk_max
            )
        except BaseException:
            self._refund(lease.id, asked)
            raise
        self._refund(lease.id, asked - len(data))
        self.metrics.data_bytes("out", "stratum", len(data))
        self.served(lease, msg.hash, len(data), total)
        return GetBlobResult(data=data, total=total)

    def served(self, lease: Lease, blob: bytes, nbytes: int, size: int) -> None:
        """``nbytes`` of operand ``blob`` reached ``lease``'s session (either plane)."""
        self.holders.served(lease.id, lease.session, blob, nbytes, size)

    def charge(self, lease: Lease, nbytes: int) -> None:
        """Count operand bytes served to ``lease`` (either path); 27 past 4 × its operands."""
        unit = lease.unit
        budget = BLOB_BUDGET_FACTOR * (unit.shape.m + unit.shape.n) * unit.shape.k
        served = self._served.get(lease.id, 0)
        if served + nbytes > budget:
            raise ProtocolError(
                f"work.get_blob: this work unit's blobs were already served "
                f"{served} bytes; the limit is {budget}",
                code=ErrorCode.RATE_LIMITED,
            )
        self._served[lease.id] = served + nbytes

    def _refund(self, lease_id: int, nbytes: int) -> None:
        if lease_id in self._served:  # bytes charged but not served (unless it ended since)
            self._served[lease_id] -= nbytes

    def move(self, from_id: int, to_id: int) -> None:
        """Bytes served under ``from_id`` (a reservation) count for lease ``to_id``."""
        moved = self._served.pop(from_id, 0)
        if moved:
            self._served[to_id] = self._served.get(to_id, 0) + moved

    def forget(self, lease_id: int) -> None:
        """The lease ended: its count goes."""
        self._served.pop(lease_id, None)
