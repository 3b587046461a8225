"""Useful work, sans-IO: splitting a customer's product into units and putting it back.

A customer asks for ``C = A·B`` with A int8 m×k and B int8 k×n (entries in [-64, 64]).
The pool mines on **units**: a block of at most ``unit_m`` rows of A against at most
``unit_n`` columns of B, always with the full k, zero-padded to an mmpow-1 shape
(m, n multiples of 16; k a multiple of r and at least 4r). Zero padding does not change
the product, so the unit's C is cut back to its real rows and columns on delivery.

An operand blob is the raw row-major bytes of a padded unit operand (A rows, or Bᵀ
rows, int8); its id is ``blob_id(raw) = BLAKE3(raw)``. The job names a unit by
``WorkSpec(m, n, k, r, a_root, b_root, BlobSource(a, b))`` and the unit's id is
``unit_id = work_root`` of that spec: a content hash of its shape and both operands.

:class:`ChunkAssembler` puts a byte string back together from bounded chunks (blob
downloads on the worker, result uploads on the pool) and refuses anything that is not
the next expected chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .hashing import H
from .workload import ALLOWED_R, MAX_K, TILE, Shape, check_entries, work_root

DEFAULT_UNIT_M = 1024
DEFAULT_UNIT_N = 1024
RESULT_DTYPE = np.dtype("<i4")
"""A unit's C travels and is stored as little-endian int32, row-major."""


def blob_id(raw: bytes | memoryview) -> bytes:
    """The content id of an operand blob: BLAKE3 of its raw bytes."""
    return H(bytes(raw))


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ≥ ``value`` (and ≥ ``multiple``)."""
    return max(multiple, -(-value // multiple) * multiple)


def padded_k(k: int, r: int) -> int:
    """k zero-padded to a multiple of r and at least 4r."""
    return max(4 * r, round_up(k, r))


def choose_r(k: int, preferred: int = 64) -> int:
    """The slab width for inner dimension ``k``: the least padding, then the largest r.

    Only widths up to ``preferred`` are considered, so a small k gets a small r instead
    of being padded up to 4·preferred.
    """
    if preferred not in ALLOWED_R:
        raise ProtocolError(f"r must be one of {ALLOWED_R}, got {preferred}")
    candidates = [r for r in ALLOWED_R if r <= preferred]
    return min(candidates, key=lambda r: (padded_k(k, r), -r))


@dataclass(frozen=True)
class UnitPlan:
    """One unit: rows ``row0..row0+rows`` of A against columns ``col0..col0+cols`` of B."""

    index: int
    row0: int
    rows: int
    col0: int
    cols: int
    k: int  # the customer's inner dimension (before padding)
    shape: Shape  # padded mmpow-1 shape of the unit

    @property
    def macs(self) -> int:
        """Useful multiply-accumulates: the real (unpadded) product of this unit."""
        return self.rows * self.cols * self.k

    @property
    def result_bytes(self) -> int:
        """Size of the unit's padded C as sent by a worker (int32)."""
        return self.shape.m * self.shape.n * RESULT_DTYPE.itemsize


@dataclass(frozen=True)
class ProductPlan:
    """How a product ``A (m×k) · B (k×n)`` is cut into units."""

    m: int
    n: int
    k: int
    r: int
    units: tuple[UnitPlan, ...]

    @property
    def k_padded(self) -> int:
        return padded_k(self.k, self.r)

    @property
    def macs(self) -> int:
        """Useful MACs of the whole product (m·n·k)."""
        return self.m * self.n * self.k

    @property
    def padded_macs(self) -> int:
        """MACs of one pass over all units as mined (padded shapes)."""
        return sum(u.shape.macs_per_header for u in self.units)


