"""Receiving a customer's operands A and B: streamed to disk, refused as early as possible.

An upload is never held whole in memory. Its body is parsed as it arrives (sans-IO, on the
event loop: :class:`NpyPairBody`, :class:`RawPairBody`, :class:`MultipartBody`): each
``.npy`` is read by ``npy.NpyReader``, its header first (at most ``MAX_NPY_HEADER`` bytes),
its dtype, order and shape judged before a byte of the array is read; the data bytes are
checked (entries in [-64, 64]) and appended to a :class:`Spool`, a nameless temporary file
in the pool's data dir, in worker threads. Once the body is complete, A and B are memory
maps of that file.

:class:`UploadBudget` bounds the bytes of all uploads in flight at once (received or being
split into units); an upload that does not fit is refused with 503 and ``Retry-After``
(:class:`WorkBusyError`) before its body is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import trio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from pool.useful import UsefulConfig
from pool.useful.npy import NpyReader, Operand, check_pair, check_shape, one_line
from pool.useful.queue import WorkError, WorkInputError
from protocol.workload import ENTRY_MAX, ENTRY_MIN

FLUSH_BYTES = 1 << 20
"""Data bytes a request collects before a worker thread checks and writes them."""
BODY_DONE = "matmine.body_done"
"""Scope key: the request body was read to its end (nothing left to drain)."""
RETRY_AFTER_SECONDS = 5
MAX_EXTRA_PARTS = 4
"""Multipart parts other than ``a`` and ``b`` that are skipped before the body is refused."""


class WorkBusyError(WorkError):
    """The pool's upload budget is in use: try again after ``retry_after`` seconds (503)."""

    http_status = 503

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UploadBudget:
    """Bytes of uploads in flight across all requests, at most ``capacity``.

    Used from the event loop only (no lock needed). A reservation larger than the whole
    budget is cut to it, so an upload alone always fits.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block; raises :class:`WorkBusyError`."""
        nbytes = min(nbytes, self.capacity)
        if self.used + nbytes > self.capacity:
            raise WorkBusyError(
                f"the pool is receiving {self.used} bytes of uploads; {nbytes} more would pass "
                f"its limit of {self.capacity} (useful.max_inflight_upload_bytes): retry later"
            )
        self.used += nbytes
        try:
            yield
        finally:
            self.used -= nbytes


# --- sans-IO body parsers --------------------------------------------------------------


Segments = list[tuple[str, memoryview]]
"""Array data bytes of a body, in order, each named by its operand ("A" or "B")."""


class NpyPairBody:
    """``application/x-npy``: ``A.npy`` then ``B.npy``, nothing after.

    With a declared ``Content-Length``, a body that cannot hold A and B exactly is refused
    as soon as the headers tell (before the array bytes are read).
    """

    def __init__(self, config: UsefulConfig, declared: int | None) -> None:
        self.config = config
        self.declared = declared
        self.readers = [NpyReader("A", config), NpyReader("B", config)]
        self.trailing = 0
        self._seen = 0  # bytes fed so far

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        a, b = self.readers[0].operand, self.readers[1].operand
        return None if a is None or b is None else (a.shape, b.shape)

    def feed(self, chunk: bytes) -> Segments:
        view = memoryview(chunk)
        out: Segments = []
        for reader in self.readers:
            if reader.done or not view:
                continue
            had_header = reader.operand is not None
            used, data = reader.feed(view)
            view = view[used:]
            if data:
                out.append((reader.name, data))
            if not had_header and reader.operand is not None:
                self._headers_known(reader)
        self.trailing += len(view)
        self._seen += len(chunk)
        return out

    def _headers_known(self, reader: NpyReader) -> None:
        a, b = self.readers
        if reader is b:
            assert b.operand is not None  # its header was just read
            check_pair(a.finish().shape, b.operand.shape, self.config)
        if self.declared is None:
            return
        need = sum(r.header_bytes + r.operand.nbytes for r in self.readers if r.operand)
        if reader is a and need > self.declared:
            raise WorkInputError(
                f"A.npy is cut short: the body is {self.declared} bytes, A alone needs {need}"
            )
        if reader is a and need == self.declared:
            raise WorkInputError("the body holds only A: send A.npy followed by B.npy")
        if reader is b and need > self.declared:
            raise WorkInputError(
                f"B.npy is cut short: the body is {self.declared} bytes, "
                f"A.npy and B.npy need {need}"
            )
        if reader is b and need < self.declared:
            raise WorkInputError(f"{self.declared - need} bytes after B.npy")

    def finish(self) -> tuple[Operand, Operand]:
        a, b = self.readers
        a_op = a.finish()
        if b.operand is None and not b._head:
            raise WorkInputError("the body holds only A: send A.npy followed by B.npy")
        b_op = b.finish()
        if self.trailing:
            raise WorkInputError(f"{self.trailing} bytes after B.npy")
        return a_op, Operand("B", b_op.shape, b_op.fortran, a_op.nbytes)


