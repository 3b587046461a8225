"""What a worker keeps of a model unit for its audit (SPEC §12.12.6): the padded
``A_1..A_{L−1}`` and their row trees, until the pool's challenges are answered.

The activations stay in memory up to ``memory_bytes`` in all; a layer that would go over is
written to a private directory under ``spill_dir`` (one ``.npy`` per layer, read back
memory-mapped when a challenge names it) — or, without a ``spill_dir``, refused with
:class:`OpeningsTooLarge`; :meth:`OpeningStore.remove_leftovers` clears what a worker that
crashed left there. The row trees (two hashes per row) always stay in memory. Answers
are :class:`protocol.audit.ChallengeAnswer`, so the pool checks them with
``protocol.audit.check_audit``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protocol.audit import Challenge, ChallengeAnswer, RowOpening
from protocol.merkle import RowTree

DEFAULT_OPENINGS_MEMORY = 256 << 20
"""Bytes of padded activations a unit keeps in memory for its audit by default."""


class OpeningsTooLarge(Exception):
    """A unit's activations exceed the memory bound and there is nowhere to spill them."""


class OpeningStore:
    """The padded activations ``A_1..A_{L−1}`` of one unit of ``depth`` layers and
    ``rows`` rows, with their row trees; answers audit challenges."""

    def __init__(
        self,
        depth: int,
        rows: int,
        memory_bytes: int = DEFAULT_OPENINGS_MEMORY,
        spill_dir: Path | None = None,
    ) -> None:
        if depth < 1 or rows < 1 or memory_bytes < 0:
            raise ValueError("an opening store needs depth ≥ 1, rows ≥ 1, memory_bytes ≥ 0")
        self.depth = depth
        self.rows = rows
        self.memory_bytes = memory_bytes
        self._spill_parent = spill_dir
        self._spill: Path | None = None
        self._in_memory: dict[int, np.ndarray] = {}
        self._on_disk: dict[int, Path] = {}
        self._trees: dict[int, RowTree] = {}

    @property
    def bytes_in_memory(self) -> int:
        return sum(int(a.nbytes) for a in self._in_memory.values())

    @property
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self._on_disk.values())

    @property
    def layers(self) -> tuple[int, ...]:
        """The activation indices kept so far."""
        return tuple(sorted(self._trees))

    def root(self, index: int) -> bytes:
        return self._trees[index].root

    def keep(self, index: int, padded: np.ndarray, tree: RowTree) -> None:
        """Keep ``A_index`` (padded, int8) and its tree; spills it when memory is full."""
        if not 1 <= index < self.depth:
            raise ValueError(f"only A_1..A_{self.depth - 1} are kept, not A_{index}")
        if index in self._trees:
            raise ValueError(f"A_{index} is kept already")
        if padded.ndim != 2 or padded.shape[0] < self.rows or padded.dtype != np.int8:
            raise ValueError(f"A_{index} must be int8 with at least {self.rows} rows")
        if self.bytes_in_memory + padded.nbytes <= self.memory_bytes:
            self._in_memory[index] = padded
        else:
            self._on_disk[index] = self._write(index, padded)
        self._trees[index] = tree

    def _write(self, index: int, padded: np.ndarray) -> Path:
        if self._spill_parent is None:
            raise OpeningsTooLarge(
                f"A_{index} ({padded.nbytes} bytes) does not fit in the {self.memory_bytes} "
                "bytes kept for the audit, and no spill directory is set"
            )
        if self._spill is None:
            self._spill_parent.mkdir(parents=True, exist_ok=True)
            self._spill = Path(tempfile.mkdtemp(prefix="unit-", dir=self._spill_parent))
        path = self._spill / f"a{index}.npy"
        np.save(path, padded, allow_pickle=False)
        return path

    def matrix(self, index: int) -> np.ndarray:
        """The kept padded ``A_index`` (memory-mapped if it was spilled)."""
        if index in self._in_memory:
            return self._in_memory[index]
        loaded: np.ndarray = np.load(self._on_disk[index], mmap_mode="r", allow_pickle=False)
        return loaded

    def opening(self, index: int, row: int) -> RowOpening:
        """Row ``row`` of the padded ``A_index`` and its proof against ``a_root_index``."""
        if index not in self._trees:
            raise ValueError(f"A_{index} is not kept")
        if not 0 <= row < self.rows:
            raise ValueError(f"row {row} is outside the unit's {self.rows} rows")
        data = bytes(np.ascontiguousarray(self.matrix(index)[row]).tobytes())
        return RowOpening(data, tuple(self._trees[index].proof(row)))

    def answer(self, challenge: Challenge) -> ChallengeAnswer:
        """The openings of one challenge ``(l, i)``: row ``i`` of ``A_l`` (none for
        ``l = 0``) and of ``A_{l+1}`` (none for the last layer)."""
        if not 0 <= challenge.layer < self.depth:
            raise ValueError(f"challenge layer {challenge.layer} outside 0..{self.depth - 1}")
        a_row = self.opening(challenge.layer, challenge.row) if challenge.layer > 0 else None
        last = challenge.layer == self.depth - 1
        next_row = None if last else self.opening(challenge.layer + 1, challenge.row)
        return ChallengeAnswer(a_row, next_row)

    def answer_all(self, challenges: Sequence[Challenge]) -> list[ChallengeAnswer]:
        """One answer per challenge, in order."""
        return [self.answer(c) for c in challenges]

    def close(self) -> None:
        """Forget everything (the audit is over); removes the spilled files."""
        self._in_memory.clear()
        self._on_disk.clear()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    @staticmethod
    def remove_leftovers(spill_dir: Path) -> int:
        """Delete what stores of an earlier run (a worker that crashed) left in
        ``spill_dir``; the number of units' directories removed."""
        removed = 0
        for leftover in spill_dir.glob("unit-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
        return removed

    def __enter__(self) -> OpeningStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
