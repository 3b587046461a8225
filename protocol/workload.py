"""Workload shapes, synthetic workloads and the work commitment (mmpow-1 §workload)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ProtocolError
from .hashing import H, X
from .merkle import rows_root

TILE = 16
ALLOWED_R = (32, 64, 128, 256, 512)
MAX_K = 65536
ENTRY_MIN, ENTRY_MAX = -64, 64


@dataclass(frozen=True)
class Shape:
    """Dimensions of a job: A is m×k, Bᵀ is n×k, slabs of width r."""

    m: int
    n: int
    k: int
    r: int

    def __post_init__(self) -> None:
        for name in ("m", "n", "k", "r"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ProtocolError(f"work.{name} must be a positive integer, got {value!r}")
        if self.m % TILE or self.n % TILE:
            raise ProtocolError(f"work.m and work.n must be multiples of {TILE}")
        if self.r not in ALLOWED_R:
            raise ProtocolError(f"work.r must be one of {ALLOWED_R}, got {self.r}")
        if self.k % self.r or self.k < 4 * self.r:
            raise ProtocolError("work.k must be a multiple of r and at least 4r")
        if self.k > MAX_K:
            raise ProtocolError(f"work.k must be at most {MAX_K}")

    @property
    def tiles_m(self) -> int:
        return self.m // TILE

    @property
    def tiles_n(self) -> int:
        return self.n // TILE

    @property
    def tiles(self) -> int:
        """Tickets per header (one per 16×16 output tile)."""
        return self.tiles_m * self.tiles_n

    @property
    def slabs(self) -> int:
        return self.k // self.r

    @property
    def macs_per_ticket(self) -> int:
        """W = 256·k multiply-accumulates behind one ticket."""
        return TILE * TILE * self.k

    @property
    def macs_per_header(self) -> int:
        return self.m * self.n * self.k


def work_root(shape: Shape, a_root: bytes, b_root: bytes) -> bytes:
    """``H("mmpow1/work" ‖ u32 m ‖ u32 n ‖ u32 k ‖ u16 r ‖ u16 16 ‖ a_root ‖ b_root)``."""
    dims = struct.pack("<IIIHH", shape.m, shape.n, shape.k, shape.r, TILE)
    return H(b"mmpow1/work", dims, a_root, b_root)


def _bytes_to_entries(raw: bytes, rows: int, k: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).reshape(rows, k)
    return ((b % 129).astype(np.int16) - 64).astype(np.int8)


def synthetic_rows(seed: bytes, matrix: str, start: int, count: int, k: int) -> np.ndarray:
    """Rows ``start..start+count`` of synthetic A (``matrix="A"``) or Bᵀ (``"B"``)."""
    if matrix not in ("A", "B"):
        raise ValueError("matrix must be 'A' or 'B'")
    label = b"mmpow1/synA" if matrix == "A" else b"mmpow1/synB"
    return _bytes_to_entries(X(seed, label, count * k, start * k), count, k)


def check_entries(matrix: np.ndarray, name: str) -> None:
    """Raise ``ProtocolError`` unless ``matrix`` is int8 with every entry in [-64, 64]."""
    if matrix.dtype != np.int8:
        raise ProtocolError(f"{name} must be int8, got {matrix.dtype}")
    if matrix.size and (int(matrix.min()) < ENTRY_MIN or int(matrix.max()) > ENTRY_MAX):
        raise ProtocolError(f"{name} has entries outside [{ENTRY_MIN}, {ENTRY_MAX}]")


class Workload:
    """A (m×k) and Bᵀ (n×k) as int8, with their row-Merkle commitments."""

    def __init__(self, shape: Shape, a: np.ndarray, bt: np.ndarray) -> None:
        if a.shape != (shape.m, shape.k) or bt.shape != (shape.n, shape.k):
            raise ProtocolError(
                f"operands {a.shape} and {bt.shape} do not match shape "
                f"{shape.m}x{shape.k} / {shape.n}x{shape.k}"
            )
        check_entries(a, "A")
        check_entries(bt, "B")
        self.shape = shape
        self.a = np.ascontiguousarray(a)
        self.bt = np.ascontiguousarray(bt)

    @classmethod
    def synthetic(cls, seed: bytes, shape: Shape) -> Workload:
        """The synthetic workload of a 32-byte workload seed."""
        if len(seed) != 32:
            raise ProtocolError("workload seed must be 32 bytes")
        return cls(
            shape,
            synthetic_rows(seed, "A", 0, shape.m, shape.k),
            synthetic_rows(seed, "B", 0, shape.n, shape.k),
        )

    @cached_property
    def a_root(self) -> bytes:
        return rows_root(self.a)

    @cached_property
    def b_root(self) -> bytes:
        return rows_root(self.bt)

    @cached_property
    def work_root(self) -> bytes:
        return work_root(self.shape, self.a_root, self.b_root)
