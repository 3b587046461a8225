"""Results of units: chunked uploads, Freivalds' check, storage and delivery.

The pool's ``work.result`` handler feeds each chunk to :meth:`ResultDesk.receive` (fast,
in memory, bounded by the unit's result size). When the final chunk is in, it runs
:meth:`ResultDesk.check` in a worker thread: Freivalds' test in exact int64 with a fresh
unpredictable ``x`` (``freivalds_rounds`` rounds, each false-accepting with p ≤ 2⁻¹⁶).
A failing C rejects the lease at once (held shares void, the unit goes back to the
queue). A passing C is stored as a blob and comes back as :class:`Passed` with the
lease's held shares: the caller credits them to the ledger, *then* calls
:meth:`ResultDesk.complete` (unit done), so that a crash in between costs at worst a
recomputed unit, never an acknowledged share.
When every unit of an item is verified, the customer's product is assembled into one
``.npy`` (int32, m×n) blob, written through a memory map so it never needs two copies.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.blobstore import BlobStore
from pool.useful.queue import OPEN_STATES, Lease, LeaseEnd, LeaseError, WorkQueue
from protocol.denoise import freivalds
from protocol.errors import ErrorCode, ProtocolError
from protocol.useful import RESULT_DTYPE, ChunkAssembler, assemble, decode_result


@dataclass(frozen=True)
class Receipt:
    """The answer to one result chunk: bytes held so far, and whether the upload is whole."""

    received: int
    complete: bool


@dataclass(frozen=True)
class Verdict:
    """The outcome of a whole result: ``pass``, ``fail`` (wrong product) or ``malformed``.

    ``end`` carries the lease's held shares: to credit on ``pass``, void otherwise.
    ``delivered`` is the item's product blob when this result completed the item.
    """

    outcome: str
    end: LeaseEnd
    reason: str | None = None
    delivered: bytes | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"


@dataclass(frozen=True)
class Passed:
    """A result that passed the check and is stored; its lease is not completed yet.

    ``shares`` are the lease's held shares (JSON records): credit them, then
    :meth:`ResultDesk.complete`.
    """

    lease: Lease
    result_blob: bytes
    shares: list[Any]


class ResultDesk:
    """Takes unit results from sessions, checks them, and delivers finished products."""

    def __init__(
        self,
        queue: WorkQueue,
        blobs: BlobStore,
        config: UsefulConfig | None = None,
        metrics: UsefulMetrics | None = None,
    ) -> None:
        self.queue = queue
        self.blobs = blobs
        self.config = config or queue.config
        self.metrics = metrics
        self._uploads: dict[int, ChunkAssembler] = {}

    def receive(
        self, lease: Lease, session: str, unit: bytes, offset: int, data: bytes, final: bool
    ) -> Receipt:
        """Take one ``work.result`` chunk for ``lease``; ``ProtocolError`` if out of place.

        A chunk that is refused drops the partial upload (the worker starts again at 0).
        """
        if lease.session != session:
            raise ProtocolError(
                "work.result: this job's unit is leased to another session", code=ErrorCode.STALE
            )
        if lease.state != "active":
            self._uploads.pop(lease.id, None)
            raise ProtocolError(
                f"work.result: the lease of this job is {lease.state}", code=ErrorCode.STALE
            )
        if unit != lease.unit.unit_id:
            raise ProtocolError("work.result: params.unit is not the unit of this job")
        if len(data) > self.config.chunk_max:
            raise ProtocolError(
                f"work.result: params.data is {len(data)} bytes, over {self.config.chunk_max}"
            )
        upload = self._uploads.get(lease.id)
        if upload is None:
            upload = ChunkAssembler(lease.unit.plan.result_bytes, "work.result")
            self._uploads[lease.id] = upload
        try:
            upload.feed(offset, data, final)
        except ProtocolError:
            self._uploads.pop(lease.id, None)
            raise
        return Receipt(upload.received, upload.done)

    def forget(self, lease_id: int) -> None:
        """Drop a partial upload (the lease ended)."""
        self._uploads.pop(lease_id, None)

    def take_upload(self, lease_id: int) -> bytes:
        """The whole uploaded result of ``lease_id`` (after a ``complete`` receipt)."""
        upload = self._uploads.pop(lease_id, None)
        if upload is None or not upload.done:
            raise ProtocolError("work.result: no complete result for this lease")
        return upload.value()

    def check(self, lease_id: int, raw: bytes) -> Verdict | Passed:
        """Check the unit's C (padded, int32 LE): a failing one rejects the lease (a
        :class:`Verdict`), a passing one is stored (:class:`Passed`, lease still open).

        CPU work: run it in a worker thread. Raises :class:`LeaseError` if the lease is
        neither active nor delivered.
        """
        lease = self.queue.get_lease(lease_id)
        if lease.state not in OPEN_STATES:
            raise LeaseError(f"lease {lease_id} is {lease.state}, not active")
        unit = lease.unit
        try:
            c = decode_result(raw, unit.plan)
        except ProtocolError as exc:
            return self._reject(lease, "malformed", str(exc))
        a = self.blobs.matrix(unit.a_blob)
        bt = self.blobs.matrix(unit.b_blob)
        rng = np.random.default_rng(secrets.randbits(128))
        if not freivalds(a, bt, c, self.config.freivalds_rounds, rng):
            return self._reject(lease, "fail", "the product does not match (Freivalds)")
        result_blob = self.blobs.put(raw)
        return Passed(lease, result_blob, self.queue.held_shares(lease.id))

    def complete(self, passed: Passed) -> Verdict:
        """Mark a passed unit done (after its held shares were credited); assemble the
        item's product when it was the last unit. ``end.shares`` are every share the
        lease held (normally ``passed.shares``)."""
        end = self.queue.complete(passed.lease.id, passed.result_blob)
        if self.metrics is not None:
            self.metrics.result_checked("pass", passed.lease.unit.plan.macs)
        delivered = self.assemble(passed.lease.unit.item) if end.item_done else None
        return Verdict("pass", end, None, delivered)

    def _reject(self, lease: Lease, outcome: str, reason: str) -> Verdict:
        end = self.queue.reject(lease.id, reason)
        if self.metrics is not None:
            self.metrics.result_checked(outcome)
        return Verdict(outcome, end, reason)

    def assemble(self, item_id: str) -> bytes:
        """Write the item's product C (m×n int32 ``.npy``) as a blob and mark the item done."""
        status = self.queue.status(item_id)
        units = self.queue.units(item_id)
        fd, tmp = tempfile.mkstemp(dir=self.blobs.root, prefix=".tmp-", suffix=".npy")
        os.close(fd)
        path = Path(tmp)
        try:
            out = np.lib.format.open_memmap(
                path, mode="w+", dtype=RESULT_DTYPE, shape=(status.m, status.n)
            )
            for unit in units:
                if unit.result_blob is None:
                    raise ProtocolError(f"unit {unit.plan.index} of {item_id} has no result")
                c = decode_result(self.blobs.read(unit.result_blob), unit.plan)
                assemble(out, unit.plan, c)
            out.flush()
            del out
            bid = self.blobs.put_file(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.queue.finish_item(item_id, bid)
        return bid

    def recover(self) -> list[str]:
        """Assemble every item left whole but undelivered by a crash; returns their ids."""
        done = self.queue.items_to_assemble()
        for item_id in done:
            self.assemble(item_id)
        return done