class RawPairBody:
    """``application/octet-stream``: A's then B's bytes, row-major, shape from the query."""

    def __init__(self, m: int, k: int, n: int, config: UsefulConfig, declared: int | None) -> None:
        self.a = check_shape("A", (m, k), config)
        self.b = check_shape("B", (k, n), config)
        check_pair(self.a, self.b, config)
        self.want = m * k + k * n
        self._what = f"A ({m}x{k}) and B ({k}x{n}) int8 need {self.want}"
        if declared is not None and declared != self.want:
            raise WorkInputError(f"the body is {declared} bytes; {self._what}")
        self.received = 0

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.a, self.b

    def feed(self, chunk: bytes) -> Segments:
        start = self.received
        self.received += len(chunk)
        if self.received > self.want:
            raise WorkInputError(f"the body is over {self.want} bytes; {self._what}")
        view = memoryview(chunk)
        split = max(0, min(len(view), self.a[0] * self.a[1] - start))
        return [(name, part) for name, part in (("A", view[:split]), ("B", view[split:])) if part]

    def finish(self) -> tuple[Operand, Operand]:
        if self.received != self.want:
            raise WorkInputError(f"the body is {self.received} bytes; {self._what}")
        return Operand("A", self.a, False), Operand("B", self.b, False, self.a[0] * self.a[1])


