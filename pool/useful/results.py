"""Results of units: chunked uploads, Freivalds' check, storage and delivery.

The pool's ``work.result`` handler feeds each chunk to :meth:`ResultDesk.receive` (fast,
on the event loop: order and size checked, the bytes queued); every ``FLUSH_BYTES`` and
on the final chunk it writes them with :meth:`ResultDesk.pending` through the lease's
:class:`~pool.useful.judge.ResultStream` in a worker thread, which spools them and runs
Freivalds' test on the rows they complete (exact, ``freivalds_rounds`` rounds with a fresh
unpredictable ``x``, each false-accepting with p ≤ 2⁻¹⁶). The HTTP data plane writes its
``PUT`` bodies through a stream of its own (:meth:`ResultDesk.open_stream`): one judge.
:meth:`ResultDesk.check` takes the finished stream (or whole bytes, judged the same way):
a failing C rejects the lease at once (held shares void, the unit goes back to the queue).
A passing C moves into the blob store and comes back as :class:`Passed` with the lease's
held shares: the caller credits them to the ledger, *then* calls
:meth:`ResultDesk.complete` (unit done), so that a crash in between costs at worst a
recomputed unit, never an acknowledged share.
When every unit of an item is verified, the customer's product is assembled into one
``.npy`` (int32, m×n) blob, written through a memory map so it never needs two copies.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pool.useful import UsefulConfig, UsefulMetrics
from pool.useful.blobstore import BlobStore
from pool.useful.judge import ResultStream
from pool.useful.queue import OPEN_STATES, Lease, LeaseEnd, LeaseError, WorkQueue
from protocol.errors import ErrorCode, ProtocolError
from protocol.useful import RESULT_DTYPE, assemble, decode_result

FLUSH_BYTES = 1 << 20
"""``work.result`` bytes queued before they are spooled and judged (in a worker thread)."""


@dataclass(frozen=True)
class Receipt:
    """The answer to one result chunk: bytes held so far, and whether the upload is whole."""

    received: int
    complete: bool
    flush: bool = False
    """Queued bytes should be written now (:meth:`ResultDesk.pending`)."""


@dataclass
class _Chunks:
    """A ``work.result`` upload in progress: its stream and the chunks not written yet."""

    stream: ResultStream
    queued: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    done: bool = False

    @property
    def received(self) -> int:
        return self.stream.received + self.queued_bytes


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
        self._uploads: dict[int, _Chunks] = {}

    def open_stream(self, lease: Lease) -> ResultStream:
        """A new spooled, judged upload of ``lease``'s result (close it when dropped)."""
        return ResultStream(self.blobs, lease, self.config.freivalds_rounds)

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
            self.forget(lease.id)
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
        if upload is not None and upload.stream.closed:  # its spool failed: start again
            self.forget(lease.id)
            upload = None
        if upload is None:
            upload = _Chunks(self.open_stream(lease))
            self._uploads[lease.id] = upload
        try:
            self._order(upload, offset, len(data), final)
        except ProtocolError:
            self.forget(lease.id)
            raise
        if data:
            upload.queued.append(data)
            upload.queued_bytes += len(data)
        upload.done = final
        return Receipt(upload.received, final, final or upload.queued_bytes >= FLUSH_BYTES)

    @staticmethod
    def _order(upload: _Chunks, offset: int, size: int, final: bool) -> None:
        what, total, received = "work.result", upload.stream.total, upload.received
        if upload.done:
            raise ProtocolError(f"{what}: chunk after the final one")
        if offset != received:
            raise ProtocolError(f"{what}: chunk at offset {offset}, expected offset {received}")
        end = offset + size
        if end > total:
            raise ProtocolError(f"{what}: chunk ends at {end}, past the total of {total} bytes")
        if not size and not (final and end == total):
            raise ProtocolError(f"{what}: empty chunk")
        if final != (end == total):
            state = "final" if final else "not final"
            raise ProtocolError(f"{what}: chunk ending at {end} of {total} is marked {state}")

    def pending(self, lease_id: int) -> Callable[[], None]:
        """Takes the queued chunks of ``lease_id``'s upload (event loop) and returns what
        writes them, in that order, through its stream (call it in a worker thread; it
        raises ``ProtocolError``: 21 if the lease ended meanwhile, 20 if the spool failed,
        the upload then starting again at 0)."""
        upload = self._uploads.get(lease_id)
        if upload is None or not upload.queued:
            return lambda: None
        stream, parts = upload.stream, upload.queued
        upload.queued, upload.queued_bytes = [], 0

        def write() -> None:
            try:
                stream.write(parts)
            except ValueError:  # the stream was dropped: the lease ended
                raise ProtocolError(
                    "work.result: the lease of this job ended", code=ErrorCode.STALE
                ) from None
            except OSError as exc:  # the stream dropped itself
                raise ProtocolError(
                    f"work.result: the pool could not spool the result ({exc}): "
                    "send it again from offset 0",
                    code=ErrorCode.OTHER,
                ) from None

        return write

    def forget(self, lease_id: int) -> None:
        """Drop a partial upload (the lease ended)."""
        upload = self._uploads.pop(lease_id, None)
        if upload is not None:
            upload.stream.close()

    def take_upload(self, lease_id: int) -> ResultStream:
        """The whole uploaded result of ``lease_id`` (after a ``complete`` receipt), its
        queued bytes written; pass it to :meth:`check`."""
        upload = self._uploads.get(lease_id)
        if upload is None or not upload.done:
            raise ProtocolError("work.result: no complete result for this lease")
        self.pending(lease_id)()  # nothing left after the final chunk's receipt
        del self._uploads[lease_id]
        return upload.stream

    def check(self, lease_id: int, result: ResultStream | bytes) -> Verdict | Passed:
        """Judge the unit's C (padded, int32 LE): a finished :class:`ResultStream`, or its
        bytes (judged through a stream of their own). A failing one rejects the lease (a
        :class:`Verdict`), a passing one is stored (:class:`Passed`, lease still open);
        the stream is closed either way.

        A stream's verdict is ready: this only stores it. Raises :class:`LeaseError` if
        the lease is neither active nor delivered.
        """
        stream = result if isinstance(result, ResultStream) else None
        try:
            lease = self.queue.get_lease(lease_id)
            if lease.state not in OPEN_STATES:
                raise LeaseError(f"lease {lease_id} is {lease.state}, not active")
            if stream is None:
                assert not isinstance(result, ResultStream)
                if len(result) != lease.unit.plan.result_bytes:
                    try:
                        decode_result(bytes(result), lease.unit.plan)
                    except ProtocolError as exc:
                        return self._reject(lease, "malformed", str(exc))
                stream = self.open_stream(lease)
                stream.write([result])
            if stream.lease_id != lease.id or not stream.done:
                return self._reject(lease, "malformed", stream.verdict() or "not this lease's")
            failure = stream.verdict()
            if failure is not None:
                return self._reject(lease, "fail", failure)
            result_blob = stream.keep()
            return Passed(lease, result_blob, self.queue.held_shares(lease.id))
        finally:
            if stream is not None:
                stream.close()

    def complete(self, passed: Passed) -> Verdict:
        """Mark a passed unit done (after its held shares were credited); assemble the
        item's product when it was the last unit. ``end.shares`` are every share the
        lease held (normally ``passed.shares``)."""
        end = self.queue.complete(passed.lease.id, passed.result_blob)
        if self.metrics is not None:
            owner = next(
                ((s["address"], s["worker"]) for s in passed.shares if "address" in s), None
            )
            self.metrics.result_checked("pass", passed.lease.unit.plan.macs, owner)
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
