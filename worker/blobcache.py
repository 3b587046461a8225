"""Operand blobs on the worker: verified chunked download and a size-bounded disk cache.

A blob workload's job names its operands by content hash (``source.a``, ``source.b``) and
commits to their rows (``a_root``, ``b_root``). The worker never trusts a blob it has not
verified: :func:`verify_blob` checks the size (rows × k), the BLAKE3 content hash, every
entry in [-64, 64] and the row Merkle root, and only a :class:`VerifiedBlob` can enter the
:class:`BlobCache` or be mined on.

:class:`BlobDownload` is the sans-IO fetch: ``next_request()`` says which chunk to ask
for (``work.get_blob``), ``feed()`` takes the answer and refuses a chunk that is not the
one asked for; a tampered chunk makes the finished blob fail verification and the whole
download is rejected (:class:`BlobRejected`). :func:`fetch_blob` drives it over any
``get_chunk`` coroutine (the worker client's ``work.get_blob`` request).

The cache keeps operands by content hash across units, under ``dir`` up to ``max_bytes``,
evicting the least recently used (every load or store is a use; file mtimes, so the order
survives restarts) but never a pinned blob (the operands of the unit being mined), so a
unit's Bᵀ stays while the A blocks change. A blob is re-hashed when it is loaded. A
prefetched blob (SPEC §12.7 ``next``) enters with :meth:`BlobCache.adopt`, checked by its
content hash only; its rows are checked against the first job that names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio

from protocol.errors import ProtocolError
from protocol.merkle import rows_root
from protocol.messages import BlobSource, WorkSpec
from protocol.useful import ChunkAssembler, blob_id
from protocol.workload import check_entries

GetChunk = Callable[[bytes, int, int], Awaitable[tuple[bytes, int]]]
"""``await get_chunk(blob_id, offset, length) -> (data, total)``: one ``work.get_blob``."""


class BlobRejected(Exception):
    """A blob (or a chunk of it) that does not match what the job commits to."""


@dataclass(frozen=True)
class BlobSpec:
    """What a job says about an operand blob: id, matrix shape (rows × k) and row root."""

    blob_id: bytes
    rows: int
    k: int
    rows_root: bytes

    @property
    def size(self) -> int:
        return self.rows * self.k

    @classmethod
    def operands(cls, work: WorkSpec) -> tuple[BlobSpec, BlobSpec]:
        """The A and Bᵀ specs of a ``WorkSpec`` with a blob source."""
        source = work.source
        if not isinstance(source, BlobSource):
            raise TypeError(f"work has a {type(source).__name__}, not a blob source")
        return (
            cls(source.a, work.m, work.k, work.a_root),
            cls(source.b, work.n, work.k, work.b_root),
        )


@dataclass(frozen=True)
class VerifiedBlob:
    """A blob whose bytes match its spec; only :func:`verify_blob` makes one."""

    spec: BlobSpec
    matrix: np.ndarray  # rows × k int8, read-only


def verify_blob(raw: bytes, spec: BlobSpec) -> VerifiedBlob:
    """Check ``raw`` against ``spec`` (size, hash, entry range, row root) or raise."""
    short = spec.blob_id.hex()[:16]
    if len(raw) != spec.size:
        raise BlobRejected(f"blob {short}… is {len(raw)} bytes, expected {spec.size}")
    if blob_id(raw) != spec.blob_id:
        raise BlobRejected(f"blob {short}…: content does not match its hash")
    matrix = np.frombuffer(raw, dtype=np.int8).reshape(spec.rows, spec.k)
    try:
        check_entries(matrix, f"blob {short}…")
    except ProtocolError as exc:
        raise BlobRejected(str(exc)) from None
    if rows_root(matrix) != spec.rows_root:
        raise BlobRejected(f"blob {short}…: rows do not match the job's row root")
    return VerifiedBlob(spec, matrix)


class BlobDownload:
    """Sans-IO chunked download of one blob; chunks must come back exactly as asked."""

    def __init__(self, spec: BlobSpec, chunk_max: int) -> None:
        if chunk_max < 1:
            raise ValueError("chunk_max must be positive")
        self.spec = spec
        self.chunk_max = chunk_max
        self._bytes = ChunkAssembler(spec.size, f"blob {spec.blob_id.hex()[:16]}…")
        self._asked: tuple[int, int] | None = None

    @property
    def received(self) -> int:
        return self._bytes.received

    @property
    def done(self) -> bool:
        return self._bytes.done

    def next_request(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the next ``work.get_blob``, or None when all is in."""
        self._asked = self._bytes.next_request(self.chunk_max)
        return self._asked

    def feed(self, offset: int, data: bytes, total: int) -> None:
        """Take the pool's answer to the last request; raises :class:`BlobRejected`."""
        if self._asked is None or offset != self._asked[0]:
            raise BlobRejected(f"chunk at offset {offset} was not asked for")
        if total != self.spec.size:
            raise BlobRejected(
                f"pool says the blob is {total} bytes, the job says {self.spec.size}"
            )
        if len(data) != self._asked[1]:
            raise BlobRejected(
                f"chunk at {offset} is {len(data)} bytes, asked for {self._asked[1]}"
            )
        self._asked = None
        end = offset + len(data)
        try:
            self._bytes.feed(offset, data, end == self.spec.size)
        except ProtocolError as exc:
            raise BlobRejected(str(exc)) from None

    def result(self) -> VerifiedBlob:
        """The verified blob once every chunk is in; :class:`BlobRejected` if it is not."""
        return verify_blob(self._bytes.value(), self.spec)


