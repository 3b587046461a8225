"""What ``matmine-pool work submit`` checks before it uploads anything, and its progress line.

:func:`check_operand_files` opens A and B as memory-mapped ``.npy`` files and judges them
as the pool would (int8, 2-D, k agrees, entries in [-64, 64], the pool's published
limits), raising :class:`OperandError` with one line that names the file and the problem.
:class:`Progress` shows units done/total, elapsed time, throughput (MAC/s of the product)
and ETA: one line redrawn in place on a terminal, a plain line every few seconds otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from protocol.workload import ENTRY_MAX, ENTRY_MIN

ROWS_PER_SCAN = 1 << 14
NO_WORKER = (
    "no worker able to do useful work is connected (miners must announce "
    "useful-1); the item waits in the queue until one does"
)


class OperandError(ValueError):
    """An operand file the pool would refuse; the message names the file."""


def _open(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise OperandError(f"{path}: {name} is not a readable file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise OperandError(f"{path}: {name} is not a readable .npy file ({reason})") from None
    if not isinstance(array, np.ndarray):
        raise OperandError(f"{path}: {name} is not a single .npy array")
    if array.dtype != np.int8:
        raise OperandError(f"{path}: {name} must be int8, got {array.dtype}")
    want = "m×k" if name == "A" else "k×n"
    if array.ndim != 2:
        raise OperandError(f"{path}: {name} must be 2-D ({want}), got shape {array.shape}")
    if 0 in array.shape:
        raise OperandError(f"{path}: {name} must not be empty, got shape {array.shape}")
    return array


def _check_range(path: Path, name: str, array: np.ndarray) -> None:
    for row0 in range(0, array.shape[0], ROWS_PER_SCAN):
        block = np.asarray(array[row0 : row0 + ROWS_PER_SCAN])
        low, high = int(block.min()), int(block.max())
        if low < ENTRY_MIN or high > ENTRY_MAX:
            bad = np.argwhere((block < ENTRY_MIN) | (block > ENTRY_MAX))[0]
            i, j = int(bad[0]) + row0, int(bad[1])
            raise OperandError(
                f"{path}: {name} has entries outside [{ENTRY_MIN}, {ENTRY_MAX}] "
                f"(first: {int(array[i, j])} at row {i}, column {j})"
            )


def check_operand_file(path: Path, name: str) -> tuple[int, int]:
    """The shape of one operand file (``name`` "A" or "B"); :class:`OperandError` if it is
    not a 2-D int8 ``.npy`` with entries in [-64, 64]."""
    array = _open(path, name)
    _check_range(path, name, array)
    rows, cols = array.shape
    return int(rows), int(cols)


def check_operand_files(
    a_path: Path, b_path: Path, limits: Mapping[str, Any] | None = None
) -> tuple[int, int, int]:
    """``(m, k, n)`` of the product A·B in these files; :class:`OperandError` if the pool
    would refuse them (``limits``: the pool's published limits, when it publishes them)."""
    a, b = _open(a_path, "A"), _open(b_path, "B")
    (m, k), (kb, n) = a.shape, b.shape
    if k != kb:
        raise OperandError(
            f"{b_path}: B is {kb}×{n} but A ({a_path}) is {m}×{k}: B needs k = {k} rows"
        )
    for path, name, array in ((a_path, "A", a), (b_path, "B", b)):
        _check_range(path, name, array)
    if limits:
        max_dim = limits.get("max_dim")
        if max_dim is not None:
            for path, name, dim, value in ((a_path, "A", "m", m), (b_path, "B", "n", n)):
                if value > max_dim:
                    raise OperandError(
                        f"{path}: {name}'s {dim} = {value} is over the pool's limit of {max_dim}"
                    )
        max_k = limits.get("max_k")
        if max_k is not None and k > max_k:
            raise OperandError(f"{a_path}: k = {k} is over the pool's limit of {max_k}")
        max_bytes = limits.get("max_upload_bytes")
        if max_bytes is not None and a.size + b.size > max_bytes:
            raise OperandError(
                f"{a_path}, {b_path}: A and B are {a.size + b.size} bytes, "
                f"over the pool's limit of {max_bytes}"
            )
    return m, k, n


def si(value: float, unit: str) -> str:
    """``1.23 GMAC/s`` style."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < 1000 or prefix == "P":
            return f"{value:.3g} {prefix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(status: Mapping[str, Any], elapsed: float) -> str:
    """One line: state, units done/total, elapsed, MAC/s of the product, ETA."""
    states = status.get("unit_states", {})
    total = int(status.get("units", 0)) or 1
    done = int(states.get("done", 0))
    shape = status.get("shape", {})
    macs = int(shape.get("m", 0)) * int(shape.get("k", 0)) * int(shape.get("n", 0))
    done_macs = macs * done / total
    rate = done_macs / elapsed if elapsed > 0 else 0.0
    if status.get("state") == "done":
        eta = "done"
    elif rate > 0:
        eta = "ETA " + duration((macs - done_macs) / rate)
    else:
        eta = "ETA ?"
    line = (
        f"{status['id']}: {status['state']}, {done}/{total} units done, "
        f"{states.get('running', 0)} running, {duration(elapsed)} elapsed, "
        f"{si(rate, 'MAC/s')}, {eta}"
    )
    if status.get("capable_sessions") == 0 and status.get("state") not in ("done", "failed"):
        line += " — " + NO_WORKER
    return line


class Progress:
    """Progress of one item on ``stream`` (see the module doc)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last: float | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._width = 0

    def show(self, status: Mapping[str, Any], *, final: bool = False) -> None:
        now = self.clock()
        line = progress_line(status, now - self.started)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._width = 0 if final else len(line)
            self.stream.flush()
            return
        key = (
            status.get("state"),
            status.get("unit_states", {}).get("done"),
            status.get("capable_sessions") == 0,
        )
        due = self._last is None or now - self._last >= self.interval
        if final or due or key != self._last_key:
            print(line, file=self.stream, flush=True)
            self._last, self._last_key = now, key

    def end(self) -> None:
        """Leave the terminal line (before an error is printed under it)."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
