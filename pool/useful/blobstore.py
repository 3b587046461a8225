"""Content-addressed blobs on disk: unit operands (A rows, Bᵀ rows) and results.

A blob's id is BLAKE3 of its raw bytes (:func:`protocol.useful.blob_id`); it lives at
``root/ab/abcdef….blob`` and is written once, atomically (temporary file, fsync,
rename), so a crash never leaves a half blob under its id. An operand blob has a
sidecar ``….json`` with its matrix shape and row Merkle root (``rows``, ``k``,
``rows_root`` hex), which is what a job's ``a_root``/``b_root`` are.

Synchronous file I/O: the pool calls it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from blake3 import blake3

from protocol.errors import ErrorCode, ProtocolError
from protocol.merkle import rows_root
from protocol.useful import blob_id


class BlobNotFound(KeyError):
    """No blob with this id in the store."""


@dataclass(frozen=True)
class BlobInfo:
    """An operand blob: its id, matrix shape (rows × k, int8) and row Merkle root."""

    blob_id: bytes
    rows: int
    k: int
    rows_root: bytes

    @property
    def size(self) -> int:
        return self.rows * self.k


class BlobStore:
    """Blobs under ``root``, named by content hash."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # a reused blob is never collected under its feet

    def path(self, bid: bytes) -> Path:
        """Where blob ``bid`` lives (whether or not it exists)."""
        if len(bid) != 32:
            raise ValueError("a blob id is 32 bytes")
        h = bid.hex()
        return self.root / h[:2] / f"{h}.blob"

    @property
    def upload_dir(self) -> Path:
        """Where uploads being received are spooled (nameless temporary files)."""
        return self.root / "uploads"

    def _meta_path(self, bid: bytes) -> Path:
        return self.path(bid).with_suffix(".json")

    def __contains__(self, bid: bytes) -> bool:
        return len(bid) == 32 and self.path(bid).exists()

    def _write_atomic(self, target: Path, parts: Iterable[bytes | memoryview]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _reuse(self, target: Path) -> bool:
        """Whether ``target`` exists; if so, it is touched (new again for :meth:`collect`)."""
        with self._lock:
            try:
                os.utime(target)
                return True
            except FileNotFoundError:
                return False

    def put(self, data: bytes | memoryview) -> bytes:
        """Store ``data``; returns its id. Storing the same bytes again only touches it."""
        bid = blob_id(data)
        target = self.path(bid)
        if not self._reuse(target):
            self._write_atomic(target, [data])
        return bid

    def put_matrix(self, matrix: np.ndarray) -> BlobInfo:
        """Store an int8 operand matrix (rows × k) with its row Merkle root beside it."""
        if matrix.dtype != np.int8 or matrix.ndim != 2:
            raise ValueError("an operand blob is a 2-D int8 matrix")
        matrix = np.ascontiguousarray(matrix)
        bid = self.put(matrix.data)
        info = BlobInfo(bid, matrix.shape[0], matrix.shape[1], rows_root(matrix))
        meta = self._meta_path(bid)
        if not meta.exists():
            text = json.dumps({"rows": info.rows, "k": info.k, "rows_root": info.rows_root.hex()})
            self._write_atomic(meta, [text.encode()])
        return info

    def put_file(self, source: Path, bid: bytes | None = None) -> bytes:
        """Move the finished file ``source`` into the store under its content id (``bid``
        when the caller hashed its bytes on the way in, else read and hashed here)."""
        if bid is None:
            h = blake3()
            with open(source, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            bid = h.digest()
        target = self.path(bid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._reuse(target):
            source.unlink()
        else:
            os.replace(source, target)
        return bid

    def info(self, bid: bytes) -> BlobInfo:
        """Shape and row root of operand blob ``bid``."""
        try:
            meta = json.loads(self._meta_path(bid).read_text())
        except FileNotFoundError:
            raise BlobNotFound(bid.hex()) from None
        return BlobInfo(bid, meta["rows"], meta["k"], bytes.fromhex(meta["rows_root"]))

    def size(self, bid: bytes) -> int:
        try:
            return self.path(bid).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(bid.hex()) from None

    def read(self, bid: bytes) -> bytes:
        """All bytes of blob ``bid``."""
        try:
            return self.path(bid).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(bid.hex()) from None

    def matrix(self, bid: bytes) -> np.ndarray:
        """Operand blob ``bid`` as its int8 matrix (read-only view of the file's bytes)."""
        info = self.info(bid)
        return np.frombuffer(self.read(bid), dtype=np.int8).reshape(info.rows, info.k)

    def read_chunk(
        self, bid: bytes, offset: int, length: int, max_length: int
    ) -> tuple[bytes, int]:
        """``(data, total)``: up to ``length`` bytes of ``bid`` from ``offset``.

        The answer to ``work.get_blob``. Raises ``ProtocolError`` naming the field for a
        length over ``max_length`` or an offset past the end, and for an unknown blob.
        """
        if not 1 <= length <= max_length:
            raise ProtocolError(
                f"work.get_blob: params.length must be in [1, {max_length}], got {length}"
            )
        try:
            with open(self.path(bid), "rb") as f:
                total = os.fstat(f.fileno()).st_size
                if offset > total:
                    raise ProtocolError(
                        f"work.get_blob: params.offset {offset} is past the end ({total} bytes)"
                    )
                f.seek(offset)
                return f.read(length), total
        except (FileNotFoundError, ValueError):
            raise ProtocolError(
                f"work.get_blob: no blob {bid.hex()[:16]}… on this pool", code=ErrorCode.OTHER
            ) from None

    def delete(self, bid: bytes) -> None:
        """Remove blob ``bid`` (and its sidecar) if present."""
        self.path(bid).unlink(missing_ok=True)
        self._meta_path(bid).unlink(missing_ok=True)

    def ids(self) -> list[bytes]:
        """Ids of every blob in the store."""
        return [bytes.fromhex(p.stem) for p in self.root.glob("??/*.blob")]

    def collect(self, keep: set[bytes], older_than: float | None = None) -> int:
        """Delete every blob not in ``keep`` (and, with ``older_than``, last stored before
        that Unix time: a blob being stored for an item not yet recorded is newer); returns
        the number deleted."""
        gone = 0
        for bid in self.ids():
            if bid in keep:
                continue
            with self._lock:
                try:
                    if older_than is not None and self.path(bid).stat().st_mtime >= older_than:
                        continue
                except FileNotFoundError:
                    continue
                self.delete(bid)
            gone += 1
        return gone

    def total_bytes(self) -> int:
        """Bytes of every blob in the store."""
        total = 0
        for path in self.root.glob("??/*.blob"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total