def plan_product(
    m: int,
    n: int,
    k: int,
    *,
    r: int = 64,
    unit_m: int = DEFAULT_UNIT_M,
    unit_n: int = DEFAULT_UNIT_N,
    b_max_bytes: int = 0,
) -> ProductPlan:
    """Split ``A (m×k) · B (k×n)`` into units of at most ``unit_m × unit_n`` outputs.

    ``r`` is the preferred slab width (see :func:`choose_r`); ``unit_m`` and ``unit_n``
    must be multiples of 16. When B's padded blob (``n`` and ``k`` padded) is at most
    ``b_max_bytes``, units are cut along m only and each holds the whole B: its Bᵀ blob
    is the same for every unit (and every product on the same B), so a worker keeps it.
    Raises ``ProtocolError`` naming the bad dimension.
    """
    for name, value in (("m", m), ("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ProtocolError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("unit_m", unit_m), ("unit_n", unit_n)):
        if value <= 0 or value % TILE:
            raise ProtocolError(f"{name} must be a positive multiple of {TILE}, got {value}")
    slab = choose_r(k, r)
    kp = padded_k(k, slab)
    if kp > MAX_K:
        raise ProtocolError(f"k = {k} pads to {kp}, more than the largest k {MAX_K}")
    if round_up(n, TILE) * kp <= b_max_bytes:
        unit_n = round_up(n, TILE)
    units: list[UnitPlan] = []
    for row0 in range(0, m, unit_m):
        rows = min(unit_m, m - row0)
        for col0 in range(0, n, unit_n):
            cols = min(unit_n, n - col0)
            shape = Shape(round_up(rows, TILE), round_up(cols, TILE), kp, slab)
            units.append(UnitPlan(len(units), row0, rows, col0, cols, k, shape))
    return ProductPlan(m, n, k, slab, tuple(units))


def sized_rows(
    macs_per_second: float | None, seconds: float, unit: UnitPlan, lo: int, hi: int, start: int
) -> int:
    """Rows of A for a unit like ``unit`` that take about ``seconds`` at ``macs_per_second``.

    A unit's work is one padded product (rows × n × k MACs). ``None`` or a rate ≤ 0 (not
    measured yet) gives ``start``; the answer is a multiple of 16 in ``[lo, hi]``.
    """
    if macs_per_second is None or not macs_per_second > 0:
        rows = start
    else:
        per_row = unit.shape.n * unit.shape.k
        rows = int(min(float(hi), macs_per_second * seconds / per_row))
    rows = max(lo, min(hi, rows)) // TILE * TILE
    return max(TILE, rows)


def split_plan(unit: UnitPlan, rows: int) -> tuple[UnitPlan, UnitPlan] | None:
    """``unit`` cut after its first ``rows`` rows (a multiple of 16): the head and the rest
    (the rest keeps ``unit``'s index; give it a new one). None if it is not longer."""
    if rows % TILE or rows <= 0 or rows >= unit.rows:
        return None
    s = unit.shape
    head = UnitPlan(
        unit.index, unit.row0, rows, unit.col0, unit.cols, unit.k, Shape(rows, s.n, s.k, s.r)
    )
    left = unit.rows - rows
    rest = UnitPlan(
        unit.index,
        unit.row0 + rows,
        left,
        unit.col0,
        unit.cols,
        unit.k,
        Shape(round_up(left, TILE), s.n, s.k, s.r),
    )
    return head, rest


def check_operands(a: np.ndarray, b: np.ndarray) -> None:
    """Raise ``ProtocolError`` unless A (m×k) and B (k×n) are int8 in [-64, 64] and fit."""
    if a.ndim != 2 or b.ndim != 2:
        raise ProtocolError(f"A and B must be 2-D, got {a.ndim}-D and {b.ndim}-D")
    if a.shape[1] != b.shape[0]:
        raise ProtocolError(
            f"inner dimensions differ: A is {a.shape[0]}x{a.shape[1]}, "
            f"B is {b.shape[0]}x{b.shape[1]}"
        )
    if 0 in a.shape or 0 in b.shape:
        raise ProtocolError("A and B must not be empty")
    check_entries(a, "A")
    check_entries(b, "B")


def unit_operands(a: np.ndarray, bt: np.ndarray, unit: UnitPlan) -> tuple[np.ndarray, np.ndarray]:
    """The unit's zero-padded A rows (m×k) and Bᵀ rows (n×k), int8, C-contiguous.

    ``a`` is the customer's A (m×k), ``bt`` is Bᵀ (n×k).
    """
    s = unit.shape
    k = a.shape[1]
    ua = np.zeros((s.m, s.k), dtype=np.int8)
    ua[: unit.rows, :k] = a[unit.row0 : unit.row0 + unit.rows]
    ub = np.zeros((s.n, s.k), dtype=np.int8)
    ub[: unit.cols, :k] = bt[unit.col0 : unit.col0 + unit.cols]
    return ua, ub


def unit_id(shape: Shape, a_root: bytes, b_root: bytes) -> bytes:
    """The id of a unit: the mmpow-1 ``work_root`` of its shape and operand roots."""
    return work_root(shape, a_root, b_root)


def decode_result(raw: bytes, unit: UnitPlan) -> np.ndarray:
    """A worker's padded C of ``unit`` (int32 LE bytes) as an m×n int32 array."""
    if len(raw) != unit.result_bytes:
        raise ProtocolError(
            f"result of unit {unit.index} must be {unit.result_bytes} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=RESULT_DTYPE).reshape(unit.shape.m, unit.shape.n)


def cut_result(c_padded: np.ndarray, unit: UnitPlan) -> np.ndarray:
    """The real rows and columns of a unit's padded C."""
    return c_padded[: unit.rows, : unit.cols]


def assemble(out: np.ndarray, unit: UnitPlan, c_padded: np.ndarray) -> None:
    """Write ``unit``'s padded C, cut back, into its place in the product ``out`` (m×n)."""
    out[unit.row0 : unit.row0 + unit.rows, unit.col0 : unit.col0 + unit.cols] = cut_result(
        c_padded, unit
    )


def chunks(data: bytes | memoryview, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, chunk, final)`` pieces of ``data`` of at most ``size`` bytes."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    view = memoryview(data).cast("B")
    total = len(view)
    if total == 0:
        yield 0, b"", True
        return
    for offset in range(0, total, size):
        end = min(total, offset + size)
        yield offset, bytes(view[offset:end]), end == total


class ChunkAssembler:
    """Bytes of a known size from in-order chunks; anything else is a ``ProtocolError``.

    ``feed(offset, data, final)`` accepts the next chunk; ``final`` must be set on the
    chunk that reaches ``total`` and only there. ``done`` tells when ``value()`` is ready.
    """

    def __init__(self, total: int, what: str = "data") -> None:
        if total < 0:
            raise ValueError("total must be ≥ 0")
        self.total = total
        self.what = what
        self._buffer = bytearray()
        self.done = False

    @property
    def received(self) -> int:
        return len(self._buffer)

    def next_request(self, max_length: int) -> tuple[int, int] | None:
        """``(offset, length)`` of the next chunk to ask for, or None when complete."""
        if self.done:
            return None
        return self.received, min(max_length, self.total - self.received)

    def feed(self, offset: int, data: bytes, final: bool) -> None:
        if self.done:
            raise ProtocolError(f"{self.what}: chunk after the final one")
        if offset != self.received:
            raise ProtocolError(
                f"{self.what}: chunk at offset {offset}, expected offset {self.received}"
            )
        end = offset + len(data)
        if end > self.total:
            raise ProtocolError(
                f"{self.what}: chunk ends at {end}, past the total of {self.total} bytes"
            )
        if not data and not (final and end == self.total):
            raise ProtocolError(f"{self.what}: empty chunk")
        if final != (end == self.total):
            state = "final" if final else "not final"
            raise ProtocolError(
                f"{self.what}: chunk ending at {end} of {self.total} is marked {state}"
            )
        self._buffer += data
        self.done = final

    def value(self) -> bytes:
        if not self.done:
            raise ProtocolError(f"{self.what}: incomplete ({self.received}/{self.total} bytes)")
        return bytes(self._buffer)