async def fetch_blob(
    spec: BlobSpec,
    get_chunk: GetChunk,
    chunk_max: int,
    on_bytes: Callable[[int], None] | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> VerifiedBlob:
    """Download and verify one blob with ``get_chunk`` (one request in flight at a time)."""
    download = BlobDownload(spec, chunk_max)
    while (request := download.next_request()) is not None:
        offset, length = request
        data, total = await get_chunk(spec.blob_id, offset, length)
        download.feed(offset, data, total)
        if on_bytes is not None:
            on_bytes(len(data))
    return await trio.to_thread.run_sync(download.result, limiter=limiter)


class BlobCache:
    """Verified blobs on disk under ``directory``, at most ``max_bytes`` in all (LRU)."""

    def __init__(
        self, directory: str | Path, max_bytes: int, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.on_bytes = on_bytes
        """Called with the byte count of every downloaded chunk
        (``matmine_worker_blob_bytes_total``)."""
        self._last_use_ns = 0
        self.pinned: frozenset[bytes] = frozenset()
        """Blob ids eviction leaves alone (the current unit's operands)."""
        for leftover in self.dir.glob(".tmp-*"):  # half-written by a worker that crashed
            leftover.unlink(missing_ok=True)

    def _touch(self, path: Path) -> None:
        """Mark ``path`` most recently used: an mtime strictly after every earlier use
        (kernel file times are coarse; two uses in one tick must still be ordered)."""
        now = max(time.time_ns(), self._last_use_ns + 1)
        self._last_use_ns = now
        os.utime(path, ns=(now, now))

    def _path(self, bid: bytes) -> Path:
        return self.dir / f"{bid.hex()}.blob"

    def _files(self) -> list[Path]:
        return list(self.dir.glob("*.blob"))

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def __contains__(self, bid: bytes) -> bool:
        return self._path(bid).exists()

    def load(self, spec: BlobSpec) -> VerifiedBlob | None:
        """The cached blob verified again against ``spec``; None if absent or spoiled.

        A cached file that no longer verifies is deleted (and None returned); a blob whose
        bytes are right but whose rows do not match the job's root raises
        :class:`BlobRejected` (the job is inconsistent, not the cache).
        """
        path = self._path(spec.blob_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        meta = self._read_meta(path)
        if len(raw) != spec.size or blob_id(raw) != spec.blob_id:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            return None
        if meta != (spec.rows, spec.k, spec.rows_root):
            verified = verify_blob(raw, spec)  # raises BlobRejected: the job lies about rows
            self._write_meta(path, spec)
        else:
            matrix = np.frombuffer(raw, dtype=np.int8).reshape(spec.rows, spec.k)
            verified = VerifiedBlob(spec, matrix)
        self._touch(path)
        return verified

    def store(self, blob: VerifiedBlob) -> bool:
        """Keep a verified blob, evicting the least recently used; False if it cannot fit."""
        if not isinstance(blob, VerifiedBlob):
            raise TypeError("only a VerifiedBlob can be cached")
        size = blob.spec.size
        if size > self.max_bytes:
            return False
        path = self._path(blob.spec.blob_id)
        if path.exists():
            self._touch(path)
            return True
        if not self._evict(self.max_bytes - size):
            return False
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob.matrix.tobytes())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._touch(path)
        self._write_meta(path, blob.spec)
        return True

    def pin(self, *bids: bytes) -> None:
        """Keep ``bids`` (and only them) from eviction, e.g. the operands being mined."""
        self.pinned = frozenset(bids)

    def room(self) -> int:
        """The largest blob the cache could take now: its bound less the pinned blobs."""
        pinned = 0
        for bid in self.pinned:
            with contextlib.suppress(FileNotFoundError):
                pinned += self._path(bid).stat().st_size
        return max(0, self.max_bytes - pinned)

    def adopt(self, bid: bytes, part: Path, size: int) -> bool:
        """Move a downloaded file whose bytes hash to ``bid`` into the cache (no row
        metadata: the first :meth:`load` verifies its rows); False if it cannot fit beside
        the pinned blobs (``part`` is then deleted)."""
        path = self._path(bid)
        try:
            if path.exists():
                self._touch(path)
                return True
            if size > self.max_bytes or not self._evict(self.max_bytes - size):
                return False
            os.replace(part, path)
            path.with_suffix(".json").unlink(missing_ok=True)
            self._touch(path)
            return True
        finally:
            part.unlink(missing_ok=True)

    def _evict(self, keep_at_most: int) -> bool:
        """Delete least recently used unpinned blobs until at most ``keep_at_most`` bytes
        are left; False if the pinned ones alone are more."""
        files = []  # (mtime, size, path); a file another process removed meanwhile is skipped
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        files.sort()
        pinned = {bid.hex() for bid in self.pinned}
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= keep_at_most:
                break
            if path.stem in pinned:
                continue
            total -= size
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        return total <= keep_at_most

    @staticmethod
    def _write_meta(path: Path, spec: BlobSpec) -> None:
        path.with_suffix(".json").write_text(
            json.dumps({"rows": spec.rows, "k": spec.k, "rows_root": spec.rows_root.hex()})
        )

    @staticmethod
    def _read_meta(path: Path) -> tuple[int, int, bytes] | None:
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            return meta["rows"], meta["k"], bytes.fromhex(meta["rows_root"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    async def ensure(
        self,
        spec: BlobSpec,
        get_chunk: GetChunk,
        chunk_max: int,
        limiter: trio.CapacityLimiter | None = None,
    ) -> VerifiedBlob:
        """The blob from the cache, or fetched with ``get_chunk``, verified, then cached."""
        cached = await trio.to_thread.run_sync(self.load, spec, limiter=limiter)
        if cached is not None:
            return cached
        blob = await fetch_blob(spec, get_chunk, chunk_max, self.on_bytes, limiter)
        await trio.to_thread.run_sync(self.store, blob, limiter=limiter)
        return blob
