"""Judging a unit's result while it streams in: spool, BLAKE3 and Freivalds row by row.

One :class:`ResultStream` per upload of a lease's padded C, for both paths (the HTTP
``PUT`` and the stratum ``work.result`` chunks). :meth:`ResultStream.write` (a worker
thread) appends bytes to a spool file under the blob store's ``uploads`` dir, hashes them,
and checks every whole row of C they complete against
:class:`protocol.denoise.FreivaldsRows` (a partial row is carried to the next write). So:

- the spool file is the only full copy of C; the judge holds one write's rows, a carried
  partial row, and the ``(m + k)·rounds`` integers of the check;
- Freivalds' vectors are drawn by the pool (``secrets``) when the upload's first bytes
  arrive, never sent: over HTTP the ``X-Result-Hash`` committed the whole C before, and on
  either path nothing about ``x`` reaches the worker before its verdict;
- the judge has taken exactly the bytes written to the spool (``received``), so an upload
  resumed at ``received`` continues the same check; an upload started again gets a new
  stream (new file, new ``x``);
- the verdict is ready when the last byte is in: :meth:`ResultStream.verdict`; a passing
  result moves into the blob store by rename (:meth:`ResultStream.keep`), unread.

Synchronous file and numpy work: call :meth:`write` and :meth:`keep` through
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from blake3 import blake3

from pool.useful.blobstore import BlobStore
from pool.useful.queue import Lease
from protocol.denoise import FreivaldsRows
from protocol.useful import RESULT_DTYPE

MISMATCH = "the product does not match (Freivalds)"
SPOOL_PREFIX = ".result-"


def operand(blobs: BlobStore, bid: bytes) -> np.ndarray:
    """Operand blob ``bid`` as a read-only memory map (never read whole into memory)."""
    info = blobs.info(bid)
    return np.memmap(blobs.path(bid), dtype=np.int8, mode="r", shape=(info.rows, info.k))


class ResultStream:
    """One upload of a lease's padded C: spooled, hashed and judged as it arrives."""

    def __init__(self, blobs: BlobStore, lease: Lease, rounds: int) -> None:
        unit = lease.unit
        self.blobs = blobs
        self.lease_id = lease.id
        self.total = unit.plan.result_bytes
        self.cols = unit.shape.n
        self.row_bytes = self.cols * RESULT_DTYPE.itemsize
        self._a_blob, self._b_blob, self._rounds = unit.a_blob, unit.b_blob, rounds
        directory = blobs.upload_dir
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=SPOOL_PREFIX)
        self.path = Path(name)
        self.file = os.fdopen(fd, "w+b")
        self.hasher = blake3()
        self.received = 0
        self.judged_rows = 0
        self.failure: str | None = None
        self.judge_seconds = 0.0
        """Time spent on Freivalds' test so far (the vectors, the rows), not on the spool."""
        self._check: FreivaldsRows | None = None
        self._carry = bytearray()
        self._lock = threading.Lock()  # writes of one stream never interleave
        self.closed = False
        self.kept = False

    @property
    def done(self) -> bool:
        return self.received == self.total

    @property
    def carried(self) -> int:
        """Bytes of a partial row held until its rest arrives (< one row)."""
        return len(self._carry)

    def write(self, parts: Iterable[bytes | memoryview]) -> None:
        """Append ``parts`` to the spool and judge the rows they complete (worker thread).

        ``ValueError`` if they run past the result's end (nothing of them is taken) or the
        upload was dropped; ``OSError`` if the spool cannot take them (the upload is then
        dropped: start again at 0)."""
        with self._lock:
            if self.closed:
                raise ValueError("the upload was dropped")
            views = [memoryview(p).cast("B") for p in parts if len(p)]
            size = sum(len(v) for v in views)
            if self.received + size > self.total:
                raise ValueError(f"the result is {self.total} bytes; this runs past it")
            try:
                for view in views:
                    self.file.write(view)
                    self.hasher.update(view)
                self.file.flush()  # in the file (not a buffer) before the judge takes it
                if size and hasattr(os, "posix_fadvise"):  # start its writeback early
                    os.posix_fadvise(
                        self.file.fileno(), self.received, size, os.POSIX_FADV_DONTNEED
                    )
            except OSError:  # the spool and the hash may hold part of it: drop the upload
                self.closed = True
                self.path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # its buffer cannot be written either
                    self.file.close()
                raise
            self.received += size
            start = time.perf_counter()
            self._judge(views)
            self.judge_seconds += time.perf_counter() - start

    def _judge(self, parts: list[memoryview]) -> None:
        if not parts:  # a failed row does not stop the check: its timing tells nothing
            return
        if self._check is None:  # drawn now, after the worker fixed its C
            a = operand(self.blobs, self._a_blob)
            bt = operand(self.blobs, self._b_blob)
            rng = np.random.default_rng(secrets.randbits(128))
            self._check = FreivaldsRows(a, bt, self._rounds, rng)
        if not self._carry and len(parts) == 1:
            data = parts[0]
        else:  # one copy, into the carried row's buffer
            for part in parts:
                self._carry += part
            data = memoryview(self._carry)
        whole = len(data) - len(data) % self.row_bytes
        if whole:
            c = np.frombuffer(data[:whole], dtype=RESULT_DTYPE).reshape(-1, self.cols)
            if not self._check.rows(self.judged_rows, c):
                self.failure = MISMATCH
            self.judged_rows += len(c)
            del c
        rest = bytes(data[whole:])
        del data
        self._carry = bytearray(rest)

    def digest(self) -> bytes:
        """BLAKE3 of the bytes received so far (of the whole C once :attr:`done`)."""
        return self.hasher.digest()

    def verdict(self) -> str | None:
        """None if the whole C passed Freivalds' test, else the reason it failed."""
        if not self.done:
            return f"the result is incomplete ({self.received}/{self.total} bytes)"
        if self.failure is None and self.judged_rows * self.row_bytes != self.total:
            return MISMATCH  # never: every byte written was judged
        return self.failure

    def keep(self) -> bytes:
        """Move the finished spool into the blob store (no copy); returns its blob id."""
        with self._lock:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.closed = self.kept = True
            return self.blobs.put_file(self.path, self.hasher.digest())

    def close(self) -> None:
        """Drop the upload: close and remove its spool (if not kept); waits for a write."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.file.close()
            if not self.kept:
                self.path.unlink(missing_ok=True)


def sweep_spools(blobs: BlobStore) -> int:
    """Remove result spools a previous run left (its leases are all released)."""
    gone = 0
    directory = blobs.upload_dir
    if directory.is_dir():
        for path in directory.glob(SPOOL_PREFIX + "*"):
            path.unlink(missing_ok=True)
            gone += 1
    return gone