class MultipartBody:
    """``multipart/form-data`` with file fields ``a`` and ``b`` (each a ``.npy``), streamed.

    Other fields are skipped (at most :data:`MAX_EXTRA_PARTS`); a second ``a`` or ``b``
    is refused.
    """

    def __init__(self, content_type: str, config: UsefulConfig) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise WorkInputError("malformed multipart body: the Content-Type has no boundary")
        self.config = config
        self.readers: dict[str, NpyReader] = {}
        self.order: list[str] = []  # operand names in the order their data arrives
        self._events: list[tuple[str, bytes]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._current: NpyReader | None = None
        self._extra = 0
        self.ended = False
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": lambda: self._events.append(("begin", b"")),
                    "on_header_field": lambda d, s, e: self._events.append(("field", d[s:e])),
                    "on_header_value": lambda d, s, e: self._events.append(("value", d[s:e])),
                    "on_header_end": lambda: self._events.append(("header", b"")),
                    "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
                    "on_part_end": lambda: self._events.append(("end", b"")),
                    "on_end": lambda: self._events.append(("close", b"")),
                },
            )
        except FormParserError as exc:
            raise WorkInputError(f"malformed multipart body: {one_line(str(exc))}") from None
        self._skip = False
        self._name: str | None = None

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        a, b = self.readers.get("A"), self.readers.get("B")
        if a is None or b is None or a.operand is None or b.operand is None:
            return None
        return a.operand.shape, b.operand.shape

    def feed(self, chunk: bytes) -> Segments:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise WorkInputError(f"malformed multipart body: {one_line(str(exc))}") from None
        events, self._events = self._events, []
        out: Segments = []
        for kind, data in events:
            if kind == "begin":
                self._name, self._current, self._skip = None, None, False
            elif kind == "field":
                self._field += data
            elif kind == "value":
                self._value += data
            elif kind == "header":
                self._header(bytes(self._field), bytes(self._value))
                self._field.clear()
                self._value.clear()
            elif kind == "data":
                out += self._data(memoryview(data))
            elif kind == "end":
                if self._current is not None:
                    self._current.finish()
                self._current = None
            elif kind == "close":
                self.ended = True
        return out

    def _header(self, field: bytes, value: bytes) -> None:
        if field.lower() != b"content-disposition":
            return
        _, params = parse_options_header(value)
        name = params.get(b"name", b"").decode("latin-1")
        if name in ("a", "b"):
            operand = name.upper()
            if operand in self.readers:
                raise WorkInputError(f"malformed multipart body: field {name!r} appears twice")
            self._current = self.readers[operand] = NpyReader(operand, self.config)
            self.order.append(operand)
        else:
            self._extra += 1
            if self._extra > MAX_EXTRA_PARTS:
                raise WorkInputError(
                    f"malformed multipart body: more than {MAX_EXTRA_PARTS} "
                    "fields besides 'a' and 'b'"
                )
            self._skip = True

    def _data(self, view: memoryview) -> Segments:
        reader = self._current
        if reader is None:
            if not self._skip:
                raise WorkInputError(
                    "malformed multipart body: a part without a Content-Disposition name"
                )
            return []
        had_header = reader.operand is not None
        used, data = reader.feed(view)
        if used < len(view):
            raise WorkInputError(
                f"multipart field {reader.name.lower()!r}: {len(view) - used} bytes after the array"
            )
        if not had_header and reader.operand is not None:
            shapes = self.shapes()
            if shapes is not None:
                check_pair(*shapes, self.config)
        return [(reader.name, data)] if data else []

    def finish(self) -> tuple[Operand, Operand]:
        for name in ("a", "b"):
            if name.upper() not in self.readers:
                raise WorkInputError(f"multipart field {name!r} (a .npy file) is missing")
        if not self.ended:
            raise WorkInputError("malformed multipart body: it ends before the closing boundary")
        first, second = (self.readers[n].finish() for n in self.order)
        ops = {
            first.name: first,
            second.name: Operand(second.name, second.shape, second.fortran, first.nbytes),
        }
        return ops["A"], ops["B"]


# --- the spool ---------------------------------------------------------------------------


class Spool:
    """The operands' data bytes in a nameless temporary file under ``directory``.

    :meth:`add` queues bytes (the request's own chunks, no copy); :meth:`flush` checks
    their entries and appends them in a worker thread. The file vanishes when closed, or
    with the process.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self.size = 0
        self.pending: Segments = []
        self.pending_bytes = 0

    def add(self, segments: Segments) -> None:
        for name, data in segments:
            self.pending.append((name, data))
            self.pending_bytes += len(data)

    async def flush(self) -> None:
        parts, self.pending, self.pending_bytes = self.pending, [], 0
        if parts:
            await trio.to_thread.run_sync(self._write, parts)

    def _write(self, parts: Segments) -> None:
        for name, data in parts:
            values = np.frombuffer(data, dtype=np.int8)
            if int(values.min()) < ENTRY_MIN or int(values.max()) > ENTRY_MAX:
                raise WorkInputError(f"{name} has entries outside [{ENTRY_MIN}, {ENTRY_MAX}]")
            self.file.write(data)
            self.size += len(data)

    def array(self, operand: Operand) -> np.ndarray:
        """``operand`` as a read-only memory map of the spool (call after the last flush)."""
        self.file.flush()
        return np.memmap(
            self.file,
            dtype=np.int8,
            mode="r",
            offset=operand.offset,
            shape=operand.shape,
            order="F" if operand.fortran else "C",
        )

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
