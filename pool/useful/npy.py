"""One ``.npy`` operand read as it streams in: its header parsed and judged first.

:func:`parse_npy_header` reads a header (at most :data:`MAX_NPY_HEADER` bytes) with
numpy's own parser; :class:`NpyReader` judges its dtype, order and shape
(:func:`check_shape`, :func:`check_pair` against the pool's limits) before a byte of the
array is taken, then hands on the data bytes. Sans-IO: no files, no threads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pool.useful import UsefulConfig
from pool.useful.queue import WorkInputError, WorkLimitError


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickles)."""
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npy_array(raw: bytes) -> np.ndarray:
    """The array of ``.npy`` file bytes (no pickles)."""
    return np.load(io.BytesIO(raw), allow_pickle=False)


MAX_NPY_HEADER = 10_000
"""Longest ``.npy`` header dict accepted (numpy's own ``max_header_size`` default)."""
NPY_MAGIC = b"\x93NUMPY"


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters (for error messages)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class Operand:
    """Where an operand's data lies in the spool: ``shape`` (rows, cols), order, offset."""

    name: str
    shape: tuple[int, int]
    fortran: bool
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1]


def check_shape(name: str, shape: tuple[int, ...], config: UsefulConfig) -> tuple[int, int]:
    """``shape`` as (rows, cols) if it can be operand ``name`` ("A" or "B"), else raise.

    Plain Python integers throughout: a shape such as (2**62, 2**62) is judged as it is,
    never wrapped around.
    """
    if len(shape) != 2:
        raise WorkInputError(f"{name} must be 2-D, got shape {one_line(str(shape), 80)}")
    rows, cols = shape
    if rows < 1 or cols < 1:
        raise WorkInputError(
            f"{name} must not be empty or have negative dimensions, "
            f"got shape {one_line(str(shape), 80)}"
        )
    outer, inner = (rows, cols) if name == "A" else (cols, rows)
    dim = "m" if name == "A" else "n"
    if outer > config.max_dim:
        raise WorkLimitError(f"{name}: {dim} = {outer} is over the limit of {config.max_dim}")
    if inner > config.max_k:
        raise WorkLimitError(f"{name}: k = {inner} is over the limit of {config.max_k}")
    if rows * cols > config.max_upload_bytes:
        raise WorkLimitError(
            f"{name} is {rows * cols} bytes, over the limit of {config.max_upload_bytes}"
        )
    return rows, cols


def check_pair(a: tuple[int, int], b: tuple[int, int], config: UsefulConfig) -> None:
    """Raise unless A (m×k) and B (k×n) make a product within the upload limit."""
    if a[1] != b[0]:
        raise WorkInputError(f"inner dimensions differ: A is {a[0]}x{a[1]}, B is {b[0]}x{b[1]}")
    total = a[0] * a[1] + b[0] * b[1]
    if total > config.max_upload_bytes:
        raise WorkLimitError(
            f"A and B are {total} bytes, over the limit of {config.max_upload_bytes}"
        )


def parse_npy_header(raw: bytes, name: str) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of a ``.npy`` whose first bytes are ``raw``.

    None while ``raw`` is too short to hold the whole header; raises
    :class:`WorkInputError` as soon as the bytes cannot start a valid header (bad magic,
    unknown version, a header longer than :data:`MAX_NPY_HEADER`). The header is read by
    numpy's own parser (``ast.literal_eval``, never unpickling).
    """
    bad = f"{name} is not a valid .npy"
    head = raw[: len(NPY_MAGIC)]
    if head != NPY_MAGIC[: len(head)]:
        raise WorkInputError(f"{bad}: it does not start with the .npy magic string")
    if len(raw) < 8:
        return None
    version = (raw[6], raw[7])
    if version not in ((1, 0), (2, 0)):
        raise WorkInputError(f"{bad}: unsupported format version {version[0]}.{version[1]}")
    size_bytes = 2 if version == (1, 0) else 4
    if len(raw) < 8 + size_bytes:
        return None
    hlen = int.from_bytes(raw[8 : 8 + size_bytes], "little")
    if hlen > MAX_NPY_HEADER:
        raise WorkInputError(
            f"{bad}: its header is {hlen} bytes, over the limit of {MAX_NPY_HEADER}"
        )
    if len(raw) < 8 + size_bytes + hlen:
        return None
    f = io.BytesIO(raw[: 8 + size_bytes + hlen])
    try:
        np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f, max_header_size=MAX_NPY_HEADER)
    except Exception as exc:  # ValueError, SyntaxError, RecursionError, ... from the header
        raise WorkInputError(f"{bad}: {one_line(str(exc))}") from None
    return shape, fortran, dtype


class NpyReader:
    """One ``.npy`` streamed in: its header first, judged at once, then its data bytes."""

    def __init__(self, name: str, config: UsefulConfig) -> None:
        self.name = name
        self.config = config
        self._head = bytearray()
        self.header_bytes = 0
        self.operand: Operand | None = None  # set once the header is read
        self.received = 0  # data bytes so far

    @property
    def done(self) -> bool:
        return self.operand is not None and self.received == self.operand.nbytes

    def feed(self, data: memoryview) -> tuple[int, memoryview]:
        """Take what this ``.npy`` needs of ``data``: ``(bytes consumed, array data among
        them)``. Raises as soon as the header is judged bad."""
        used = 0
        if self.operand is None:
            need = 8 + 4 + MAX_NPY_HEADER - len(self._head)
            take = data[:need]
            self._head += take
            parsed = parse_npy_header(bytes(self._head), self.name)
            if parsed is None:
                return len(take), data[:0]
            shape, fortran, dtype = parsed
            hlen = 8 + (2 if self._head[6] == 1 else 4)
            hlen += int.from_bytes(self._head[8:hlen], "little")
            used = len(take) - (len(self._head) - hlen)
            del self._head[hlen:]
            self.header_bytes = hlen
            if dtype.hasobject:
                raise WorkInputError(
                    f"{self.name} must be int8, got an object array (pickled data is never loaded)"
                )
            if dtype != np.int8:
                raise WorkInputError(f"{self.name} must be int8, got {one_line(str(dtype), 60)}")
            shape = check_shape(self.name, shape, self.config)
            self.operand = Operand(self.name, shape, bool(fortran))
        want = self.operand.nbytes - self.received
        chunk = data[used : used + want]
        self.received += len(chunk)
        return used + len(chunk), chunk

    def finish(self) -> Operand:
        """The operand, if all of it arrived; else raise naming what is missing."""
        if self.operand is None:
            raise WorkInputError(
                f"{self.name} is not a valid .npy: its header is cut short "
                f"({len(self._head)} bytes)"
            )
        if not self.done:
            raise WorkInputError(
                f"{self.name}.npy is cut short: {self.received} of {self.operand.nbytes} data bytes"
            )
        return self.operand
